"""What the two PixelRNN LSTM layers (row_lstm.py, diagonal_bilstm.py) share: the LSTM
cell update, the residual output convolution, and its cached step."""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from pixelcnn_tf.models.base import LayerStep, PixelLayer
from pixelcnn_tf.nn.layers import colour_group, per_image, split_colour_groups


def lstm_update(gates: tf.Tensor, cell: tf.Tensor, n_colors: int):
    """LSTM cell update from pre-activations ``[..., 4·D]`` (i, f, o, g per colour group)
    and the previous cell ``[..., D]`` → (hidden, cell), both ``[..., D]``.

    i, f, o are sigmoid gates and g, the candidate, is tanh (not sigmoid).
    """
    i, f, o, g = split_colour_groups(gates, n_colors, 4)
    cell = tf.sigmoid(f) * cell + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(cell), cell


class RecurrentPixelLayer(PixelLayer):
    """Shared parts of the PixelRNN layers: an h-dimensional LSTM state, gates from a
    masked input-to-state convolution (2h → 4h) and a state-to-state convolution, and a
    residual 1x1 mask-B convolution (h → 2h) back into the stream."""

    def residual(self, state: tf.Tensor, hidden: tf.Tensor,
                  condition: Optional[tf.Tensor]) -> tf.Tensor:
        y = self.output(hidden)  # [B, H, W, 2h]
        if condition is not None:
            y += per_image(condition, y)
        return state + y


class RecurrentStep(LayerStep):
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
