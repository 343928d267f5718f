"""The Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders"): ``model.type: gated_pixelcnn``, its two stacks and their cached step.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from pixelcnn_tf.models.base import LayerStep, PixelLayer
from pixelcnn_tf.nn.layers import (Conv2D, MaskedConv2D, at_position, colour_group, gate,
                                   shift_down, split_colour_groups)


def _vertical_conv(features_out: int, k: int, init_scale: float, name: str,
                   dilation: int = 1) -> Conv2D:
    """An unmasked (k//2+1) x k convolution whose output at row i reads rows i-k//2..i
    (all columns, k//2 padding at the sides): the gated PixelCNN's vertical stack. With
    ``dilation`` d: rows i-d·(k//2), .., i-d, i and columns j-d·(k//2) .. j+d·(k//2),
    every d-th."""
    p = dilation * (k // 2)
    return Conv2D(features_out, (k // 2 + 1, k), (p, 0, p, p), init_scale=init_scale,
                  dilation=dilation, name=name)


class GatedInput(tf.Module):
    """The first layer of the two stacks of the gated PixelCNN, from the image.

    vertical:   an unmasked (k//2+1) x k convolution over image rows i-k//2..i (every
                column and colour of the current row too: the vertical stack is only ever
                read one row lower);
    horizontal: a 1 x k mask-A convolution over the current row left of the pixel (and
                the earlier colours of the pixel itself).
    images ``[B, H, W, C]`` → (vertical, horizontal), both ``[B, H, W, 2h]``.
    """

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int,
                 name: Optional[str] = None):
        super().__init__(name=name)
        k = kernel_size
        self.kernel_size = (k, k)
        with self.name_scope:
            self.vertical = _vertical_conv(2 * hidden_dim, k, 2.0, "vertical")
            self.horizontal = MaskedConv2D(2 * hidden_dim, (1, k), "A", n_colors,
                                           name="horizontal")

    def __call__(self, x: tf.Tensor):
        return self.vertical(x), self.horizontal(x)


class GatedPixelCNNBlock(PixelLayer):
    """The gated block of "Conditional Image Generation with PixelCNN Decoders" (van den
    Oord et al. 2016), with its two stacks; the state is ``(vertical, horizontal)``, both
    ``[B, H, W, 2h]``, starting from ``GatedInput`` (an unmasked (k//2+1) x k convolution
    of the image for the vertical stack, a 1 x k mask-A one for the horizontal stack).

    vertical:   v' = gate(V v),   V a (k//2+1) x k convolution over rows i-k//2..i (all
                columns of the current row too; the vertical stack is only read one row
                lower, so that is allowed).
    horizontal: h' = h + 1x1(gate(H h + 1x1(shift_down(V v)))),   H a 1 x k mask-B
                convolution over the current row up to the current pixel (colour groups).
    Receptive field of the output at (i, j) after L blocks, with R = K//2 + L·(k//2) (K the
    input kernel): every pixel of rows i-1-R..i-1 in columns j-R..j+R, the pixels j-R..j-1
    of row i and the earlier colours of (i, j); nothing else (tested exactly). Gates are
    tanh·sigmoid per colour group; a class vector (``condition`` ``[B, 8h]``: 4h per
    stack) enters both halves of both gates through separate learned projections.
    Masks are applied inside ``__call__`` (not as constraints after optimizer steps).
    With ``dilation`` d both stacks' convolutions are dilated (taps d pixels apart): the
    vertical stack reads rows i-d·(k//2)..i, every d-th, the horizontal one the pixels
    j-d·(k//2)..j of row i, every d-th; the stacks stay causal the same way.
    """

    type_name = "gated_pixelcnn"
    condition_input = False  # conditioning enters every gate instead
    dilatable = True

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int = 3,
                 dilation: int = 1, name: Optional[str] = None):
        super().__init__(hidden_dim, n_colors, kernel_size, dilation, name=name)
        width, k = 2 * hidden_dim, kernel_size
        with self.name_scope:
            self.vertical = _vertical_conv(2 * width, k, 1.0, "vertical", dilation)
            self.vertical_to_horizontal = Conv2D(2 * width, (1, 1), name="v_to_h")
            self.horizontal = MaskedConv2D(2 * width, (1, k), "B", n_colors, init_scale=1.0,
                                           dilation=dilation, name="horizontal")
            self.horizontal_out = MaskedConv2D(width, 1, "B", n_colors, name="h_out")

    @staticmethod
    def condition_width(hidden_dim: int) -> int:
        return 8 * hidden_dim  # tanh and sigmoid halves (2h each) of both stacks

    @staticmethod
    def make_input(hidden_dim: int, n_colors: int, kernel_size: int) -> tf.Module:
        return GatedInput(hidden_dim, n_colors, kernel_size, name="input_conv")

    @staticmethod
    def features(state) -> tf.Tensor:
        return state[1]

    @staticmethod
    def input_masked_conv(input_layer) -> MaskedConv2D:
        return input_layer.horizontal

    @staticmethod
    def step_state(features):
        return None, features  # the vertical stack comes from the row states

    @staticmethod
    def split_conditions(condition: Optional[tf.Tensor], n_colors: int):
        """``[B, 8h]`` (colour groups of [vertical 4h/n | horizontal 4h/n]) → the vertical
        and the horizontal stack's gate projections, ``[B, 4h]`` each."""
        if condition is None:
            return None, None
        return split_colour_groups(condition, n_colors, 2)

    def __call__(self, state, condition: Optional[tf.Tensor] = None):
        v, h = state
        v_cond, h_cond = self.split_conditions(condition, self.n_colors)
        v_pre = self.vertical(v)  # [B, H, W, 4h]: rows up to the current one
        # The horizontal stack at row i sees the vertical stack of row i-1 only.
        h_pre = self.horizontal(h) + self.vertical_to_horizontal(shift_down(v_pre))
        v_new = gate(v_pre, self.n_colors, v_cond)  # [B, H, W, 2h]
        h_new = h + self.horizontal_out(gate(h_pre, self.n_colors, h_cond))
        return v_new, h_new


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
        out_cache, y = self.horizontal_out.step(out_cache, gate(h_pre, 1, h_cond),
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
        v_new = gate(v_pre, self.groups, v_cond)  # [N, 1, W, 2h]
        from_above = layer.vertical_to_horizontal(v_pre)[:, 0]
        return (h_cache, out_cache, window, from_above), (v_new, None)


GatedPixelCNNBlock.Step = GatedStep
LAYER = GatedPixelCNNBlock
