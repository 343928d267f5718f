"""Small building blocks: the masked 2-D convolution."""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from pixelcnn_tf.masks import KernelSize, _kernel_hw, get_mask


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
        """``x``: ``[B, H, W, C_in]`` → ``[B, H, W, features_out]``."""
        x = tf.convert_to_tensor(x)
        if x.shape.rank != 4:
            raise ValueError(f"{self.name} expects [B, H, W, C] inputs, got shape {x.shape}")
        if self.kernel is None:
            self._build(int(x.shape[-1]))
        y = tf.nn.conv2d(x, self.masked_kernel(x.dtype), strides=1, padding="SAME")
        if self.bias is not None:
            y = tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))
        return y
