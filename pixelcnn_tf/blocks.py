"""Pixel layers: the pluggable middle of the PixelRNN-style container.

A pixel layer maps a *state* to a state of the same structure. The container turns the
first masked convolution's features into the initial state with ``initial_state`` and
reads the features back with ``features`` after the last layer, so a layer type whose
state is not a single tensor (e.g. the two stacks of a gated PixelCNN) plugs in
without changing the container.

New types register themselves with :func:`register_pixel_layer`.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Type

import tensorflow as tf

from pixelcnn_tf.layers import (Conv2D, MaskedConv2D, check_dilation, per_image, shift_down,
                                split_colour_groups)


class PixelLayer(tf.Module):
    """Base class of pixel layers. Subclasses take ``(hidden_dim, n_colors, kernel_size,
    dilation)``; ``n_colors`` is the number of colour groups of their masks (1 for models
    whose output distribution predicts a whole pixel at once). Types whose spatial
    convolutions can be dilated set ``dilatable``; the others refuse ``dilation != 1``.

    A layer type is sampled with the fast sampler once incremental.py has its
    ``LayerStep`` (``@steps_for``); otherwise with the naive one.
    """
    # Class conditioning: the container adds a learned class bias to the input layer's
    # features when ``condition_input`` and passes each layer a per-class vector of
    # ``condition_width(h)`` values (``condition``).
    condition_input = True
    dilatable = False

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int = 3,
                 dilation: int = 1, name: Optional[str] = None):
        super().__init__(name=name)
        self.hidden_dim = hidden_dim
        self.n_colors = n_colors
        self.kernel_size = kernel_size
        self.dilation = check_dilation(dilation)
        if self.dilation != 1 and not self.dilatable:
            raise ValueError(f"{type(self).__name__} has no dilated form (dilation="
                             f"{dilation}); dilations apply to the "
                             f"{' and '.join(dilatable_types())} types")

    @staticmethod
    def condition_width(hidden_dim: int) -> int:
        return 2 * hidden_dim

    @staticmethod
    def make_input(hidden_dim: int, n_colors: int, kernel_size: int) -> tf.Module:
        """The input layer: images ``[B, H, W, C]`` (preprocessed) → the features that
        ``initial_state`` turns into the first state. Default: a kxk mask-A convolution
        (C → 2h)."""
        return MaskedConv2D(2 * hidden_dim, kernel_size, "A", n_colors, name="input_conv")

    @staticmethod
    def initial_state(features):
        """The input layer's output (``[B, H, W, 2h]`` by default) → this type's state."""
        return features

    @staticmethod
    def features(state) -> tf.Tensor:
        """This type's state → features ``[B, H, W, 2h]`` for the output layers."""
        return state

    # The fast sampler (incremental.py) evaluates the input layer's masked convolution
    # at one position and turns its output there into this type's state at the step.
    @staticmethod
    def input_masked_conv(input_layer: tf.Module) -> MaskedConv2D:
        """The masked convolution of the image inside ``make_input``'s layer."""
        return input_layer

    @staticmethod
    def step_state(features):
        """That convolution's output at one position → the state at the step."""
        return features

    def __call__(self, state, condition: Optional[tf.Tensor] = None):
        raise NotImplementedError


PIXEL_LAYERS: Dict[str, Type[PixelLayer]] = {}


def register_pixel_layer(name: str) -> Callable[[Type[PixelLayer]], Type[PixelLayer]]:
    """Class decorator: makes a pixel-layer type selectable as ``model.type: name``."""

    def register(cls: Type[PixelLayer]) -> Type[PixelLayer]:
        if name in PIXEL_LAYERS:
            raise ValueError(f"pixel layer type {name!r} is already registered")
        PIXEL_LAYERS[name] = cls
        return cls

    return register


def dilatable_types() -> list:
    """The registered ``model.type`` names whose layers take a dilation rate."""
    return sorted(name for name, cls in PIXEL_LAYERS.items() if cls.dilatable)


def get_pixel_layer(name: str) -> Type[PixelLayer]:
    try:
        return PIXEL_LAYERS[name]
    except KeyError:
        raise ValueError(f"unknown pixel layer type {name!r}; allowed: "
                         f"{', '.join(sorted(PIXEL_LAYERS))}") from None


@register_pixel_layer("pixelcnn")
class PixelCNNBlock(PixelLayer):
    """The PixelCNN residual block (van den Oord et al. 2016, figure 5).

    ``x [B, H, W, 2h]`` → ReLU → 1x1 (2h→h) → ReLU → kxk (h→h) → ReLU → 1x1 (h→2h),
    all mask B, added back to ``x``. ``condition`` (a class bias ``[B, 2h]``) is added
    to the block's output when given. With ``dilation`` d the kxk convolution is dilated.
    """

    dilatable = True

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int = 3,
                 dilation: int = 1, name: Optional[str] = None):
        super().__init__(hidden_dim, n_colors, kernel_size, dilation, name=name)
        with self.name_scope:
            self.reduce = MaskedConv2D(hidden_dim, 1, "B", n_colors, name="reduce_1x1")
            self.conv = MaskedConv2D(hidden_dim, kernel_size, "B", n_colors,
                                     dilation=dilation,
                                     name=f"conv_{kernel_size}x{kernel_size}")
            self.expand = MaskedConv2D(2 * hidden_dim, 1, "B", n_colors, name="expand_1x1")

    def __call__(self, state: tf.Tensor, condition: Optional[tf.Tensor] = None) -> tf.Tensor:
        y = self.reduce(tf.nn.relu(state))  # [B, H, W, h]
        y = self.conv(tf.nn.relu(y))  # [B, H, W, h]
        y = self.expand(tf.nn.relu(y))  # [B, H, W, 2h]
        if condition is not None:
            y += per_image(condition, y)  # [B, 2h] broadcast over positions
        return state + y


def gate(x: tf.Tensor, n_colors: int, condition: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Gated activation tanh(a) · sigmoid(b), a and b taken per colour group:
    ``[..., 2·D]`` → ``[..., D]``. ``condition`` ``[B, 2·D]`` is added before the split, so
    each half has its own class projection (equation 4 of the gated PixelCNN paper)."""
    if condition is not None:
        x += per_image(condition, x)
    a, b = split_colour_groups(x, n_colors, 2)
    return tf.tanh(a) * tf.sigmoid(b)


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


@register_pixel_layer("gated_pixelcnn")
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


def lstm_update(gates: tf.Tensor, cell: tf.Tensor, n_colors: int):
    """LSTM cell update from pre-activations ``[..., 4·D]`` (i, f, o, g per colour group)
    and the previous cell ``[..., D]`` → (hidden, cell), both ``[..., D]``.

    i, f, o are sigmoid gates and g, the candidate, is tanh (not sigmoid).
    """
    i, f, o, g = split_colour_groups(gates, n_colors, 4)
    cell = tf.sigmoid(f) * cell + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(cell), cell


class _RecurrentPixelLayer(PixelLayer):
    """Shared parts of the PixelRNN layers: an h-dimensional LSTM state, gates from a
    masked input-to-state convolution (2h → 4h) and a state-to-state convolution, and a
    residual 1x1 mask-B convolution (h → 2h) back into the stream."""

    def residual(self, state: tf.Tensor, hidden: tf.Tensor,
                  condition: Optional[tf.Tensor]) -> tf.Tensor:
        y = self.output(hidden)  # [B, H, W, 2h]
        if condition is not None:
            y += per_image(condition, y)
        return state + y


@register_pixel_layer("row_lstm")
class RowLSTMBlock(_RecurrentPixelLayer):
    """The Row LSTM of "Pixel Recurrent Neural Networks" (van den Oord et al. 2016).

    Row by row (``tf.scan`` over rows): gates(i) = K_is ⊛ x(i) + K_ss ⊛ h(i-1), where
    K_is is a 1 x k mask-B convolution of the current row (pixels up to the current one,
    colour groups) and K_ss a 1 x k convolution of the previous row's hidden state with
    zero padding at the row's ends only (it never reads the row below). Each state sees a
    triangle of rows above widening by k//2 pixels a row. As in the paper, K_is reads the
    stream itself (no ReLU before it).
    """

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


def skew(x: tf.Tensor) -> tf.Tensor:
    """``[B, H, W, C]`` → ``[B, H, W + H - 1, C]`` with row i moved right by i, so that
    each diagonal of the image becomes a column."""
    height = x.shape[1]
    rows = [tf.pad(x[:, i], [[0, 0], [i, height - 1 - i], [0, 0]]) for i in range(height)]
    return tf.stack(rows, axis=1)


def unskew(x: tf.Tensor, width: int) -> tf.Tensor:
    """Inverse of ``skew``: ``[B, H, W + H - 1, C]`` → ``[B, H, W, C]``."""
    return tf.stack([x[:, i, i:i + width] for i in range(x.shape[1])], axis=1)


@register_pixel_layer("diagonal_bilstm")
class DiagonalBiLSTMBlock(_RecurrentPixelLayer):
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
