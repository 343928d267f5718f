"""Incremental evaluation: the fast sampler's one home.

Sampling visits a model's steps in raster order: pixel (i, j) and, for models whose masks
split channels into colour groups (the categorical output), colour group c of it. At each
step only the outputs at that position are new, so instead of running the network on the
whole image (the naive sampler), every component is evaluated at the one position from
caches of what earlier steps computed (Ramachandran et al. 2017, "Fast Generation for
Convolutional Autoregressive Models"). The results equal the full pass.

Every component implements one explicit API, here and nowhere else:

  ``initial(batch)``                     → its cache before the first step (a nest of
                                            tensors, carried by the sampler's while loop);
  ``step(cache, x, pos, ...)``           → (cache, its output at position ``pos``): ``x``
                                            is its input there (``[N, D]``, or colour group
                                            ``pos.c`` of it, ``[N, D / groups]``);
  ``finish_row(cache, x_row, ...)``      → (cache, its output over the row), called once
                                            row r is complete with the component's input
                                            over that row ``[N, 1, W, D]``: layers whose
                                            dependence on the rows above goes through a
                                            per-row state (``row_wise``) update it here.

Components: ``ConvStep`` (a MaskedConv2D), one ``LayerStep`` per pixel-layer type
(registered with ``@steps_for``), and model steppers (``stepper(model)``), whose
``conditions(labels, context)`` prepares the conditioning once (class vectors; a
multi-scale conditional network's bias maps), ``step(cache, images, pos, conditions)``
returns the parameters of the step's output distribution, ``record(cache, images, pos)``
stores a drawn pixel where the layers reading the image need it (the input layer, and
each ``LayerStep.record``: PixelSNAIL's key/value cache), and
``finish_row(cache, images, row, conditions)`` runs once row ``row`` is complete.
``walk(model, images, labels, fill, context)`` runs them over every step in raster order;
the sampler (sampling.py), the codec (codec.py) and the tests use exactly this API.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple, Optional, Type

import numpy as np
import tensorflow as tf

from pixelcnn_tf import attention, blocks
from pixelcnn_tf.layers import MaskedConv2D
from pixelcnn_tf.models import PixelRNN
from pixelcnn_tf.multiscale import MultiScalePixelRNN
from pixelcnn_tf.pixelcnn_pp import PixelCNNPlusPlus, concat_elu


class Position(NamedTuple):
    """The step being evaluated: row ``i``, column ``j``, colour group ``c`` (0 when the
    model has one group). Scalar int32 tensors (or ints)."""
    i: tf.Tensor
    j: tf.Tensor
    c: tf.Tensor


# -- colour groups --------------------------------------------------------------------------
def colour_group(values: tf.Tensor, groups: int, c) -> tf.Tensor:
    """``[N, D]`` (contiguous colour groups) → group ``c``: ``[N, D / groups]``."""
    if groups == 1:
        return values
    d = values.shape[-1]
    grouped = tf.reshape(values, [-1, groups, d // groups])  # [N, D] → [N, groups, D/groups]
    return tf.gather(grouped, c, axis=1)


def with_colour_group(old: tf.Tensor, values: tf.Tensor, c, groups: int) -> tf.Tensor:
    """``old`` ``[N, D]`` with colour group ``c`` replaced by ``values`` ``[N, D / groups]``."""
    if groups == 1:
        return values
    d = old.shape[-1]
    in_group = tf.equal(tf.range(d) // (d // groups), c)[None, :]  # [1, D]
    return tf.where(in_group, tf.tile(values, [1, groups]), old)


def at_position(row_values: tf.Tensor, pos: Position, groups: int) -> tf.Tensor:
    """Per-row values ``[N, W, D]`` → column ``pos.j``, colour group ``pos.c``."""
    return colour_group(tf.gather(row_values, pos.j, axis=1), groups, pos.c)


def record_at(row_values: tf.Tensor, values: tf.Tensor, pos: Position,
              groups: int) -> tf.Tensor:
    """``row_values`` ``[N, W, D]`` with column ``pos.j``, colour group ``pos.c`` replaced
    by ``values`` ``[N, D / groups]`` (the inverse of ``at_position``)."""
    column = with_colour_group(tf.gather(row_values, pos.j, axis=1), values, pos.c, groups)
    here = tf.equal(tf.range(tf.shape(row_values)[1]), pos.j)[None, :, None]  # [1, W, 1]
    return tf.where(here, column[:, None], row_values)


# -- one masked convolution -----------------------------------------------------------------
class ConvStep:
    """A MaskedConv2D at one position and colour group.

    Cache: the layer's input over the rows a masked kxk convolution with dilation d reads
    at row i, i-d·(kh//2)..i, in a ring of R rows (image row r in slot r mod R; R = kh//2
    + 1 without dilation, d·(kh//2 + 1) with it, 1 for a one-row kernel), each
    zero-padded to ``W + 2·d·(kw//2)`` columns: ``[N, R, W + 2·d·(kw//2), C_in]``; for a
    1x1 convolution only the current pixel ``[N, 1, 1, C_in]`` (its earlier colour
    groups). A step writes the input at (i, j) (all of it, or colour group c), reads the
    kh//2 + 1 rows the kernel needs as they lie in the ring (slots i mod d, i mod d + d,
    ..: the rows i - d·a all share i mod d) and every d-th column around j, and multiplies
    by the kernel, rotated to the ring's order, columns of output group c:
    ``[N, C_out / groups]``. Kernels are masked, cut to their top kh//2 + 1 rows, rotated
    and split by output group once, outside the loop. (A small cache matters where the
    loop cannot update it in place, as in the codec's graph-mode loop, which copies it
    every step.)
    """

    def __init__(self, conv: MaskedConv2D, width: int, dtype: tf.DType):
        self.conv = conv
        self.width, self.dtype = width, tf.as_dtype(dtype)
        kh, kw = conv.kernel_size
        self.one_by_one = (kh, kw) == (1, 1)
        d = self.dilation = conv.dilation
        self.kernel_rows = kh // 2 + 1  # the rows the masked kernel reads (and rotations)
        self.rows = 1 if kh == 1 else d * self.kernel_rows  # R: the rows of the ring
        self.pad = d * (kw // 2)  # zero columns on each side of a ring row
        n, c_out = conv.n_colors, conv.features_out
        self.groups = n
        self.c_in = int(conv.kernel.shape[2])
        kernel = conv.masked_kernel(dtype)[:self.kernel_rows]  # [kh//2+1, kw, C_in, C_out]
        # The rows read at row i lie in ring order; kernel row (t - i//d + kh//2) mod
        # (kh//2+1) meets the t-th of them: one copy of the kernel per rotation
        # r = (i//d - kh//2) mod (kh//2+1), rows in ring order, so that a step multiplies
        # the rows as they lie. [rotation, n (group), K, C_out/n].
        q = self.kernel_rows
        rotations = [tf.roll(kernel, shift=r, axis=0) for r in range(q)]
        kernels = tf.reshape(tf.stack(rotations), [q, -1, n, c_out // n])
        kernels = tf.transpose(kernels, [0, 2, 1, 3])  # [q, K, n, ·] → [q, n, K, ·]
        self.weights = tf.reshape(kernels, [q * n, -1, c_out // n])  # [q·n, K, ·]
        bias = conv.bias if conv.bias is not None else tf.zeros([c_out])
        self.biases = tf.reshape(tf.cast(bias, dtype), [n, c_out // n])

    def initial(self, batch) -> tf.Tensor:
        shape = ([batch, 1, 1, self.c_in] if self.one_by_one else
                 [batch, self.rows, self.width + 2 * self.pad, self.c_in])
        return tf.zeros(tf.stack(shape), self.dtype)

    def write(self, cache: tf.Tensor, x: tf.Tensor, pos: Position) -> tf.Tensor:
        """``cache`` with the input at ``pos`` set: ``x`` is all of it ``[N, C_in]`` or its
        colour group ``pos.c`` ``[N, C_in / groups]`` (the groups after it are zeroed). In
        the ring, the next d·(kw//2) columns of the row are zeroed too: they still hold
        row i - R, and the step at ``pos`` reads some of them (with zero weights)."""
        n = tf.shape(x)[0]
        row, col = (0, 0) if self.one_by_one else (pos.i % self.rows, pos.j + self.pad)
        if x.shape[-1] != self.c_in:  # one colour group: keep this pixel's earlier groups
            here = tf.stack([tf.range(n), tf.fill([n], row), tf.fill([n], col)], axis=1)
            earlier = tf.gather_nd(cache, here)  # [N, C_in]; at c = 0 an older pixel's
            earlier = tf.where(pos.c > 0, earlier, tf.zeros_like(earlier))
            x = with_colour_group(earlier, x, pos.c, self.groups)
        span = 1 if self.one_by_one else self.pad + 1  # the pixel, then the zeroed columns
        block = tf.concat([x[:, None], tf.zeros(tf.stack([n, span - 1, self.c_in]), x.dtype)],
                          axis=1)  # [N, span, C_in]
        where = tf.stack([tf.tile(tf.range(n)[:, None], [1, span]),
                          tf.fill(tf.stack([n, span]), row),
                          tf.tile((col + tf.range(span))[None], [n, 1])],
                         axis=-1)  # [N, span, 3] = (n, slot, column)
        return tf.tensor_scatter_nd_update(cache, where, block)

    def step(self, cache: tf.Tensor, x: tf.Tensor, pos: Position):
        """→ (cache, output group ``pos.c`` at ``pos`` ``[N, C_out / groups]``)."""
        cache = self.write(cache, x, pos)
        n = tf.shape(x)[0]
        if self.one_by_one:
            inputs = cache[:, 0, 0, :]  # [N, C_in]
            weights = tf.gather(self.weights, pos.c)  # [K, C_out/groups]
        else:
            kh, kw = self.conv.kernel_size
            d, q = self.dilation, self.kernel_rows
            # The rows the kernel reads, in ring order, columns j-d·(kw//2)..j+d·(kw//2):
            # [N, d·(q-1)+1, d·(kw-1)+1, C_in], then every d-th row and column.
            first, i = (0, pos.i) if d == 1 else (0 if kh == 1 else pos.i % d, pos.i // d)
            patch = tf.slice(cache, tf.stack([0, first, pos.j, 0]),
                             tf.stack([n, d * (q - 1) + 1, d * (kw - 1) + 1, self.c_in]))
            if d > 1:
                patch = patch[:, ::d, ::d]  # [N, q, kw, C_in]
            inputs = tf.reshape(patch, [n, -1])  # [N, q, kw, C_in] → [N, K]
            rotation = (i - kh // 2) % q
            weights = tf.gather(self.weights, rotation * self.groups + pos.c)  # [K, C_out/g]
        return cache, tf.matmul(inputs, weights) + tf.gather(self.biases, pos.c)


# -- pixel layers ---------------------------------------------------------------------------
class LayerStep:
    """A pixel layer evaluated incrementally (see the module docstring).

    ``row_wise`` layers get ``finish_row`` after every row; their ``step`` reads the row
    state it left. Inputs and outputs are the layer type's state (a tensor, or the gated
    PixelCNN's (vertical, horizontal) pair), at one position and colour group in ``step``
    and over one row ``[N, 1, W, ·]`` in ``finish_row``.
    """

    row_wise = False

    def __init__(self, layer: blocks.PixelLayer, width: int, dtype: tf.DType):
        self.layer, self.width, self.dtype = layer, width, dtype
        self.groups = layer.n_colors

    def conv(self, conv: MaskedConv2D) -> ConvStep:
        return ConvStep(conv, self.width, self.dtype)

    def initial(self, batch) -> tuple:
        raise NotImplementedError

    def step(self, cache: tuple, x, pos: Position, condition: Optional[tf.Tensor]):
        raise NotImplementedError

    def finish_row(self, cache: tuple, x_row, condition: Optional[tf.Tensor]):
        return cache, None

    def record(self, cache: tuple, pixel: tf.Tensor, pos: Position) -> tuple:
        """After a step's sub-pixels are drawn: ``pixel`` ``[N, C]`` is pixel ``pos`` of
        the image (preprocessed; its colour groups after ``pos.c`` are not drawn yet and
        hold any value). Layers that read the image itself keep what they need here."""
        return cache


LAYER_STEPS: Dict[Type[blocks.PixelLayer], Type[LayerStep]] = {}


def steps_for(layer_cls: Type[blocks.PixelLayer]) -> Callable:
    """Class decorator: registers the LayerStep of a pixel-layer type."""

    def register(cls: Type[LayerStep]) -> Type[LayerStep]:
        LAYER_STEPS[layer_cls] = cls
        return cls

    return register


def layer_step(layer: blocks.PixelLayer, width: int, dtype) -> LayerStep:
    return LAYER_STEPS[type(layer)](layer, width, dtype)


@steps_for(blocks.PixelCNNBlock)
class PixelCNNStep(LayerStep):
    """Three masked convolutions, each at the one position."""

    def __init__(self, layer, width, dtype):
        super().__init__(layer, width, dtype)
        self.convs = [self.conv(c) for c in (layer.reduce, layer.conv, layer.expand)]

    def initial(self, batch):
        return tuple(c.initial(batch) for c in self.convs)

    def step(self, cache, x, pos, condition):
        caches, y = [], x
        for conv, conv_cache in zip(self.convs, cache):
            conv_cache, y = conv.step(conv_cache, tf.nn.relu(y), pos)
            caches.append(conv_cache)
        if condition is not None:
            y += colour_group(condition, self.groups, pos.c)
        return tuple(caches), x + y


@steps_for(blocks.GatedPixelCNNBlock)
class GatedStep(LayerStep):
    """Row state: the vertical stack's input over the last d·(k//2) + 1 rows
    ``[N, d·(k//2)+1, W, 2h]`` (d the dilation) and what the horizontal stack adds from
    the row above ``[N, W, 4h]``; a step computes the horizontal stack at the position."""

    row_wise = True

    def __init__(self, layer, width, dtype):
        super().__init__(layer, width, dtype)
        self.horizontal = self.conv(layer.horizontal)
        self.horizontal_out = self.conv(layer.horizontal_out)

    def initial(self, batch):
        layer, width_2h = self.layer, 2 * self.layer.hidden_dim
        rows = layer.dilation * (layer.kernel_size // 2) + 1
        window = tf.zeros(tf.stack([batch, rows, self.width, width_2h]), self.dtype)
        zero_row = tf.zeros(tf.stack([batch, 1, self.width, 2 * width_2h]), self.dtype)
        from_above = layer.vertical_to_horizontal(zero_row)[:, 0]  # row 0: 1x1 of zeros
        return (self.horizontal.initial(batch), self.horizontal_out.initial(batch), window,
                from_above)

    def step(self, cache, x, pos, condition):
        h_cache, out_cache, window, from_above = cache
        _, h = x  # [N, 2h/groups]: the horizontal stack, colour group c
        _, h_cond = self.layer.split_conditions(
            None if condition is None else colour_group(condition, self.groups, pos.c), 1)
        h_cache, h_pre = self.horizontal.step(h_cache, h, pos)
        h_pre += at_position(from_above, pos, self.groups)
        out_cache, y = self.horizontal_out.step(out_cache, blocks.gate(h_pre, 1, h_cond),
                                                pos)
        return (h_cache, out_cache, window, from_above), (None, h + y)

    def finish_row(self, cache, x_row, condition):
        """Row r of the vertical stack, from rows r-d·(k//2)..r of its input."""
        h_cache, out_cache, window, _ = cache
        layer = self.layer
        v_row, _ = x_row  # [N, 1, W, 2h]
        window = tf.concat([window[:, 1:], v_row], axis=1)  # rows r-d·(k//2)..r
        p = layer.dilation * (layer.kernel_size // 2)
        v_pre = layer.vertical(window, padding=(0, 0, p, p))  # [N, 1, W, 4h]
        v_cond, _ = layer.split_conditions(condition, self.groups)
        v_new = blocks.gate(v_pre, self.groups, v_cond)  # [N, 1, W, 2h]
        from_above = layer.vertical_to_horizontal(v_pre)[:, 0]
        return (h_cache, out_cache, window, from_above), (v_new, None)


class _RecurrentStep(LayerStep):
    """Shared by the PixelRNN layers: the residual 1x1 output convolution."""

    row_wise = True

    def __init__(self, layer, width, dtype):
        super().__init__(layer, width, dtype)
        self.output = self.conv(layer.output)

    def residual(self, out_cache, x, hidden, pos, condition):
        out_cache, y = self.output.step(out_cache, hidden, pos)
        if condition is not None:
            y += colour_group(condition, self.groups, pos.c)
        return out_cache, x + y


@steps_for(blocks.RowLSTMBlock)
class RowLSTMStep(_RecurrentStep):
    """Row state: the state-to-state gates from the row above ``[N, W, 4h]`` and its
    cell ``[N, W, h]``; a step runs the LSTM at the position."""

    def __init__(self, layer, width, dtype):
        super().__init__(layer, width, dtype)
        self.input_to_state = self.conv(layer.input_to_state)

    def initial(self, batch):
        zeros = tf.zeros(tf.stack([batch, 1, self.width, self.layer.hidden_dim]), self.dtype)
        return (self.input_to_state.initial(batch), self.output.initial(batch),
                self.layer.state_to_state(zeros)[:, 0], zeros[:, 0])

    def step(self, cache, x, pos, condition):
        in_cache, out_cache, recurrent, cell = cache
        in_cache, gates = self.input_to_state.step(in_cache, x, pos)
        gates += at_position(recurrent, pos, self.groups)  # [N, 4h/groups]
        hidden, _ = blocks.lstm_update(gates, at_position(cell, pos, self.groups), 1)
        out_cache, y = self.residual(out_cache, x, hidden, pos, condition)
        return (in_cache, out_cache, recurrent, cell), y

    def finish_row(self, cache, x_row, condition):
        """The LSTM over row r (all columns) from the row state of row r - 1."""
        in_cache, out_cache, recurrent, cell = cache
        layer = self.layer
        gates = layer.input_to_state(x_row)[:, 0] + recurrent  # [N, W, 4h]
        hidden, cell = blocks.lstm_update(gates, cell, self.groups)  # [N, W, h] each
        out = layer.residual(x_row, hidden[:, None], condition)  # [N, 1, W, 2h]
        return (in_cache, out_cache, layer.state_to_state(hidden[:, None])[:, 0], cell), out


@steps_for(blocks.DiagonalBiLSTMBlock)
class DiagonalBiLSTMStep(_RecurrentStep):
    """The forward (left-to-right) LSTM at (i, j) reads the states of (i-1, j) and
    (i, j-1); the backward one enters (i, j) only through row i-1. Row state: forward and
    backward hidden states of the row above, and the forward hidden state and cell of the
    current row, filled in position by position (all ``[N, W, h]``)."""

    def __init__(self, layer, width, dtype):
        super().__init__(layer, width, dtype)
        self.input_to_state = self.conv(layer.input_to_state[0])

    def initial(self, batch):
        zeros = tf.zeros(tf.stack([batch, self.width, self.layer.hidden_dim]), self.dtype)
        return (self.input_to_state.initial(batch), self.output.initial(batch),
                zeros, zeros, zeros, zeros)

    def step(self, cache, x, pos, condition):
        in_cache, out_cache, above_f, above_b, row_h, row_c = cache
        n, j = self.groups, pos.j
        left = tf.maximum(j - 1, 0)
        has_left = tf.cast(j > 0, row_h.dtype)  # the pixel left of column 0 is zero
        left_h = tf.gather(row_h, left, axis=1) * has_left  # [N, h]: all colour groups
        left_c = tf.gather(row_c, left, axis=1) * has_left
        up, side, bias = self.layer.recurrence(0, row_h.dtype)
        recurrent = (tf.matmul(tf.gather(above_f, j, axis=1), up)
                     + tf.matmul(left_h, side) + bias)  # [N, 4h]
        in_cache, gates = self.input_to_state.step(in_cache, x, pos)
        gates += colour_group(recurrent, n, pos.c)  # [N, 4h/n]
        hidden, cell = blocks.lstm_update(gates, colour_group(left_c, n, pos.c), 1)
        # Record colour group c of this pixel's forward state for the pixels to its right.
        row_h, row_c = record_at(row_h, hidden, pos, n), record_at(row_c, cell, pos, n)
        hidden += at_position(above_b, pos, n)  # shift_down(backward): the row above
        out_cache, y = self.residual(out_cache, x, hidden, pos, condition)
        return (in_cache, out_cache, above_f, above_b, row_h, row_c), y

    def finish_row(self, cache, x_row, condition):
        """Both LSTMs over row r, from the hidden states of row r - 1."""
        in_cache, out_cache, above_f, above_b, _, _ = cache
        layer = self.layer
        rows = []
        for direction in (0, 1):
            gates = layer.input_to_state[direction](x_row)[:, 0]  # [N, W, 4h]
            above = above_f if direction == 0 else above_b
            up, side, bias = layer.recurrence(direction, gates.dtype)
            # Columns left to right (forward) or right to left (backward): [W, N, ·].
            order = (lambda t: t) if direction == 0 else (lambda t: tf.reverse(t, [0]))
            inputs = (order(tf.transpose(gates, [1, 0, 2])),
                      order(tf.transpose(tf.matmul(above, up), [1, 0, 2])))

            def column_step(carry, inputs, side=side, bias=bias):
                h_prev, c_prev = carry  # [N, h]: the previous pixel of the row
                gates_col, from_above = inputs
                return blocks.lstm_update(
                    gates_col + from_above + tf.matmul(h_prev, side) + bias, c_prev,
                    self.groups)

            zeros = tf.zeros_like(above[:, 0])
            hidden, _ = tf.scan(column_step, inputs, initializer=(zeros, zeros))
            rows.append(tf.transpose(order(hidden), [1, 0, 2]))  # [W, N, h] → [N, W, h]
        forward, backward = rows
        out = layer.residual(x_row, (forward + above_b)[:, None], condition)
        zeros = tf.zeros_like(forward)
        return (in_cache, out_cache, forward, backward, zeros, zeros), out


@steps_for(attention.PixelSNAILBlock)
class PixelSNAILStep(LayerStep):
    """The gated convolutions at the position, then attention from the one query (colour
    group c of pixel p = i·W + j) with a key/value cache.

    Cache: the convolutions' caches; the attention input at pixel p so far ``[N, 2h]``
    (its colour groups <= c; the keys, values and queries of the pixel's own groups come
    from it); the keys and values of every position ``[H·W, N, heads, dim]`` each, slot
    p' written by ``record`` from the attention input and the image at p' (rewritten
    after each colour group, final after the last; a query at p reads slots p' < p only:
    the later ones are masked, as XLA needs static shapes). A step multiplies its query
    with the H·W cached keys and values plus the pixel's own G: its attention cost grows
    linearly with the image's size (O(H·W·heads·dim) per step), so a whole image costs
    O((H·W)²) where the naive sampler's full passes cost O((H·W)³).
    """

    def __init__(self, layer, width, dtype):
        super().__init__(layer, width, dtype)
        att = layer.attention
        self.convs = [self.conv(c) for c in layer.convs]
        self.output = self.conv(att.output)
        self.height = int(layer.position.shape[0])
        g, n, d = self.groups, att.num_heads, att.attention_dim
        self.heads, self.dim = n, d

        def one_by_one(conv):  # a masked 1x1 convolution as a matrix and a bias
            return conv.masked_kernel(dtype)[0, 0], tf.cast(conv.bias, dtype)

        self.query, self.key, self.value = (one_by_one(c) for c in (att.query, att.key,
                                                                    att.value))
        self.position = tf.cast(layer.position, dtype)  # [H, W, 2h]
        self.own_bias = attention.mask_bias(attention.own_mask(g), dtype)  # [G, G]
        self.earlier_bias = attention.mask_bias(np.array([False, True]), dtype)
        self.scale = tf.cast(1.0 / math.sqrt(d), dtype)

    def initial(self, batch):
        n, d, length = self.heads, self.dim, self.height * self.width
        table = tf.zeros(tf.stack([length, batch, n, d]), self.dtype)
        pixel = tf.zeros(tf.stack([batch, 2 * self.layer.hidden_dim]), self.dtype)
        return (tuple(c.initial(batch) for c in self.convs), self.output.initial(batch),
                pixel, table, table)

    def _project(self, pixel, weights):
        kernel, bias = weights
        return tf.matmul(pixel, kernel) + bias

    def step(self, cache, x, pos, condition):
        conv_caches, out_cache, pixel, keys, values = cache
        s, _ = x  # [N, 2h/G]: colour group c of the stream
        g, n, d = self.groups, self.heads, self.dim
        cond = None if condition is None else colour_group(condition, g, pos.c)
        new_conv_caches = []
        for conv, conv_cache in zip(self.convs, conv_caches):
            conv_cache, pre = conv.step(conv_cache, tf.nn.relu(s), pos)
            s = s + blocks.gate(pre, 1, cond)
            new_conv_caches.append(conv_cache)
        a = s + colour_group(self.position[pos.i, pos.j][None], g, pos.c)
        pixel = with_colour_group(tf.where(pos.c > 0, pixel, tf.zeros_like(pixel)), a,
                                  pos.c, g)  # [N, 2h]: groups <= c of the pixel
        batch = tf.shape(a)[0]

        def per_group(weights):  # [N, G, n, d]
            return tf.reshape(self._project(pixel, weights), [batch, g, n, d])

        q = tf.gather(per_group(self.query), pos.c, axis=1) * self.scale  # [N, n, d]
        k_own, v_own = per_group(self.key), per_group(self.value)  # [N, G, n, d]
        # Every slot, the ones at p and after masked (XLA needs static shapes; their
        # weights are exactly 0): [N, n, L].
        earlier = tf.range(tf.shape(keys)[0]) < pos.i * self.width + pos.j
        prev = tf.einsum("bnd,pbnd->bnp", q, keys) + tf.gather(self.earlier_bias, tf.cast(
            earlier, tf.int32))
        own = tf.einsum("bnd,bgnd->bng", q, k_own) + tf.gather(self.own_bias, pos.c)
        w_prev, w_own = attention.two_part_softmax(prev, own)  # [N, n, L], [N, n, G]
        out = (tf.einsum("bnp,pbnd->bnd", w_prev, values)
               + tf.einsum("bng,bgnd->bnd", w_own, v_own))  # [N, n, d]
        out_cache, y = self.output.step(out_cache, tf.reshape(out, [batch, n * d]), pos)
        return ((tuple(new_conv_caches), out_cache, pixel, keys, values), (s + y, None))

    def record(self, cache, pixel_values, pos):
        """Keys and values of pixel p from its attention input and its drawn values."""
        conv_caches, out_cache, pixel, keys, values = cache
        k, v = self.layer.attention.earlier_keys_values(  # one position: [N, 1, 1, n, d]
            pixel[:, None, None], pixel_values[:, None, None])
        where = [[pos.i * self.width + pos.j]]
        keys = tf.tensor_scatter_nd_update(keys, where, k[None, :, 0, 0])
        values = tf.tensor_scatter_nd_update(values, where, v[None, :, 0, 0])
        return conv_caches, out_cache, pixel, keys, values


# -- the PixelRNN container -----------------------------------------------------------------
class PixelRNNStepper:
    """A ``models.PixelRNN`` evaluated step by step.

    Step (i, j, c): the input layer at the pixel (its earlier colour groups; the gated
    type's input layer yields only the horizontal stack, the vertical one enters through
    the row states), every pixel layer, the output layers: the parameters of colour group
    c, ``[N, P / groups]``. Hidden activations at (i, j) never depend on the last colour
    group of (i, j) (mask A), so the caches written while drawing it are final; only the
    input layer's cache (which holds the image itself) is rewritten by ``record``.
    """

    def __init__(self, model, dtype: Optional[tf.DType] = None):
        self.model = model
        self.dtype = tf.as_dtype(dtype or model.compute_dtype)
        self.groups = model.groups
        _, width, _ = model.image_shape
        self.input = ConvStep(model._layer_cls.input_masked_conv(model.input_conv), width,
                              self.dtype)
        self.layers = [layer_step(layer, width, self.dtype)
                       for layer in model.pixel_layers]
        self.row_wise = any(step.row_wise for step in self.layers)
        self.out_hidden = ConvStep(model.output_hidden, width, self.dtype)
        self.out_params = ConvStep(model.output_logits, width, self.dtype)

    def initial(self, batch) -> tuple:
        return (self.input.initial(batch), tuple(s.initial(batch) for s in self.layers),
                self.out_hidden.initial(batch), self.out_params.initial(batch))

    def _pixel(self, images: tf.Tensor, i, j) -> tf.Tensor:
        """images ``[N, H, W, C]`` in [0, 1] → the preprocessed pixel (i, j) ``[N, C]``."""
        return tf.cast(self.model.preprocess(images[:, i, j, :]), self.dtype)

    def conditions(self, labels: Optional[tf.Tensor] = None,
                   context: Optional[tf.Tensor] = None):
        """What the model's conditions are made of (``PixelRNN.condition_inputs``: class
        vectors, the context code map), computed once before the steps; each step
        projects the code at its pixel, each finished row the code of the row."""
        return self.model.condition_inputs(labels, context)

    def step(self, cache: tuple, images: tf.Tensor, pos: Position, conditions):
        """→ (cache, the step's distribution parameters ``[N, P / groups]`` float32).
        ``images`` ``[N, H, W, C]`` in [0, 1]: pixel (i, j)'s colours before group c are
        read (later ones are masked). ``conditions``: from ``self.conditions``."""
        in_cache, layer_caches, hid_cache, out_cache = cache
        model = self.model
        classes, code = conditions
        if code is not None:  # the context code at the pixel, [N, 2h]
            code = tf.gather(tf.gather(code, pos.i, axis=1), pos.j, axis=1)
        input_bias, conditions = model.slot_conditions(classes, code)  # vectors [N, width]
        in_cache, features = self.input.step(in_cache, self._pixel(images, pos.i, pos.j), pos)
        if input_bias is not None:
            features += colour_group(input_bias, self.groups, pos.c)
        state = model._layer_cls.step_state(features)
        new_caches = []
        for step, layer_cache, condition in zip(self.layers, layer_caches, conditions):
            layer_cache, state = step.step(layer_cache, state, pos, condition)
            new_caches.append(layer_cache)
        features = model._layer_cls.features(state)
        hid_cache, y = self.out_hidden.step(hid_cache, tf.nn.relu(features), pos)
        out_cache, params = self.out_params.step(out_cache, tf.nn.relu(y), pos)
        return ((in_cache, tuple(new_caches), hid_cache, out_cache),
                tf.cast(params, tf.float32))

    def record(self, cache: tuple, images: tf.Tensor, pos: Position) -> tuple:
        """Stores pixel (i, j) of ``images`` (its drawn values) in the input layer's cache
        and in the layers that read the image (``LayerStep.record``)."""
        in_cache, layer_caches, *rest = cache
        pixel = self._pixel(images, pos.i, pos.j)  # [N, C]
        in_cache = self.input.write(in_cache, pixel, pos)
        layer_caches = tuple(step.record(layer_cache, pixel, pos)
                             for step, layer_cache in zip(self.layers, layer_caches))
        return (in_cache, layer_caches, *rest)

    def finish_row(self, cache: tuple, images: tf.Tensor, row, conditions) -> tuple:
        """Row ``row`` of ``images`` ``[N, H, W, C]`` (in [0, 1]) is final: the row-wise
        layers' states for row ``row + 1``, from one pass of the network over that row (all
        columns), reading only image rows up to ``row``."""
        if not self.row_wise:
            return cache
        model = self.model
        in_cache, layer_caches, hid_cache, out_cache = cache
        kh = model.input_conv.kernel_size[0]
        x = tf.cast(model.preprocess(images), self.dtype)
        x = tf.pad(x, [[0, 0], [kh // 2, 0], [0, 0], [0, 0]])  # zero rows above the image
        n, _, width, channels = x.shape
        # Image rows row-kh//2 .. row → the input layer's features at row `row`.
        window = tf.slice(x, tf.stack([0, row, 0, 0]), [-1, kh // 2 + 1, width, channels])
        classes, code = conditions
        if code is not None:  # the context code over the row, [N, 1, W, 2h]
            code = tf.gather(code, row, axis=1)[:, None]
        # Vectors [N, width], or with a code maps [N, 1, W, width].
        input_bias, conditions = model.slot_conditions(classes, code)
        # [N, kh//2+1, W, ·] → the last row [N, 1, W, ·] (rows above were only context).
        state = tf.nest.map_structure(lambda t: t[:, -1:], model.input_state(window, input_bias))
        new_caches = []
        for step, layer_cache, condition in zip(self.layers, layer_caches, conditions):
            layer_cache, state = step.finish_row(layer_cache, state, condition)
            new_caches.append(layer_cache)
        return in_cache, tuple(new_caches), hid_cache, out_cache


# -- PixelCNN++ -----------------------------------------------------------------------------
class _TwoRowConv:
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


class _BlockStep:
    """A ``pixelcnn_pp.GatedResnet`` a row (u stream) or a position (ul stream) at a time,
    through the block's own ``hidden`` and ``gate``. Cache: (conv1's, conv2's)."""

    def __init__(self, block, width: int, dtype):
        self.block = block
        self.conv1 = _TwoRowConv(block.conv1, width, dtype)
        self.conv2 = _TwoRowConv(block.conv2, width, dtype)

    def initial(self, batch):
        return self.conv1.initial(batch), self.conv2.initial(batch)

    def row(self, cache, x_row, aux_row, labels, r):
        c1_cache, c2_cache = cache
        c1_cache = self.conv1.write_row(c1_cache, concat_elu(x_row), r)
        hidden = self.block.hidden(self.conv1.row(c1_cache, r), aux_row, training=False)
        c2_cache = self.conv2.write_row(c2_cache, hidden, r)
        return (c1_cache, c2_cache), self.block.gate(x_row, self.conv2.row(c2_cache, r), labels)

    def at(self, cache, x, aux, labels, i, j):
        c1_cache, c2_cache = cache
        c1_cache = self.conv1.write(c1_cache, concat_elu(x), i, j)
        hidden = self.block.hidden(self.conv1.at(c1_cache, i, j), aux, training=False)
        c2_cache = self.conv2.write(c2_cache, hidden, i, j)
        return (c1_cache, c2_cache), self.block.gate(x, self.conv2.at(c2_cache, i, j), labels)


class PixelCNNPPStepper:
    """A ``pixelcnn_pp.PixelCNNPlusPlus`` evaluated pixel by pixel, caching per
    resolution (Ramachandran et al. 2017 did this for PixelCNN++).

    Stage s (resolution H/2^s) advances only when its inputs are complete: its u-stream
    row i (which sees image rows < 2^s·i) at the first step of full-resolution row 2^s·i;
    its ul-stream position (i, j) (which sees the pixels before (2^s·i, 2^s·j)) at the step
    of pixel (2^s·i, 2^s·j). Down blocks feed the up blocks of the same stage within that
    step; up-sampled values are read from per-stage maps of the finished up-stage
    outputs (full-resolution (r, c) reads (r//2, c//2)). Every step ends with the
    mixture parameters of pixel (i, j), ``[N, P]``. The image is read from ``images``
    itself (the input layers run on the two rows above), so ``record`` has nothing to do.
    """

    row_wise = False  # the u streams advance inside ``step`` (at the first pixel of a row)

    def __init__(self, model, dtype: Optional[tf.DType] = None):
        self.model = model
        self.dtype = tf.as_dtype(dtype or model.compute_dtype)
        self.groups = 1
        height, width, _ = model.image_shape
        self.widths = [width // 2 ** s for s in range(3)]
        self.heights = [height // 2 ** s for s in range(3)]
        d = self.dtype

        def blocks_at(stage_blocks, s):
            return [_BlockStep(b, self.widths[s], d) for b in stage_blocks]

        self.down_u = [blocks_at(model.down_u[s], s) for s in range(3)]
        self.down_ul = [blocks_at(model.down_ul[s], s) for s in range(3)]
        self.up_u = [blocks_at(model.up_u[s], s) for s in range(3)]
        self.up_ul = [blocks_at(model.up_ul[s], s) for s in range(3)]
        self.downsample_u = [_TwoRowConv(c, self.widths[s], d)
                             for s, c in enumerate(model.downsample_u)]
        self.downsample_ul = [_TwoRowConv(c, self.widths[s], d)
                              for s, c in enumerate(model.downsample_ul)]

    def initial(self, batch) -> dict:
        f, d = self.model.filters, self.dtype

        def caches(steps):
            return [s.initial(batch) for s in steps]

        def rows(s, count):  # per-block output rows of stage s, for the ul blocks' aux
            return [tf.zeros(tf.stack([batch, self.widths[s], f]), d) for _ in range(count)]

        def stage_map(s):
            return tf.zeros(tf.stack([batch, self.heights[s], self.widths[s], f]), d)

        return {
            "down_u": [caches(self.down_u[s]) for s in range(3)],
            "down_ul": [caches(self.down_ul[s]) for s in range(3)],
            "up_u": [caches(self.up_u[s]) for s in range(3)],
            "up_ul": [caches(self.up_ul[s]) for s in range(3)],
            "downsample_u": caches(self.downsample_u),
            "downsample_ul": caches(self.downsample_ul),
            "down_u_rows": [rows(s, len(self.down_u[s])) for s in range(3)],
            "up_u_rows": [rows(s, len(self.up_u[s])) for s in range(3)],
            # Finished up-stage outputs of stages 1 and 2 (index s - 1), read up-sampled.
            "u_up_map": [stage_map(s) for s in (1, 2)],
            "ul_up_map": [stage_map(s) for s in (1, 2)],
        }

    def _two_rows(self, images, top):
        """Image rows ``top`` and ``top + 1`` of ``images`` ``[N, H, W, C]`` (in [0, 1]),
        preprocessed: ``[N, 2, W, C + 1]``, with rows above the image (``top`` < 0) zero,
        as the full pass's padding."""
        rows = top + tf.range(2)
        window = tf.gather(images, tf.maximum(rows, 0), axis=1)  # [N, 2, W, C]
        x = tf.cast(self.model.preprocess(window), self.dtype)
        return tf.where((rows >= 0)[None, :, None, None], x, tf.zeros_like(x))

    # The u streams, a row at a time.
    def _u_rows(self, cache: dict, images, r, labels) -> dict:
        """At the first pixel of row r: the u streams of every stage due at row r."""
        # u = down_shift(u_input(x)): row r is u_input's row r - 1, which reads image rows
        # r-2..r-1 (row 1 of that window); row 0 is the zero row shifted in.
        window = self._two_rows(images, r - 2)
        u = self.model.u_input(window)[:, 1:2] * tf.cast(r > 0, self.dtype)  # [N, 1, W, F]
        return self._u_stage(dict(cache), 0, u, r, labels)

    def _u_stage(self, cache, s, u, row, labels):
        """Row ``row`` of stage s (down blocks from ``u``, the deeper stages when due, the
        up blocks)."""
        skips = [u]
        down_caches, down_rows = list(cache["down_u"][s]), list(cache["down_u_rows"][s])
        for b, step in enumerate(self.down_u[s]):
            down_caches[b], u = step.row(down_caches[b], u, None, labels, row)
            down_rows[b] = u[:, 0]
            skips.append(u)
        cache["down_u"] = _replace(cache["down_u"], s, down_caches)
        cache["down_u_rows"] = _replace(cache["down_u_rows"], s, down_rows)
        if s < 2:
            conv = self.downsample_u[s]
            cache["downsample_u"] = _replace(cache["downsample_u"], s, conv.write_row(
                cache["downsample_u"][s], u, row))

            def deeper(cache):
                cache = dict(cache)
                below = conv.row(cache["downsample_u"][s], row // 2)
                return self._u_stage(cache, s + 1, below, row // 2, labels)

            cache = tf.cond(tf.equal(row % 2, 0), lambda: deeper(cache), lambda: cache)
            # Up-sampled from stage s + 1: row `row` reads its row row // 2.
            above = cache["u_up_map"][s][:, row // 2][:, None]  # [N, 1, W_{s+1}, F]
            u = tf.gather(self.model.upsample_u[s](above), row % 2, axis=1)[:, None]
        else:
            u = skips.pop()
        up_caches, up_rows = list(cache["up_u"][s]), list(cache["up_u_rows"][s])
        for b, step in enumerate(self.up_u[s]):
            up_caches[b], u = step.row(up_caches[b], u, skips.pop(), labels, row)
            up_rows[b] = u[:, 0]
        cache["up_u"] = _replace(cache["up_u"], s, up_caches)
        cache["up_u_rows"] = _replace(cache["up_u_rows"], s, up_rows)
        if s > 0:
            cache["u_up_map"] = _replace(cache["u_up_map"], s - 1, _set_row(
                cache["u_up_map"][s - 1], u[:, 0], row))
        return cache

    # The ul streams, a position at a time.
    def _ul_stage(self, cache, s, ul, i, j, labels):
        """Position (i, j) of stage s; returns (cache, the up blocks' output ``[N, F]``)."""
        skips = [ul]
        down_caches = list(cache["down_ul"][s])
        for b, step in enumerate(self.down_ul[s]):
            aux = tf.gather(cache["down_u_rows"][s][b], j, axis=1)  # [N, F]
            down_caches[b], ul = step.at(down_caches[b], ul, aux, labels, i, j)
            skips.append(ul)
        cache = dict(cache, down_ul=_replace(cache["down_ul"], s, down_caches))
        if s < 2:
            conv = self.downsample_ul[s]
            cache["downsample_ul"] = _replace(cache["downsample_ul"], s, conv.write(
                cache["downsample_ul"][s], ul, i, j))

            def deeper(cache):
                below = conv.at(cache["downsample_ul"][s], i // 2, j // 2)
                cache, out = self._ul_stage(dict(cache), s + 1, below, i // 2, j // 2, labels)
                return dict(cache, ul_up_map=_replace(cache["ul_up_map"], s, _set_pixel(
                    cache["ul_up_map"][s], out, i // 2, j // 2)))

            due = tf.equal(i % 2, 0) & tf.equal(j % 2, 0)
            cache = tf.cond(due, lambda: deeper(cache), lambda: cache)
            # Up-sampled from stage s + 1: (i, j) reads (i // 2, j // 2), kernel tap
            # (i % 2, j % 2).
            above = cache["ul_up_map"][s][:, i // 2, j // 2][:, None, None]  # [N,1,1,F]
            taps = self.model.upsample_ul[s](above)  # [N, 2, 2, F]
            ul = tf.gather(tf.gather(taps, i % 2, axis=1), j % 2, axis=1)  # [N, F]
        else:
            ul = skips.pop()
        up_caches = list(cache["up_ul"][s])
        for b, step in enumerate(self.up_ul[s]):
            aux = tf.concat([tf.gather(cache["up_u_rows"][s][b], j, axis=1), skips.pop()], -1)
            up_caches[b], ul = step.at(up_caches[b], ul, aux, labels, i, j)
        return dict(cache, up_ul=_replace(cache["up_ul"], s, up_caches)), ul

    def conditions(self, labels: Optional[tf.Tensor] = None, context=None):
        """The class ids (int32 ``[N]``) or None; PixelCNN++ takes no context images."""
        if context is not None:
            raise ValueError("pixelcnn_pp takes no context images")
        return None if labels is None else tf.cast(labels, tf.int32)

    def step(self, cache: dict, images: tf.Tensor, pos: Position,
             labels: Optional[tf.Tensor] = None):
        """→ (cache, the distribution parameters of pixel (i, j) ``[N, P]`` float32: the
        mixture's, or the 256 logits of a grey pixel).
        ``labels``: from ``self.conditions``."""
        model = self.model
        i, j = pos.i, pos.j
        cache = tf.cond(tf.equal(j, 0), lambda: self._u_rows(cache, images, i, labels),
                        lambda: cache)
        # ul = down_shift(above(x)) + right_shift(left(x)) at (i, j): above's output at
        # (i-1, j) (image row i-1) and left's at (i, j-1) (image rows i-1..i), computed on
        # image rows i-1..i; the shifted-in zero row and column count as zeros.
        window = self._two_rows(images, i - 1)
        above = tf.gather(model.ul_input_above(window)[:, 0], j, axis=1)  # [N, F]
        left = tf.gather(model.ul_input_left(window)[:, 1], tf.maximum(j - 1, 0), axis=1)
        ul = above * tf.cast(i > 0, self.dtype) + left * tf.cast(j > 0, self.dtype)
        cache, ul = self._ul_stage(cache, 0, ul, i, j, labels)
        params = model.output_layer(tf.nn.elu(ul))
        return cache, tf.cast(params, tf.float32)

    def record(self, cache: dict, images: tf.Tensor, pos: Position) -> dict:
        return cache  # the image is read from ``images`` at every step

    def finish_row(self, cache: dict, images: tf.Tensor, row, conditions) -> dict:
        return cache  # the u streams advance in ``step``


def _replace(items: list, index: int, value) -> list:
    """A copy of ``items`` with ``items[index] = value``."""
    items = list(items)
    items[index] = value
    return items


def _set_row(stage_map: tf.Tensor, row_values: tf.Tensor, row) -> tf.Tensor:
    """``stage_map`` ``[N, H, W, F]`` with row ``row`` set to ``row_values`` ``[N, W, F]``."""
    here = tf.equal(tf.range(stage_map.shape[1]), row)[None, :, None, None]
    return tf.where(here, row_values[:, None], stage_map)


def _set_pixel(stage_map: tf.Tensor, values: tf.Tensor, i, j) -> tf.Tensor:
    """``stage_map`` ``[N, H, W, F]`` with (i, j) set to ``values`` ``[N, F]``."""
    n = tf.shape(values)[0]
    where = tf.stack([tf.range(n), tf.fill([n], i), tf.fill([n], j)], axis=1)
    return tf.tensor_scatter_nd_update(stage_map, where, values)


MODEL_STEPPERS: Dict[type, Callable] = {PixelRNN: PixelRNNStepper,
                                         PixelCNNPlusPlus: PixelCNNPPStepper}


def supports(model) -> bool:
    """Whether ``model`` can be evaluated incrementally (its type, and for the PixelRNN
    container every pixel layer's type, has steps here; a multi-scale model: both of its
    networks, each walked on its own)."""
    if isinstance(model, MultiScalePixelRNN):
        return supports(model.small) and supports(model.large)
    if type(model) not in MODEL_STEPPERS:
        return False
    return all(type(layer) in LAYER_STEPS for layer in getattr(model, "pixel_layers", ()))


def stepper(model, dtype: Optional[tf.DType] = None):
    """The model's incremental evaluator (``initial``, ``step``, ``record``,
    ``finish_row``), computing in ``dtype`` (default: the model's compute dtype)."""
    if not supports(model):
        raise ValueError(f"model type {getattr(model, 'layer_type', type(model).__name__)!r} "
                         f"has no incremental evaluation")
    return MODEL_STEPPERS[type(model)](model, dtype)


def step_position(k, width: int, groups: int) -> Position:
    """Step index k (raster order over pixels, then colour groups) → its Position."""
    return Position(k // (width * groups), (k // groups) % width, k % groups)


def walk(model, images: tf.Tensor, labels: Optional[tf.Tensor], fill: Callable,
         context: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Visits every step of ``model`` in raster order with ``stepper(model)`` inside a
    ``tf.while_loop`` (call it inside a ``tf.function``) and returns the final images.

    At step (i, j, c) the layers are advanced to the position (``finish_row`` once per
    completed row for row-wise layers, then ``step``), ``fill(params, images, pos)`` writes
    the step's sub-pixels into ``images`` (int32 ``[N, H, W, C]``; the sampler draws them,
    the codec codes them) and ``record`` stores them where the layers reading the image
    need them. ``labels``: int32 ``[N]`` for class-conditional models, else None;
    ``context``: the small image ``[N, H/f, W/f, C]`` in [0, 1] for the conditional
    network of a multi-scale model, else None. Their conditions are computed once, before
    the loop.
    """
    height, width, _ = model.image_shape
    groups = model.distribution.groups
    evaluator = stepper(model)
    conditions = evaluator.conditions(labels, context)

    def body(k, images, cache):
        pos = step_position(k, width, groups)
        inputs = tf.cast(images, tf.float32) / 255.0  # [N, H, W, C] in [0, 1]
        if evaluator.row_wise:  # row-wise layers: update their row states at each new row
            cache = tf.cond((pos.i > 0) & tf.equal(pos.j, 0) & tf.equal(pos.c, 0),
                            lambda: evaluator.finish_row(cache, inputs, pos.i - 1, conditions),
                            lambda: cache)
        cache, params = evaluator.step(cache, inputs, pos, conditions)
        images = fill(params, images, pos)
        # The layers reading the image get the pixel with the values just written.
        cache = evaluator.record(cache, tf.cast(images, tf.float32) / 255.0, pos)
        return k + 1, images, cache

    _, images, _ = tf.while_loop(lambda k, *_: k < height * width * groups, body,
                                 [tf.constant(0), images,
                                  evaluator.initial(tf.shape(images)[0])])
    return images
