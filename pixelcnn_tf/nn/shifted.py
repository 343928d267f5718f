"""PixelCNN++'s shifted convolutions (Salimans et al. 2017), each with its cached row /
position evaluation (``TwoRowStep``).

A shifted convolution is causal by construction instead of by a mask: a down-shifted
kernel's output at row i reads input rows up to i only, a down-right-shifted one's at
(i, j) reads rows up to i and columns up to j. The three linear layers (``ShiftedConv2D``,
``ShiftedDeconv2D``, ``Dense``) share ``_Linear``: plain kernels, or weight normalisation
(kernel = g · v / ‖v‖) with a data-dependent initialisation
(``PixelCNNPlusPlus.initialize_from_data``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf


def concat_elu(x: tf.Tensor) -> tf.Tensor:
    """``[..., C]`` → ``[..., 2C]``: elu of x and of -x."""
    return tf.nn.elu(tf.concat([x, -x], axis=-1))




def right_shift(x: tf.Tensor) -> tf.Tensor:
    """``[B, H, W, C]`` moved right a column (zeros on the left)."""
    return tf.pad(x, [[0, 0], [0, 0], [1, 0], [0, 0]])[:, :, :-1]


def _weights(shape, fan_in: int, init_scale: float, name: str) -> tf.Variable:
    return tf.Variable(tf.random.truncated_normal(
        shape, stddev=float(np.sqrt(init_scale / max(fan_in, 1)))), name=name)


class _Linear(tf.Module):
    """What the three linear layers share: a kernel and a bias ``[F]``, made on the first
    call, and the kernel's two parametrisations.

    Plain (``weight_norm=False``): the kernel is a variable (truncated normal, stddev
    sqrt(init_scale / fan_in)). Weight normalisation (Salimans & Kingma 2016, as in the
    PixelCNN++ paper): kernel = g · v / ‖v‖, the norm over every axis but the output
    channel's, with the variables ``direction`` v and ``scale`` g ``[F]``. Its
    data-dependent initialisation (``PixelCNNPlusPlus.initialize_from_data``) sets g and
    the bias from a batch so that every output channel starts with mean 0 and standard
    deviation ``init_scale`` on it.
    """

    out_axis = -1  # the kernel's output-channel axis

    def __init__(self, features_out: int, init_scale: float, weight_norm: bool,
                 name: Optional[str] = None):
        super().__init__(name=name)
        self.features_out = int(features_out)
        self.init_scale = float(init_scale)
        self.weight_norm = bool(weight_norm)
        self.kernel: Optional[tf.Variable] = None  # plain
        self.direction: Optional[tf.Variable] = None  # weight-normalised: v and g
        self.scale: Optional[tf.Variable] = None
        self.bias: Optional[tf.Variable] = None

    def _make_variables(self, shape, fan_in: int) -> None:
        if self.bias is not None:
            return
        with self.name_scope:
            if self.weight_norm:
                self.direction = tf.Variable(tf.random.truncated_normal(shape, stddev=0.05),
                                             name="direction")
                self.scale = tf.Variable(tf.ones([self.features_out]), name="scale")
            else:
                self.kernel = _weights(shape, fan_in, self.init_scale, "kernel")
            self.bias = tf.Variable(tf.zeros([self.features_out]), name="bias")

    def weights(self, dtype: tf.DType = tf.float32,
                after: Optional[tf.Tensor] = None) -> tf.Tensor:
        """The kernel in ``dtype`` (computed in float32 from g and v when weight-normalised).

        ``after``: the layer's input. In a graph the kernel is then computed once that
        input is ready, not as soon as the step starts (it depends only on variables):
        otherwise a training step computes every layer's kernel at its start and holds
        them all until their layers run, and with ``train.recompute`` it holds a second
        copy of each recomputed block's kernels until the backward pass reaches it
        (measured in docs/training.md)."""
        with tf.control_dependencies([] if after is None else [after]):
            if not self.weight_norm:  # (read here, so that the read waits too)
                return tf.cast(self.kernel.value(), dtype)
            rank = self.direction.shape.rank
            out = self.out_axis % rank
            axes = [a for a in range(rank) if a != out]
            shape = [self.features_out if a == out else 1 for a in range(rank)]
            unit = tf.nn.l2_normalize(self.direction, axis=axes)
            return tf.cast(unit * tf.reshape(self.scale, shape), dtype)

    def initialize_from(self, x: tf.Tensor) -> tf.Tensor:
        """Weight normalisation's data-dependent initialisation on the batch ``x`` (its own,
        named call): sets g and the bias so that this layer's outputs on ``x`` have mean 0
        and standard deviation ``init_scale`` per channel, and returns those outputs."""
        if not self.weight_norm:
            raise ValueError(f"{self.name}: data-dependent initialisation needs weight_norm")
        self(x)  # the variables, if this is the first call
        self.scale.assign(tf.ones_like(self.scale))
        self.bias.assign(tf.zeros_like(self.bias))
        y = self(x)  # v / ‖v‖ applied, no bias
        axes = list(range(y.shape.rank - 1))
        mean, variance = tf.nn.moments(tf.cast(y, tf.float32), axes=axes)
        # A channel constant on the batch (e.g. a stream that sees only padding, as at
        # H/4 = 1 row) keeps g = init_scale instead of a huge 1/std.
        scale = self.init_scale / tf.sqrt(tf.where(variance > 1e-6, variance, 1.0))
        self.scale.assign(scale)
        self.bias.assign(-mean * scale)
        return self(x)


def call(layer, x: tf.Tensor) -> tf.Tensor:
    """How a network applies its linear layers in a plain pass: ``layer(x)``. (Its
    data-dependent initialisation passes ``_Linear.initialize_from`` instead.)"""
    return layer(x)


class ShiftedConv2D(_Linear):
    """A convolution whose output at (i, j) reads input rows s·i-kh+1..s·i (never a row
    below) and columns s·j-left..s·j-left+kw-1, with zero padding: ``left = (kw-1)//2``
    for a down-shifted kernel (centred columns), ``kw - 1`` for a down-right-shifted one
    (columns up to j). Output size: ``ceil(H / s) x ceil(W / s)``. Kernel
    ``[kh, kw, C_in, F]`` (see ``_Linear``), bias ``[F]`` (zeros).
    """

    def __init__(self, features_out: int, kernel_size: Sequence[int], right_shifted: bool,
                 stride: int = 1, init_scale: float = 1.0, weight_norm: bool = False,
                 name: Optional[str] = None):
        super().__init__(features_out, init_scale, weight_norm, name=name)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        kh, kw = self.kernel_size
        self.stride = int(stride)
        # (top, left, right) zero padding.
        self.padding = (kh - 1, kw - 1, 0) if right_shifted else (kh - 1, (kw - 1) // 2,
                                                                  (kw - 1) // 2)

    def build(self, features_in: int) -> None:
        kh, kw = self.kernel_size
        self._make_variables((kh, kw, features_in, self.features_out), kh * kw * features_in)

    def pad(self, x: tf.Tensor) -> tf.Tensor:
        """``[B, H, W, C]`` → ``[B, H + top, W + left + right, C]``."""
        top, left, right = self.padding
        return tf.pad(x, [[0, 0], [top, 0], [left, right], [0, 0]])

    def valid(self, padded: tf.Tensor, after: Optional[tf.Tensor] = None) -> tf.Tensor:
        """The convolution of an already padded input (VALID, the layer's stride);
        ``after``: see ``weights``."""
        y = tf.nn.conv2d(padded, self.weights(padded.dtype, after), strides=self.stride,
                         padding="VALID")
        return tf.nn.bias_add(y, tf.cast(self.bias, padded.dtype))

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        self.build(int(x.shape[-1]))
        # The kernel waits for x, not for the padded copy: oneDNN's graph rewrite fuses
        # the pad into the convolution, and a kernel waiting for the fused pad would
        # make the convolution wait for itself ("nodes in a cycle").
        return self.valid(self.pad(x), after=x)


class ShiftedDeconv2D(_Linear):
    """The stride-2 transposed convolution that undoes ``ShiftedConv2D``'s down-sampling:
    ``[B, H, W, C]`` → ``[B, 2H, 2W, F]``; output row r reads input row r // 2 only, and
    output column c reads columns (c+1)//2 - 1..c//2 (down-shifted, kernel 2x3: the
    columns around c) or c // 2 (down-right-shifted, kernel 2x2). So a value that sees
    only the pixels before (2i, 2j) at half resolution reaches full-resolution pixels
    (r, c) with r >= 2i and, in row 2i, c >= 2j: causality is kept. Kernel
    ``[kh, kw, F, C_in]`` (conv2d_transpose's layout; see ``_Linear``).
    """

    out_axis = 2

    def __init__(self, features_out: int, right_shifted: bool, init_scale: float = 1.0,
                 weight_norm: bool = False, name: Optional[str] = None):
        super().__init__(features_out, init_scale, weight_norm, name=name)
        self.kernel_size = (2, 2) if right_shifted else (2, 3)
        self.crop_left = 0 if right_shifted else 1

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        kh, kw = self.kernel_size
        c_in = int(x.shape[-1])
        self._make_variables((kh, kw, self.features_out, c_in), kh * kw * c_in // 4)
        batch, height, width = tf.shape(x)[0], x.shape[1], x.shape[2]
        full = [batch, 2 * height + kh - 1, 2 * width + kw - 1, self.features_out]

        y = tf.nn.conv2d_transpose(x, self.weights(x.dtype, x), tf.stack(full), strides=2,
                                   padding="VALID")
        # [B, 2H+1, 2W+kw-1, F] → [B, 2H, 2W, F]
        y = y[:, :2 * height, self.crop_left:self.crop_left + 2 * width]
        return tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))


class Dense(_Linear):
    """A 1x1 convolution (network in network): ``[..., C_in]`` → ``[..., F]``."""

    def __init__(self, features_out: int, init_scale: float = 1.0, weight_norm: bool = False,
                 name: Optional[str] = None):
        super().__init__(features_out, init_scale, weight_norm, name=name)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        c_in = int(x.shape[-1])
        self._make_variables((c_in, self.features_out), c_in)

        y = tf.tensordot(x, self.weights(x.dtype, x), axes=[[-1], [0]])
        y.set_shape(x.shape[:-1].concatenate([self.features_out]))
        return y + tf.cast(self.bias, x.dtype)



class TwoRowStep:
    """A ``pixelcnn_pp.ShiftedConv2D`` (2-row kernel, stride 1 or 2) evaluated a row or a
    position at a time. Cache: its input's last two rows, zero-padded at the sides,
    ``[N, 2, W_in + left + right, C_in]``, input row r in slot r % 2 (the slot of row -1
    starts and stays zero until row 1 is written). Output row i reads input rows
    s·i - 1 and s·i."""

    def __init__(self, conv, width_in: int, dtype: tf.DType):
        self.conv, self.width_in, self.dtype = conv, width_in, dtype
        if conv.kernel_size[0] != 2:
            raise ValueError(f"{conv.name}: a two-row cache needs a 2-row kernel, got "
                             f"{conv.kernel_size}")
        _, self.left, self.right = conv.padding
        kernel = conv.weights(dtype)  # [2, kw, C_in, F]
        self.c_in = int(kernel.shape[2])
        self.weights = tf.reshape(kernel, [-1, conv.features_out])
        self.bias = tf.cast(conv.bias, dtype)

    def initial(self, batch) -> tf.Tensor:
        return tf.zeros(tf.stack([batch, 2, self.width_in + self.left + self.right,
                                  self.c_in]), self.dtype)

    def write_row(self, cache, x_row: tf.Tensor, row) -> tf.Tensor:
        """``x_row`` ``[N, 1, W_in, C_in]`` is input row ``row``."""
        x_row = tf.pad(x_row, [[0, 0], [0, 0], [self.left, self.right], [0, 0]])
        slot = tf.equal(tf.range(2), row % 2)[None, :, None, None]  # [1, 2, 1, 1]
        return tf.where(slot, x_row, cache)

    def write(self, cache, x: tf.Tensor, i, j) -> tf.Tensor:
        """``x`` ``[N, C_in]`` is the input at (i, j)."""
        n = tf.shape(x)[0]
        where = tf.stack([tf.range(n), tf.fill([n], i % 2), tf.fill([n], j + self.left)],
                         axis=1)  # [N, 3]
        return tf.tensor_scatter_nd_update(cache, where, x)

    def _rows(self, cache, row_out):
        """The two input rows output row ``row_out`` reads, in order ``[N, 2, W', C_in]``."""
        top = self.conv.stride * row_out
        return tf.gather(cache, tf.stack([(top - 1) % 2, top % 2]), axis=1)

    def row(self, cache, row_out) -> tf.Tensor:
        """Output row ``row_out`` ``[N, 1, W_out, F]``."""
        return self.conv.valid(self._rows(cache, row_out))

    def at(self, cache, i, j) -> tf.Tensor:
        """The output at (i, j) ``[N, F]``."""
        rows = self._rows(cache, i)
        kw = self.conv.kernel_size[1]
        n = tf.shape(rows)[0]
        patch = tf.slice(rows, tf.stack([0, 0, self.conv.stride * j, 0]),
                         tf.stack([n, 2, kw, rows.shape[-1]]))  # [N, 2, kw, C_in]
        return tf.matmul(tf.reshape(patch, [n, -1]), self.weights) + self.bias

