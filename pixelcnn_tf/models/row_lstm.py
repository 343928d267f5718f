"""The Row LSTM of "Pixel Recurrent Neural Networks" (van den Oord et al. 2016):
``model.type: row_lstm``, and its cached step."""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from pixelcnn_tf.models.recurrent import RecurrentPixelLayer, RecurrentStep, lstm_update
from pixelcnn_tf.nn.layers import Conv2D, MaskedConv2D, at_position


class RowLSTMBlock(RecurrentPixelLayer):
    """The Row LSTM of "Pixel Recurrent Neural Networks" (van den Oord et al. 2016).

    Row by row (``tf.scan`` over rows): gates(i) = K_is ⊛ x(i) + K_ss ⊛ h(i-1), where
    K_is is a 1 x k mask-B convolution of the current row (pixels up to the current one,
    colour groups) and K_ss a 1 x k convolution of the previous row's hidden state with
    zero padding at the row's ends only (it never reads the row below). Each state sees a
    triangle of rows above widening by k//2 pixels a row. As in the paper, K_is reads the
    stream itself (no ReLU before it).
    """

    type_name = "row_lstm"

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int = 3,
                 dilation: int = 1, name: Optional[str] = None):
        super().__init__(hidden_dim, n_colors, kernel_size, dilation, name=name)
        k = kernel_size
        with self.name_scope:
            self.input_to_state = MaskedConv2D(4 * hidden_dim, (1, k), "B", n_colors,
                                               init_scale=1.0, name="input_to_state")
            self.state_to_state = Conv2D(4 * hidden_dim, (1, k), (0, 0, k // 2, k // 2),
                                         name="state_to_state")
            self.output = MaskedConv2D(2 * hidden_dim, 1, "B", n_colors, name="output")

    def __call__(self, state: tf.Tensor, condition: Optional[tf.Tensor] = None) -> tf.Tensor:
        x_gates = self.input_to_state(state)  # [B, H, W, 4h]
        batch, width = tf.shape(state)[0], state.shape[2]
        self.state_to_state(tf.zeros([1, 1, width, self.hidden_dim]))  # create variables

        def row_step(carry, gates_row):  # gates_row [B, W, 4h]
            hidden, cell = carry  # [B, W, h] each
            recurrent = self.state_to_state(hidden[:, None])[:, 0]  # [B, 1, W, 4h] → [B, W, 4h]
            return lstm_update(gates_row + recurrent, cell, self.n_colors)

        zeros = tf.zeros([batch, width, self.hidden_dim], x_gates.dtype)
        hidden, _ = tf.scan(row_step, tf.transpose(x_gates, [1, 0, 2, 3]),  # [H, B, W, 4h]
                            initializer=(zeros, zeros))
        hidden = tf.transpose(hidden, [1, 0, 2, 3])  # [H, B, W, h] → [B, H, W, h]
        return self.residual(state, hidden, condition)


class RowLSTMStep(RecurrentStep):
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
        hidden, _ = lstm_update(gates, at_position(cell, pos, self.groups), 1)
        out_cache, y = self.residual(out_cache, x, hidden, pos, condition)
        return (in_cache, out_cache, recurrent, cell), y

    def finish_row(self, cache, x_row, condition):
        """The LSTM over row r (all columns) from the row state of row r - 1."""
        in_cache, out_cache, recurrent, cell = cache
        layer = self.layer
        gates = layer.input_to_state(x_row)[:, 0] + recurrent  # [N, W, 4h]
        hidden, cell = lstm_update(gates, cell, self.groups)  # [N, W, h] each
        out = layer.residual(x_row, hidden[:, None], condition)  # [N, 1, W, 2h]
        return (in_cache, out_cache, layer.state_to_state(hidden[:, None])[:, 0], cell), out


RowLSTMBlock.Step = RowLSTMStep
LAYER = RowLSTMBlock
