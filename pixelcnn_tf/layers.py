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
    """A stride-1 2-D convolution (SAME output size) whose kernel is multiplied by a
    causal mask.

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
        # Both mask modes zero every kernel row below the centre (and, in the centre row,
        # every column right of the centre), so the convolution runs with only the taps
        # that can be non-zero and pads the input on top and at the sides: the output of
        # a SAME conv with the full masked kernel, with fewer FLOPs (3x3 → 2x3, 7x7 →
        # 4x7, 1x5 → 1x3).
        kh, kw = self.kernel_size
        rows = kh // 2 + 1
        right = kw // 2 if kh > 1 else 0  # a one-row kernel sees nothing to the right
        kernel = self.masked_kernel(x.dtype)[:rows, :kw // 2 + 1 + right]
        if (kh, kw) != (1, 1):
            # [B, H, W, C] → [B, H + kh//2, W + kw//2 + right, C]
            x = tf.pad(x, [[0, 0], [kh // 2, 0], [kw // 2, right], [0, 0]])
        y = tf.nn.conv2d(x, kernel, strides=1, padding="VALID")
        if self.bias is not None:
            y = tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))
        return y


class Conv2D(tf.Module):
    """An unmasked stride-1 convolution with explicit zero padding.

    ``padding = (top, bottom, left, right)``: e.g. a (2, 3) kernel with padding
    (1, 0, 1, 1) makes the output at row i read input rows i-1..i only (a "vertical
    stack" convolution); (0, 0, 0, 0) with a (1, 1) kernel is a dense layer per position.
    Kernel: truncated normal, stddev sqrt(init_scale / fan_in); bias: zeros.
    """

    def __init__(self, features_out: int, kernel_size: Sequence[int],
                 padding: Sequence[int] = (0, 0, 0, 0), init_scale: float = 1.0,
                 name: Optional[str] = None):
        super().__init__(name=name)
        self.features_out = int(features_out)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.padding = tuple(int(p) for p in padding)
        self.init_scale = float(init_scale)
        self.kernel: Optional[tf.Variable] = None
        self.bias: Optional[tf.Variable] = None

    @tf.Module.with_name_scope
    def __call__(self, x: tf.Tensor, padding: Optional[Sequence[int]] = None) -> tf.Tensor:
        """``[B, H, W, C_in]`` → ``[B, H + top + bottom - kh + 1, W + left + right - kw + 1,
        features_out]``; ``padding`` overrides the layer's (e.g. no top padding when the
        input already holds the rows above)."""
        if self.kernel is None:
            c_in = int(x.shape[-1])
            fan_in = self.kernel_size[0] * self.kernel_size[1] * c_in
            shape = (*self.kernel_size, c_in, self.features_out)
            self.kernel = tf.Variable(tf.random.truncated_normal(
                shape, stddev=float(np.sqrt(self.init_scale / fan_in))), name="kernel")
            self.bias = tf.Variable(tf.zeros([self.features_out]), name="bias")
        padding = self.padding if padding is None else tuple(int(p) for p in padding)
        top, bottom, left, right = padding
        if any(padding):
            x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
        y = tf.nn.conv2d(x, tf.cast(self.kernel, x.dtype), strides=1, padding="VALID")
        return tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))


def shift_down(x: tf.Tensor, rows: int = 1) -> tf.Tensor:
    """``[B, H, W, C]`` moved down by ``rows`` (zeros on top): output row i = input row
    i - rows."""
    return tf.pad(x, [[0, 0], [rows, 0], [0, 0], [0, 0]])[:, :-rows]


def split_colour_groups(x: tf.Tensor, n_colors: int, parts: int) -> List[tf.Tensor]:
    """Splits ``[..., n·parts·d]`` (contiguous colour groups) into ``parts`` tensors
    ``[..., n·d]`` that keep the grouping: part p of group g holds channels
    ``g·parts·d + p·d ..`` of the input. Gates built from the parts combine a colour only
    with itself, so colour masks stay valid."""
    d = x.shape[-1] // (n_colors * parts)
    if d * n_colors * parts != x.shape[-1]:
        raise ValueError(f"{x.shape[-1]} channels cannot be split into {n_colors} colour "
                         f"groups of {parts} parts")
    lead = tf.shape(x)[:-1]
    y = tf.reshape(x, tf.concat([lead, [n_colors, parts, d]], 0))  # [..., n, parts, d]
    out = []
    for part in tf.unstack(y, num=parts, axis=-2):
        part = tf.reshape(part, tf.concat([lead, [n_colors * d]], 0))  # [..., n, d] → [..., n·d]
        part.set_shape(x.shape[:-1].concatenate([n_colors * d]))
        out.append(part)
    return out


# -- evaluation at one position, for the cached (fast) sampler ------------------------------
_ACTIVE_STEP: contextvars.ContextVar = contextvars.ContextVar("pixelcnn_position_step",
                                                             default=None)


def in_position_step() -> bool:
    """Whether the layers are being evaluated at one position (see ``position_step``)."""
    return _ACTIVE_STEP.get() is not None


def active_step() -> Optional["_PositionStep"]:
    """The position step being evaluated (see ``position_step``), or None."""
    return _ACTIVE_STEP.get()


def with_colour_group(old: tf.Tensor, values: tf.Tensor, c: tf.Tensor,
                      n_colors: int) -> tf.Tensor:
    """``old`` ``[N, D]`` with colour group ``c`` replaced by ``values`` ``[N, D / n]``."""
    d = old.shape[-1]
    in_group = tf.equal(tf.range(d) // (d // n_colors), c)[None, :]  # [1, D]
    return tf.where(in_group, tf.tile(values, [1, n_colors]), old)


def position_group(values: tf.Tensor, n_colors: int) -> tf.Tensor:
    """Per-image values ``[B, D]`` → in a position step, their colour group being computed
    ``[B, D / n_colors]``; otherwise ``values`` unchanged."""
    step = _ACTIVE_STEP.get()
    if step is None:
        return values
    d = values.shape[-1]
    grouped = tf.reshape(values, [-1, n_colors, d // n_colors])  # [B, D] → [B, n, D/n]
    return tf.gather(grouped, step.c, axis=1)  # [B, D/n]


class PositionCaches:
    """Caches that let every masked convolution of a model run at one sub-pixel.

    Sampling sub-pixel ``(i, j, c)`` needs, in every layer, only the outputs of colour
    group ``c`` at position ``(i, j)``: groups before ``c`` were computed (and are final)
    at the earlier sub-pixels of the pixel, and later groups are not needed yet. A masked
    kxk convolution reads its input only in rows ``i - kh//2 .. i`` (rows below are
    masked), so each keeps its input in a zero-padded cache
    ``[N, H + kh//2, W + 2·(kw//2), C_in]``; a 1x1 convolution keeps only the current
    pixel ``[N, 1, 1, C_in]``. A step writes colour group ``c`` of the layer's input at
    ``(i, j)``, reads the rows it can see and multiplies by the kernel columns of output
    group ``c``: one position and one colour group per sub-pixel, so a whole image costs
    one pass over the network's weights per pixel. Kernels are masked, cut to their top
    ``kh//2 + 1`` rows and split by output group once per sampler call, outside the loop.
    """

    def __init__(self, layers: Sequence[MaskedConv2D], batch: tf.Tensor,
                 image_hw: Sequence[int], dtype: tf.DType = tf.float32):
        height, width = image_hw
        self.dtype = tf.as_dtype(dtype)
        self.layers = list(layers)
        self.index: Dict[int, int] = {}
        self.weights: Dict[int, tf.Tensor] = {}
        self.biases: Dict[int, tf.Tensor] = {}
        initial: List[tf.Tensor] = []
        for layer in self.layers:
            key = id(layer)
            kh, kw = layer.kernel_size
            ph, pw = kh // 2, kw // 2
            n, c_in, c_out = layer.n_colors, int(layer.kernel.shape[2]), layer.features_out
            kernel = tf.reshape(layer.masked_kernel(dtype)[:ph + 1], [-1, n, c_out // n])
            # [K, n, C_out/n] → [n, K, C_out/n]: the kernel columns of each output group.
            self.weights[key] = tf.transpose(kernel, [1, 0, 2])
            bias = layer.bias if layer.bias is not None else tf.zeros([c_out])
            self.biases[key] = tf.reshape(tf.cast(bias, dtype), [n, c_out // n])
            self.index[key] = len(initial)
            shape = [batch, height + ph, width + 2 * pw, c_in] if (kh, kw) != (1, 1) \
                else [batch, 1, 1, c_in]
            initial.append(tf.zeros(tf.stack(shape), dtype))
        self.initial = initial

    def step(self, caches: List[tf.Tensor], i: tf.Tensor, j: tf.Tensor, c: tf.Tensor,
             rows: Optional[Dict[int, tuple]] = None) -> "_PositionStep":
        """One evaluation at sub-pixel (i, j, c). ``rows``: the row states of row-wise
        pixel layers for row i, by ``id(layer)`` (see ``PixelRNN.row_update``)."""
        return _PositionStep(self, list(caches), i, j, c, rows or {})

    @staticmethod
    def _cache_position(layer: MaskedConv2D, i, j):
        if layer.kernel_size == (1, 1):
            return 0, 0
        return i + layer.kernel_size[0] // 2, j + layer.kernel_size[1] // 2

    def write(self, caches: List[tf.Tensor], layer: MaskedConv2D, x: tf.Tensor,
              i: tf.Tensor, j: tf.Tensor, c: tf.Tensor) -> List[tf.Tensor]:
        """Stores ``layer``'s input at (i, j): ``x`` is all of it ``[N, C_in]`` or its
        colour group ``c`` ``[N, C_in / n_colors]``. Returns the updated caches."""
        key = id(layer)
        k = self.index[key]
        caches = list(caches)
        cache = caches[k]
        n = tf.shape(x)[0]
        row, col = self._cache_position(layer, i, j)
        where = tf.stack([tf.range(n), tf.fill([n], row), tf.fill([n], col)], axis=1)  # [N, 3]
        if x.shape[-1] != cache.shape[-1]:  # one colour group: keep the other groups
            x = with_colour_group(tf.gather_nd(cache, where), x, c, layer.n_colors)
        caches[k] = tf.tensor_scatter_nd_update(cache, where, x)
        return caches


class _PositionStep:
    """One evaluation at sub-pixel ``(i, j, c)``; collects the updated caches."""

    def __init__(self, owner: PositionCaches, caches: List[tf.Tensor], i: tf.Tensor,
                 j: tf.Tensor, c: tf.Tensor, rows: Dict[int, tuple]):
        self.owner, self.caches, self.i, self.j, self.c = owner, caches, i, j, c
        self.rows = rows

    def row_state(self, layer) -> tuple:
        """The row state of a row-wise pixel layer for the current row."""
        if id(layer) not in self.rows:
            raise ValueError(f"{layer.name} needs its row state in the position step: "
                             f"pass rows=model.row_inputs(row_state) to PositionCaches.step")
        return self.rows[id(layer)]

    def set_row_state(self, layer, row_state: tuple) -> None:
        """Replaces a layer's row state (layers that also keep the current row's values)."""
        self.row_state(layer)  # checks it is there
        self.rows = {**self.rows, id(layer): row_state}

    def at_position(self, row_values: tf.Tensor, n_colors: int) -> tf.Tensor:
        """Per-row values ``[N, W, D]`` → column j, colour group c: ``[N, D / n_colors]``."""
        return position_group(tf.gather(row_values, self.j, axis=1), n_colors)

    def record(self, row_values: tf.Tensor, values: tf.Tensor, n_colors: int) -> tf.Tensor:
        """The inverse of ``at_position``: ``row_values`` ``[N, W, D]`` with column j,
        colour group c replaced by ``values`` ``[N, D / n_colors]``."""
        column = with_colour_group(tf.gather(row_values, self.j, axis=1), values, self.c,
                                   n_colors)  # [N, D]
        here = tf.equal(tf.range(tf.shape(row_values)[1]), self.j)[None, :, None]  # [1, W, 1]
        return tf.where(here, column[:, None], row_values)

    def conv(self, layer: MaskedConv2D, x: tf.Tensor) -> tf.Tensor:
        """``layer``'s input at (i, j) (all of it, or colour group c) → its output group c
        ``[N, C_out / n_colors]``."""
        key = id(layer)
        if key not in self.owner.weights:
            raise ValueError(f"{layer.name} is not part of the model being sampled")
        self.caches = self.owner.write(self.caches, layer, x, self.i, self.j, self.c)
        cache = self.caches[self.owner.index[key]]
        n = tf.shape(x)[0]
        if layer.kernel_size == (1, 1):
            inputs = cache[:, 0, 0, :]  # [N, C_in]
        else:
            kh, kw = layer.kernel_size
            # Rows i-kh//2..i, columns j-kw//2..j+kw//2 of the image: [N, kh//2+1, kw, C_in].
            patch = tf.slice(cache, tf.stack([0, self.i, self.j, 0]),
                             tf.stack([n, kh // 2 + 1, kw, cache.shape[-1]]))
            inputs = tf.reshape(patch, [n, -1])  # [N, kh//2+1, kw, C_in] → [N, K]
        weights = tf.gather(self.owner.weights[key], self.c)  # [K, C_out/n]
        return tf.matmul(inputs, weights) + tf.gather(self.owner.biases[key], self.c)


@contextlib.contextmanager
def position_step(step: _PositionStep):
    """Within this block every MaskedConv2D evaluates at one sub-pixel from its cache."""
    token = _ACTIVE_STEP.set(step)
    try:
        yield step
    finally:
        _ACTIVE_STEP.reset(token)
