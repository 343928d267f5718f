"""Small building blocks: the masked 2-D convolution, a padded convolution, shifts."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from pixelcnn_tf.masks import KernelSize, _kernel_hw, get_mask


def per_image(values: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Reshapes per-image vectors ``[B, D]`` to broadcast against ``like`` ``[B, ..., D]``
    (``[B, H, W, D]`` in a full pass, ``[B, D]`` at one position). Values of ``like``'s
    rank (per-position maps, e.g. ``[B, H, W, D]`` or one row ``[B, 1, W, D]``) already
    broadcast and are returned as they are."""
    if values.shape.rank == like.shape.rank:
        return values
    extra = like.shape.rank - 2
    return tf.reshape(values, [-1] + [1] * extra + [values.shape[-1]])


def check_dilation(dilation) -> int:
    """A dilation rate as an int >= 1, or a ValueError."""
    if isinstance(dilation, bool) or int(dilation) != dilation or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")
    return int(dilation)


class MaskedConv2D(tf.Module):
    """A stride-1 2-D convolution (SAME output size) whose kernel is multiplied by a
    causal mask, optionally dilated.

    With ``dilation`` d the kernel taps are d pixels apart: tap (a, b) of a kh x kw kernel
    reads the input at (i + d·(a - kh//2), j + d·(b - kw//2)). The mask is the same, in
    kernel coordinates, so a mask-B kernel still reads only rows above (every d-th one)
    and pixels left of (i, j) on row i.

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
                 dilation: int = 1, name: Optional[str] = None):
        super().__init__(name=name)
        self.features_out = int(features_out)
        self.kernel_size = _kernel_hw(kernel_size)
        self.dilation = check_dilation(dilation)
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
        """``x``: ``[B, H, W, C_in]`` → ``[B, H, W, features_out]`` (the incremental
        evaluation at one position is ``incremental.ConvStep``)."""
        x = tf.convert_to_tensor(x)
        if x.shape.rank != 4:
            raise ValueError(f"{self.name} expects [B, H, W, C] inputs, got shape {x.shape}")
        if self.kernel is None:
            self._build(int(x.shape[-1]))
        # Both mask modes zero every kernel row below the centre (and, in the centre row,
        # every column right of the centre), so the convolution runs with only the taps
        # that can be non-zero and pads the input on top and at the sides: the output of
        # a SAME conv with the full masked kernel, with fewer FLOPs (3x3 → 2x3, 7x7 →
        # 4x7, 1x5 → 1x3). Dilated: the padding is d times as wide.
        kh, kw = self.kernel_size
        d = self.dilation
        rows = kh // 2 + 1
        right = kw // 2 if kh > 1 else 0  # a one-row kernel sees nothing to the right
        kernel = self.masked_kernel(x.dtype)[:rows, :kw // 2 + 1 + right]
        if (kh, kw) != (1, 1):
            # [B, H, W, C] → [B, H + d·kh//2, W + d·(kw//2 + right), C]
            x = tf.pad(x, [[0, 0], [d * (kh // 2), 0], [d * (kw // 2), d * right], [0, 0]])
        y = tf.nn.conv2d(x, kernel, strides=1, padding="VALID", dilations=d)
        if self.bias is not None:
            y = tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))
        return y


class Conv2D(tf.Module):
    """An unmasked stride-1 convolution with explicit zero padding.

    ``padding = (top, bottom, left, right)``: e.g. a (2, 3) kernel with padding
    (1, 0, 1, 1) makes the output at row i read input rows i-1..i only (a "vertical
    stack" convolution); (0, 0, 0, 0) with a (1, 1) kernel is a dense layer per position.
    ``dilation`` d spaces the taps d pixels apart (the padding is given in pixels: a
    dilated (2, 3) vertical-stack kernel needs (d, 0, d, d)).
    Kernel: truncated normal, stddev sqrt(init_scale / fan_in); bias: zeros.
    """

    def __init__(self, features_out: int, kernel_size: Sequence[int],
                 padding: Sequence[int] = (0, 0, 0, 0), init_scale: float = 1.0,
                 dilation: int = 1, name: Optional[str] = None):
        super().__init__(name=name)
        self.features_out = int(features_out)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.padding = tuple(int(p) for p in padding)
        self.dilation = check_dilation(dilation)
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
        y = tf.nn.conv2d(x, tf.cast(self.kernel, x.dtype), strides=1, padding="VALID",
                         dilations=self.dilation)
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
