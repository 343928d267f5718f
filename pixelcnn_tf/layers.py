"""Small building blocks: the masked 2-D convolution and its one-position evaluation."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from pixelcnn_tf.masks import KernelSize, _kernel_hw, get_mask


def per_image(values: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Reshapes per-image vectors ``[B, D]`` to broadcast against ``like`` ``[B, ..., D]``
    (``[B, H, W, D]`` in a full pass, ``[B, D]`` at one position)."""
    extra = like.shape.rank - 2
    return tf.reshape(values, [-1] + [1] * extra + [values.shape[-1]])


class MaskedConv2D(tf.Module):
    """A stride-1, SAME-padded 2-D convolution whose kernel is multiplied by a causal mask.

    The mask (see :func:`pixelcnn_tf.masks.get_mask`) is applied to the kernel inside
    ``__call__``; the variable itself stays unmasked, so no optimizer step or
    initialisation can make a masked weight leak information.

    Variables are created on the first call, from the input's channel count:
      kernel ``[kh, kw, C_in, features_out]``: truncated normal, stddev
        ``sqrt(scale / fan_in)`` where fan_in is the number of *unmasked* taps feeding
        one output (He initialisation for the connections that exist).
      bias ``[features_out]``: zeros.
    """

    def __init__(self, features_out: int, kernel_size: KernelSize, mode: str = "B",
                 n_colors: int = 3, use_bias: bool = True, init_scale: float = 2.0,
                 name: Optional[str] = None):
        super().__init__(name=name)
        self.features_out = int(features_out)
        self.kernel_size = _kernel_hw(kernel_size)
        self.mode = mode
        self.n_colors = n_colors
        self.use_bias = use_bias
        self.init_scale = float(init_scale)
        # Checked now so a bad width fails at construction, not at the first call.
        get_mask(self.kernel_size, n_colors, self.features_out, mode, n_colors)
        self.kernel: Optional[tf.Variable] = None
        self.bias: Optional[tf.Variable] = None
        self._mask: Optional[tf.Tensor] = None

    @tf.Module.with_name_scope
    def _build(self, features_in: int) -> None:
        mask = get_mask(self.kernel_size, features_in, self.features_out, self.mode,
                        self.n_colors)
        fan_in = max(float(mask.sum(axis=(0, 1, 2)).mean()), 1.0)
        stddev = float(np.sqrt(self.init_scale / fan_in))
        shape = (*self.kernel_size, features_in, self.features_out)
        self.kernel = tf.Variable(tf.random.truncated_normal(shape, stddev=stddev),
                                  name="kernel")
        if self.use_bias:
            self.bias = tf.Variable(tf.zeros([self.features_out]), name="bias")
        self._mask = tf.constant(mask, name="mask")

    @property
    def mask(self) -> tf.Tensor:
        """The mask ``[kh, kw, C_in, features_out]`` (after the first call)."""
        if self._mask is None:
            raise ValueError(f"{self.name} has no mask yet: call it on an input first")
        return self._mask

    def masked_kernel(self, dtype: tf.DType = tf.float32) -> tf.Tensor:
        """The kernel times its mask, cast to ``dtype``: ``[kh, kw, C_in, features_out]``."""
        return tf.cast(self.kernel * self._mask, dtype)

    @tf.Module.with_name_scope
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        """``x``: ``[B, H, W, C_in]`` → ``[B, H, W, features_out]``.

        Inside :func:`position_step` the layer instead takes the input at one position,
        ``[B, C_in]``, and returns its output there, ``[B, features_out]``.
        """
        step = _ACTIVE_STEP.get()
        if step is not None:
            return step.conv(self, x)
        x = tf.convert_to_tensor(x)
        if x.shape.rank != 4:
            raise ValueError(f"{self.name} expects [B, H, W, C] inputs, got shape {x.shape}")
        if self.kernel is None:
            self._build(int(x.shape[-1]))
        y = tf.nn.conv2d(x, self.masked_kernel(x.dtype), strides=1, padding="SAME")
        if self.bias is not None:
            y = tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))
        return y


# -- evaluation at one position, for the cached (fast) sampler ------------------------------
_ACTIVE_STEP: contextvars.ContextVar = contextvars.ContextVar("pixelcnn_position_step",
                                                             default=None)


class PositionCaches:
    """Input caches of every masked convolution of a model, for evaluation at one position.

    A masked kxk convolution's output at ``(i, j)`` reads its input only in rows
    ``i - kh//2 .. i`` (rows below are masked), so each layer with a spatial kernel keeps
    its input in a zero-padded cache ``[N, H + kh//2, W + 2·(kw//2), C_in]``; a 1x1
    convolution needs no cache. The masked kernels, cut to their top ``kh//2 + 1`` rows and
    flattened, are computed once per sampler call, outside the sampling loop.
    """

    def __init__(self, layers: Sequence[MaskedConv2D], batch: tf.Tensor,
                 image_hw: Sequence[int], dtype: tf.DType = tf.float32):
        height, width = image_hw
        self.layers = list(layers)
        self.index: Dict[int, int] = {}
        self.weights: Dict[int, tf.Tensor] = {}
        self.biases: Dict[int, Optional[tf.Tensor]] = {}
        initial: List[tf.Tensor] = []
        for layer in self.layers:
            kh, kw = layer.kernel_size
            ph, pw = kh // 2, kw // 2
            c_in = int(layer.kernel.shape[2])
            # [ph+1, kw, C_in, C_out] → [(ph+1)·kw·C_in, C_out]: the rows a position reads.
            self.weights[id(layer)] = tf.reshape(layer.masked_kernel(dtype)[:ph + 1],
                                                 [-1, layer.features_out])
            self.biases[id(layer)] = (None if layer.bias is None
                                      else tf.cast(layer.bias, dtype))
            if (kh, kw) != (1, 1):
                self.index[id(layer)] = len(initial)
                initial.append(tf.zeros(tf.stack([batch, height + ph, width + 2 * pw, c_in]),
                                        dtype))
        self.initial = initial

    def step(self, caches: List[tf.Tensor], i: tf.Tensor, j: tf.Tensor) -> "_PositionStep":
        return _PositionStep(self, list(caches), i, j)

    def write(self, caches: List[tf.Tensor], layer: MaskedConv2D, x: tf.Tensor,
              i: tf.Tensor, j: tf.Tensor) -> List[tf.Tensor]:
        """Stores ``x`` ``[N, C_in]`` as ``layer``'s input at (i, j); returns the caches."""
        caches = list(caches)
        k = self.index.get(id(layer))
        if k is not None:
            kh, kw = layer.kernel_size
            n = tf.shape(x)[0]
            # Cache position (i + kh//2, j + kw//2); indices [N, 3].
            where = tf.stack([tf.range(n), tf.fill([n], i + kh // 2),
                              tf.fill([n], j + kw // 2)], axis=1)
            caches[k] = tf.tensor_scatter_nd_update(caches[k], where, x)
        return caches


class _PositionStep:
    """One evaluation at position ``(i, j)``; collects the updated caches in ``caches``."""

    def __init__(self, owner: PositionCaches, caches: List[tf.Tensor], i: tf.Tensor,
                 j: tf.Tensor):
        self.owner, self.caches, self.i, self.j = owner, caches, i, j

    def conv(self, layer: MaskedConv2D, x: tf.Tensor) -> tf.Tensor:
        """``x`` ``[N, C_in]`` (the layer's input at (i, j)) → output ``[N, C_out]``."""
        key = id(layer)
        if key not in self.owner.weights:
            raise ValueError(f"{layer.name} is not part of the model being sampled")
        weights = self.owner.weights[key]
        if key in self.owner.index:
            self.caches = self.owner.write(self.caches, layer, x, self.i, self.j)
            cache = self.caches[self.owner.index[key]]
            kh, kw = layer.kernel_size
            n = tf.shape(x)[0]
            # Rows i-kh//2..i, columns j-kw//2..j+kw//2 of the image: [N, kh//2+1, kw, C_in].
            patch = tf.slice(cache, tf.stack([0, self.i, self.j, 0]),
                             tf.stack([n, kh // 2 + 1, kw, tf.shape(cache)[3]]))
            x = tf.reshape(patch, [n, -1])  # [N, ph+1, kw, C_in] → [N, (ph+1)·kw·C_in]
        y = tf.matmul(x, weights)  # [N, C_out]
        bias = self.owner.biases[key]
        return y if bias is None else y + bias


@contextlib.contextmanager
def position_step(step: _PositionStep):
    """Within this block every MaskedConv2D evaluates at one position from its cache."""
    token = _ACTIVE_STEP.set(step)
    try:
        yield step
    finally:
        _ACTIVE_STEP.reset(token)
