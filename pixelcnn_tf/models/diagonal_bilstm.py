"""The Diagonal BiLSTM of "Pixel Recurrent Neural Networks" (van den Oord et al. 2016):
``model.type: diagonal_bilstm``, and its cached step."""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from pixelcnn_tf.models.recurrent import RecurrentPixelLayer, RecurrentStep, lstm_update
from pixelcnn_tf.nn.layers import (Conv2D, MaskedConv2D, at_position, colour_group, record_at,
                                   shift_down)


def skew(x: tf.Tensor) -> tf.Tensor:
    """``[B, H, W, C]`` → ``[B, H, W + H - 1, C]`` with row i moved right by i, so that
    each diagonal of the image becomes a column."""
    height = x.shape[1]
    rows = [tf.pad(x[:, i], [[0, 0], [i, height - 1 - i], [0, 0]]) for i in range(height)]
    return tf.stack(rows, axis=1)


def unskew(x: tf.Tensor, width: int) -> tf.Tensor:
    """Inverse of ``skew``: ``[B, H, W + H - 1, C]`` → ``[B, H, W, C]``."""
    return tf.stack([x[:, i, i:i + width] for i in range(x.shape[1])], axis=1)


class DiagonalBiLSTMBlock(RecurrentPixelLayer):
    """The Diagonal BiLSTM of "Pixel Recurrent Neural Networks".

    Two directions, each an LSTM along the image's diagonals computed on the skewed map
    (``tf.scan`` over its columns): gates = K_is ⊛ x + K_ss ⊛ h_prev, where K_is is a 1x1
    mask-B convolution and K_ss a 2x1 convolution of the previous column (the states of
    (i, j-1) and (i-1, j)). The right-to-left direction runs on the mirrored image; its
    whole output is moved down one row before the two are added, so a position sees only
    rows above from it. From (i, j), together with the input convolution (kernel K), they
    reach every pixel of rows i-2 and above, every pixel left of (i, j) in row i and row
    i-1 but its last pixel (i-1, W-1), which is seen only when j >= W-1-K//2 (through the
    input convolution; the paper's design has the same gap). No blind spot otherwise
    (tested exactly). As in the paper, the input-to-state convolution reads the stream
    itself (no ReLU before it).
    """

    type_name = "diagonal_bilstm"

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int = 3,
                 dilation: int = 1, name: Optional[str] = None):
        super().__init__(hidden_dim, n_colors, kernel_size, dilation, name=name)
        with self.name_scope:
            self.input_to_state = [
                MaskedConv2D(4 * hidden_dim, 1, "B", n_colors, init_scale=1.0,
                             name=f"input_to_state_{d}") for d in ("forward", "backward")]
            self.state_to_state = [
                Conv2D(4 * hidden_dim, (2, 1), (1, 0, 0, 0), name=f"state_to_state_{d}")
                for d in ("forward", "backward")]
            self.output = MaskedConv2D(2 * hidden_dim, 1, "B", n_colors, name="output")

    def _directions(self, x: tf.Tensor, mirrored: tf.Tensor):
        """Both left-to-right diagonal LSTMs in one ``tf.scan``: the forward one on ``x``
        and the backward one on the mirrored ``mirrored`` (each ``[B, H, W, 2h]``) →
        their hidden states ``[B, H, W, h]`` (the backward one still mirrored)."""
        height, width, d = x.shape[1], x.shape[2], self.hidden_dim
        gates = tf.stack([skew(self.input_to_state[0](x)),
                          skew(self.input_to_state[1](mirrored))])  # [2, B, H, W', 4h]
        for conv in self.state_to_state:
            conv(tf.zeros([1, height, 1, d]))  # create variables
        # Kernels [2 (direction), 2 (tap: row above, same row), h, 4h], biases [2, 1, 1, 4h].
        kernels = tf.cast(tf.stack([conv.kernel[:, 0] for conv in self.state_to_state]),
                          gates.dtype)
        biases = tf.cast(tf.stack([conv.bias for conv in self.state_to_state]),
                         gates.dtype)[:, None, None]

        def column_step(carry, inputs):
            hidden, cell = carry  # [2, B, H, h]: the previous column
            gates_col, inside = inputs  # [2, B, H, 4h], [H, 1]
            above = tf.pad(hidden, [[0, 0], [0, 0], [1, 0], [0, 0]])[:, :, :-1]  # row i-1
            recurrent = (tf.einsum("dbhc,dco->dbho", above, kernels[:, 0])
                         + tf.einsum("dbhc,dco->dbho", hidden, kernels[:, 1]) + biases)
            hidden, cell = lstm_update(gates_col + recurrent, cell, self.n_colors)
            return hidden * inside, cell * inside  # states off the image stay zero

        # inside[s, i]: skewed column s of row i is a pixel (0 <= s - i < W), not padding.
        offset = tf.range(width + height - 1)[:, None] - tf.range(height)[None, :]
        inside = tf.cast((offset >= 0) & (offset < width), gates.dtype)[..., None]
        zeros = tf.zeros([2, tf.shape(x)[0], height, d], gates.dtype)
        hidden, _ = tf.scan(column_step, (tf.transpose(gates, [3, 0, 1, 2, 4]), inside),
                            initializer=(zeros, zeros))  # over [W', 2, B, H, 4h]
        hidden = tf.transpose(hidden, [1, 2, 3, 0, 4])  # [W', 2, B, H, h] → [2, B, H, W', h]
        return unskew(hidden[0], width), unskew(hidden[1], width)

    def __call__(self, state: tf.Tensor, condition: Optional[tf.Tensor] = None) -> tf.Tensor:
        forward, backward = self._directions(state, tf.reverse(state, axis=[2]))
        backward = tf.reverse(backward, axis=[2])
        hidden = forward + shift_down(backward)  # the right-to-left part: rows above only
        return self.residual(state, hidden, condition)

    def recurrence(self, direction: int, dtype: tf.DType):
        """State-to-state weights of one direction: kernel taps for the row above and for
        the previous pixel of the row ``[h, 4h]`` each, and the bias ``[4h]``."""
        conv = self.state_to_state[direction]
        kernel = tf.cast(conv.kernel[:, 0], dtype)  # [2, 1, h, 4h] → [2, h, 4h]
        return kernel[0], kernel[1], tf.cast(conv.bias, dtype)


class DiagonalBiLSTMStep(RecurrentStep):
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
        hidden, cell = lstm_update(gates, colour_group(left_c, n, pos.c), 1)
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
                return lstm_update(
                    gates_col + from_above + tf.matmul(h_prev, side) + bias, c_prev,
                    self.groups)

            zeros = tf.zeros_like(above[:, 0])
            hidden, _ = tf.scan(column_step, inputs, initializer=(zeros, zeros))
            rows.append(tf.transpose(order(hidden), [1, 0, 2]))  # [W, N, h] → [N, W, h]
        forward, backward = rows
        out = layer.residual(x_row, (forward + above_b)[:, None], condition)
        zeros = tf.zeros_like(forward)
        return (in_cache, out_cache, forward, backward, zeros, zeros), out


DiagonalBiLSTMBlock.Step = DiagonalBiLSTMStep
LAYER = DiagonalBiLSTMBlock
