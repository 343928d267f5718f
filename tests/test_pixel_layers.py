"""Pixel layers against numpy references, and their receptive fields."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from pixelcnn_tf.models import build_model
from pixelcnn_tf.models.diagonal_bilstm import DiagonalBiLSTMBlock, skew, unskew
from pixelcnn_tf.models.gated_pixelcnn import GatedPixelCNNBlock
from pixelcnn_tf.models.pixel_rnn import PixelRNN
from pixelcnn_tf.models.pixelcnn import PixelCNNBlock
from pixelcnn_tf.models.row_lstm import RowLSTMBlock
from pixelcnn_tf.nn.masks import get_mask
from helpers import numpy_masked_conv


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def relu(x):
    return np.maximum(x, 0)


def masked(conv, x):
    """numpy reference of a MaskedConv2D call."""
    mask = get_mask(conv.kernel_size, x.shape[-1], conv.features_out, conv.mode, conv.n_colors)
    return numpy_masked_conv(x, conv.kernel.numpy(), conv.bias.numpy(), mask)


def groups(x, n, parts):
    """[..., n·parts·d] → parts arrays [..., n·d] (colour-group-wise split)."""
    d = x.shape[-1] // (n * parts)
    y = x.reshape(*x.shape[:-1], n, parts, d)
    return [y[..., p, :].reshape(*x.shape[:-1], n * d) for p in range(parts)]


def lstm(gates, cell, n):
    i, f, o, g = groups(gates, n, 4)
    cell = sigmoid(f) * cell + sigmoid(i) * np.tanh(g)  # g is tanh, not sigmoid
    return sigmoid(o) * np.tanh(cell), cell


def randomise(block):
    for v in block.trainable_variables:
        v.assign(tf.random.normal(v.shape, stddev=0.4))


@pytest.fixture
def x(rng):
    return rng.normal(size=(2, 4, 5, 6)).astype(np.float32)  # 2h = 6, h = 3


def test_pixelcnn_block_matches_numpy(x):
    block = PixelCNNBlock(3, 3)
    block(x)
    randomise(block)
    y = masked(block.reduce, relu(x))
    y = masked(block.conv, relu(y))
    y = masked(block.expand, relu(y))
    np.testing.assert_allclose(block(x).numpy(), x + y, rtol=1e-4, atol=1e-4)


def test_row_lstm_matches_numpy(x):
    block = RowLSTMBlock(3, 3)
    block(x)
    randomise(block)
    gates_in = masked(block.input_to_state, x)  # [B, H, W, 12]; no ReLU (as in the paper)
    w = block.state_to_state.kernel.numpy()[0]  # [3, h, 4h]
    b = block.state_to_state.bias.numpy()
    batch, height, width, _ = x.shape
    hidden = np.zeros((batch, width, 3))
    cell = np.zeros((batch, width, 3))
    out = np.zeros((batch, height, width, 3))
    for i in range(height):
        padded = np.pad(hidden, ((0, 0), (1, 1), (0, 0)))  # the previous row only
        recurrent = sum(padded[:, d:d + width] @ w[d] for d in range(3)) + b
        hidden, cell = lstm(gates_in[:, i] + recurrent, cell, 3)
        out[:, i] = hidden
    expected = x + masked(block.output, out)
    np.testing.assert_allclose(block(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def diagonal_reference(gates_in, kernel, bias, n):
    """Left-to-right diagonal LSTM without skewing: state(i, j) from state(i-1, j)
    (kernel row 0) and state(i, j-1) (kernel row 1)."""
    batch, height, width, _ = gates_in.shape
    d = kernel.shape[2]
    hidden = np.zeros((batch, height + 1, width + 1, d))  # one row / column of zeros
    cell = np.zeros_like(hidden)
    for i in range(height):
        for j in range(width):
            recurrent = hidden[:, i, j + 1] @ kernel[0, 0] + hidden[:, i + 1, j] @ kernel[1, 0]
            h, c = lstm(gates_in[:, i, j] + recurrent + bias, cell[:, i + 1, j], n)
            hidden[:, i + 1, j + 1], cell[:, i + 1, j + 1] = h, c
    return hidden[:, 1:, 1:]


def test_diagonal_bilstm_matches_numpy(x):
    block = DiagonalBiLSTMBlock(3, 3)
    block(x)
    randomise(block)
    r = x  # no ReLU before the input-to-state convolution (the paper has none)
    forward = diagonal_reference(masked(block.input_to_state[0], r),
                                 block.state_to_state[0].kernel.numpy(),
                                 block.state_to_state[0].bias.numpy(), 3)
    mirrored = r[:, :, ::-1]
    backward = diagonal_reference(masked(block.input_to_state[1], mirrored),
                                  block.state_to_state[1].kernel.numpy(),
                                  block.state_to_state[1].bias.numpy(), 3)[:, :, ::-1]
    shifted = np.pad(backward, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]  # whole map down
    expected = x + masked(block.output, forward + shifted)
    np.testing.assert_allclose(block(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_gated_block_matches_numpy(x, rng):
    block = GatedPixelCNNBlock(3, 3)
    block((x, x))
    randomise(block)
    v = rng.normal(size=x.shape).astype(np.float32)
    cond = rng.normal(size=(2, 24)).astype(np.float32)  # [B, 8h]: [vertical | horizontal]
    v_cond, h_cond = groups(cond, 3, 2)  # [B, 4h] each, colour-group-wise
    kv = block.vertical.kernel.numpy()  # [2, 3, 6, 24]
    v_pad = np.pad(v, ((0, 0), (1, 0), (1, 1), (0, 0)))  # rows i-1..i, columns j-1..j+1
    v_pre = sum(np.einsum("bhwc,co->bhwo", v_pad[:, a:a + 4, c:c + 5], kv[a, c])
                for a in range(2) for c in range(3)) + block.vertical.bias.numpy()
    v_down = np.pad(v_pre, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]
    to_h = v_down @ block.vertical_to_horizontal.kernel.numpy()[0, 0] \
        + block.vertical_to_horizontal.bias.numpy()
    h_pre = masked(block.horizontal, x) + to_h

    def gate(z, c):  # both halves get their own class projection
        a, b = groups(z + c[:, None, None], 3, 2)
        return np.tanh(a) * sigmoid(b)

    v_new, h_new = block((v, x), tf.constant(cond))
    np.testing.assert_allclose(v_new.numpy(), gate(v_pre, v_cond), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h_new.numpy(),
                               x + masked(block.horizontal_out, gate(h_pre, h_cond)),
                               rtol=1e-4, atol=1e-4)
    # The class vector reaches the sigmoid halves too: changing only their part matters.
    a_only = cond.reshape(2, 3, 2, 2, 2).copy()  # [B, colour, stack, half, d]
    a_only[:, :, :, 1] = 0
    assert not np.allclose(block((v, x), tf.constant(a_only.reshape(2, 24)))[0].numpy(),
                           v_new.numpy())


def test_dilated_gated_block_matches_numpy(x, rng):
    """Dilation 2: the vertical stack reads rows i-2 and i and columns j-2, j, j+2; the
    horizontal one the pixels j-2 and j of row i."""
    block = GatedPixelCNNBlock(3, 3, dilation=2)
    block((x, x))
    randomise(block)
    v = rng.normal(size=x.shape).astype(np.float32)
    kv = block.vertical.kernel.numpy()  # [2, 3, 6, 12]
    v_pad = np.pad(v, ((0, 0), (2, 0), (2, 2), (0, 0)))
    v_pre = sum(np.einsum("bhwc,co->bhwo", v_pad[:, 2 * a:2 * a + 4, 2 * c:2 * c + 5],
                          kv[a, c]) for a in range(2) for c in range(3))
    v_pre += block.vertical.bias.numpy()
    v_down = np.pad(v_pre, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]
    to_h = v_down @ block.vertical_to_horizontal.kernel.numpy()[0, 0] \
        + block.vertical_to_horizontal.bias.numpy()
    mask = get_mask((1, 3), 6, 12, "B", 3)
    h_pre = numpy_masked_conv(x, block.horizontal.kernel.numpy(),
                              block.horizontal.bias.numpy(), mask, dilation=2) + to_h

    def gate(z):
        a, b = groups(z, 3, 2)
        return np.tanh(a) * sigmoid(b)

    v_new, h_new = block((v, x))
    np.testing.assert_allclose(v_new.numpy(), gate(v_pre), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h_new.numpy(), x + masked(block.horizontal_out, gate(h_pre)),
                               rtol=1e-4, atol=1e-4)


def test_gated_input_layer():
    """Vertical: unmasked (K//2+1) x K over rows i-K//2..i; horizontal: 1 x K mask A."""
    from pixelcnn_tf.models.gated_pixelcnn import GatedInput
    gen = np.random.default_rng(1)
    x = gen.normal(size=(2, 5, 6, 3)).astype(np.float32)
    layer = GatedInput(3, 3, 5)
    v, h = layer(tf.constant(x))
    kv = layer.vertical.kernel.numpy()  # [3, 5, 3, 6]
    assert kv.shape == (3, 5, 3, 6)
    pad = np.pad(x, ((0, 0), (2, 0), (2, 2), (0, 0)))
    expected = sum(np.einsum("bhwc,co->bhwo", pad[:, a:a + 5, c:c + 6], kv[a, c])
                   for a in range(3) for c in range(5)) + layer.vertical.bias.numpy()
    np.testing.assert_allclose(v.numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h.numpy(), masked(layer.horizontal, x), rtol=1e-4, atol=1e-4)
    assert layer.horizontal.mode == "A" and layer.horizontal.kernel_size == (1, 5)


def test_skew_round_trip(rng):
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    s = skew(tf.constant(x)).numpy()
    assert s.shape == (2, 3, 6, 5)
    np.testing.assert_array_equal(s[:, 1, 1:5], x[:, 1])  # row i starts at column i
    np.testing.assert_array_equal(s[:, 2, :2], 0)
    np.testing.assert_array_equal(unskew(tf.constant(s), 4).numpy(), x)


# -- receptive fields -------------------------------------------------------------------------
def dependence(layer_type, i=5, j=4, shape=(8, 9), **model):
    """Which input pixels the output at (i, j) depends on: bool [H, W]."""
    tf.random.set_seed(0)
    config = tiny_config(1, type=layer_type, **{"n_layers": 3, **model})
    model = build_model(config.model, (*shape, 1))
    gen = np.random.default_rng(0)
    x = tf.constant(gen.uniform(size=(4, *shape, 1)).astype(np.float32))
    proj = tf.constant(gen.normal(size=256).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(model(x)[:, i, j, 0, :] * proj)
    return np.abs(tape.gradient(y, x).numpy()).sum(axis=(0, 3)) != 0


NEAR = [(r, c) for r in (3, 4) for c in range(2, 7)] + [(5, 2), (5, 3)]  # rows above, left


def test_pixelcnn_has_the_blind_spot():
    dep = dependence("pixelcnn")
    assert not dep[4, 6]  # (i-1, j+2): missed although...
    assert dep[3, 6] and dep[2, 7]  # ...pixels further up and right are seen


@pytest.mark.parametrize("layer_type", ["gated_pixelcnn", "diagonal_bilstm"])
def test_no_blind_spot(layer_type):
    dep = dependence(layer_type)
    assert all(dep[p] for p in NEAR)


def gated_cone(i, j, shape, reach):
    """The exact causal cone of the gated PixelCNN at (i, j): rows i-1-R..i-1 in columns
    j-R..j+R, and columns j-R..j-1 of row i (R = K//2 + L·(k//2))."""
    cone = np.zeros(shape, bool)
    cone[max(i - 1 - reach, 0):i, max(j - reach, 0):j + reach + 1] = True
    cone[i, max(j - reach, 0):j] = True
    return cone


@pytest.mark.parametrize("n_layers,kernel_size,input_kernel_size",
                         [(3, 3, 3), (2, 3, 7), (1, 5, 3), (3, 3, 5)])
def test_gated_field_is_exactly_the_causal_cone(n_layers, kernel_size, input_kernel_size):
    """Interior pixels of the gated PixelCNN see every pixel of their cone (no blind spot:
    before the paper's input layer, (i-1, j+R) was unseen while (i-2, j+R) was seen) and
    nothing outside it."""
    shape = (14, 17)
    reach = input_kernel_size // 2 + n_layers * (kernel_size // 2)
    for i, j in [(11, 8), (12, 9), (10, 8)]:
        dep = dependence("gated_pixelcnn", i, j, shape, n_layers=n_layers,
                         kernel_size=kernel_size, input_kernel_size=input_kernel_size)
        np.testing.assert_array_equal(dep, gated_cone(i, j, shape, reach))


def spread(fields, taps):
    """Receptive fields through a convolution: ``fields`` bool ``[H, W, H, W]`` (the input
    pixels each position depends on) → the union, over the taps (a, b), of the fields at
    (i + a, j + b) (positions off the image contribute nothing)."""
    height, width = fields.shape[:2]
    out = np.zeros_like(fields)
    for a, b in taps:
        rows = slice(max(-a, 0), min(height - a, height))
        cols = slice(max(-b, 0), min(width - b, width))
        out[rows, cols] |= fields[rows.start + a:rows.stop + a, cols.start + b:cols.stop + b]
    return out


def masked_taps(k, d, centre, rows_only=False):
    """Taps of a masked k x k (or 1 x k: ``rows_only``) kernel with dilation d: rows above,
    left of the centre, and the centre itself when ``centre`` (mask B, one colour)."""
    r = k // 2
    above = [] if rows_only else [(d * a, d * b) for a in range(-r, 0) for b in range(-r, r + 1)]
    return above + [(0, d * b) for b in range(-r, 1 if centre else 0)]


def predicted_field(layer_type, shape, kernel_size, input_kernel_size, dilations):
    """The exact receptive field of every output position, by propagating fields through
    the layers' taps: bool ``[H, W, H, W]``."""
    height, width = shape
    pixel = np.zeros((height, width, height, width), bool)  # each position: itself
    pixel[np.arange(height)[:, None], np.arange(width), np.arange(height)[:, None],
          np.arange(width)] = True
    big, k = input_kernel_size, kernel_size
    if layer_type == "pixelcnn":
        field = spread(pixel, masked_taps(big, 1, centre=False))
        for d in dilations:  # 1x1, dilated kxk mask B, 1x1, plus the residual
            field = field | spread(field, masked_taps(k, d, centre=True))
        return field
    vertical = spread(pixel, [(a, b) for a in range(-(big // 2), 1)
                              for b in range(-(big // 2), big // 2 + 1)])
    horizontal = spread(pixel, masked_taps(big, 1, centre=False, rows_only=True))
    for d in dilations:
        vertical = spread(vertical, [(d * a, d * b) for a in range(-(k // 2), 1)
                                     for b in range(-(k // 2), k // 2 + 1)])
        horizontal = (horizontal | spread(horizontal, masked_taps(k, d, True, rows_only=True))
                      | spread(vertical, [(-1, 0)]))  # the vertical stack one row up
    return horizontal


@pytest.mark.parametrize("layer_type", ["pixelcnn", "gated_pixelcnn"])
@pytest.mark.parametrize("dilations,kernel_size,input_kernel_size",
                         [([1, 1, 1], 3, 3), ([1, 2, 4], 3, 3), ([2, 3, 1], 3, 5),
                          ([4, 1, 2], 5, 3)])
def test_dilated_field_is_exactly_the_predicted_one(layer_type, dilations, kernel_size,
                                                     input_kernel_size):
    """The field of dilated models equals the union of their taps, layer by layer, and
    lies in the causal past (checked at interior, edge and last positions)."""
    shape = (14, 17)
    field = predicted_field(layer_type, shape, kernel_size, input_kernel_size, dilations)
    for i, j in [(11, 8), (13, 16), (6, 0), (13, 2)]:
        dep = dependence(layer_type, i, j, shape, kernel_size=kernel_size,
                         input_kernel_size=input_kernel_size, dilations=dilations)
        np.testing.assert_array_equal(dep, field[i, j], err_msg=f"({i}, {j})")
        past = np.zeros(shape, bool)
        past[:i] = True
        past[i, :j] = True
        assert not (dep & ~past).any()
    if dilations != [1, 1, 1]:  # the dilated field reaches further than the plain one
        plain = predicted_field(layer_type, shape, kernel_size, input_kernel_size, [1, 1, 1])
        assert field[13, 16].sum() > plain[13, 16].sum()


def test_only_pixelcnn_and_gated_layers_dilate():
    with pytest.raises(ValueError, match="has no dilated form"):
        RowLSTMBlock(3, 1, dilation=2)
    with pytest.raises(ValueError, match="one rate per pixel layer"):
        PixelRNN((4, 4, 1), PixelCNNBlock, n_layers=2, dilations=[1, 2, 3])
    with pytest.raises(ValueError, match="has no dilated form"):
        PixelRNN((4, 4, 1), DiagonalBiLSTMBlock, n_layers=2, dilations=[1, 2])


def test_diagonal_bilstm_sees_whole_rows_above():
    """Every pixel of the rows i-2 and above and of row i-1 but its last one, which only
    the input convolution (kernel 3 here) reaches: from (i, j) with j >= W-1-K//2."""
    width = 9
    for j in range(width):
        dep = dependence("diagonal_bilstm", 5, j, (8, width))
        assert dep[:4].all() and dep[4, :width - 1].all()
        assert dep[4, width - 1] == (j >= width - 1 - 3 // 2), j
        assert dep[5, :j].all() and not dep[5, j:].any() and not dep[6:].any()


def test_row_lstm_field_is_a_triangle():
    dep = dependence("row_lstm")
    i, j = 5, 4
    for d in (1, 2, 3):
        cols = np.flatnonzero(dep[i - d])
        assert cols.min() == 0 and cols.max() == j + d  # widening by one pixel per row
        assert len(cols) == j + d + 1  # and filled
    assert dep[i, :j].all() and not dep[i, j:].any()


# -- the faults of the common TF1 PixelRNN port are caught -----------------------------------
from conftest import model_with_layer  # noqa: E402
from pixelcnn_tf.models import row_lstm  # noqa: E402
from pixelcnn_tf.nn.layers import split_colour_groups  # noqa: E402
from helpers import raster_jacobian  # noqa: E402


def future_dependence(layer_cls, channels=3):
    """Largest |d output / d input| at or after the output's own sub-pixel."""
    tf.random.set_seed(0)
    model = model_with_layer(layer_cls, channels, (4, 4))
    jac = raster_jacobian(model, (4, 4, channels))
    return jac[np.triu(np.ones(jac.shape, bool))].max()


def test_correct_layers_have_no_future_dependence():
    assert future_dependence(RowLSTMBlock) == 0
    assert future_dependence(DiagonalBiLSTMBlock) == 0


def test_sigmoid_candidate_gate_is_caught(x, monkeypatch):
    def sigmoid_g(gates, cell, n_colors):  # the fault: g through a sigmoid
        i, f, o, g = split_colour_groups(gates, n_colors, 4)
        cell = tf.sigmoid(f) * cell + tf.sigmoid(i) * tf.sigmoid(g)
        return tf.sigmoid(o) * tf.tanh(cell), cell

    monkeypatch.setattr(row_lstm, "lstm_update", sigmoid_g)
    with pytest.raises(AssertionError):
        test_row_lstm_matches_numpy(x)


class ZeroedLastRowBiLSTM(DiagonalBiLSTMBlock):
    """The fault: the backward output's last row zeroed instead of shifting it down."""

    def __call__(self, state, condition=None):
        x = tf.nn.relu(state)
        forward, backward = self._directions(x, tf.reverse(x, axis=[2]))
        backward = tf.reverse(backward, axis=[2])
        keep = tf.concat([tf.ones_like(backward[:, :-1]), tf.zeros_like(backward[:, -1:])], 1)
        return self.residual(state, forward + backward * keep, condition)


class SamePaddedRowLSTM(RowLSTMBlock):
    """The fault: a SAME-padded 3x1 state-to-state convolution over the hidden states,
    which also reads the row below."""

    def __call__(self, state, condition=None):
        hidden = super().__call__(state, condition) - state
        mixed = tf.nn.conv2d(hidden, tf.ones([3, 1, hidden.shape[-1], hidden.shape[-1]]) / 3,
                             strides=1, padding="SAME")
        return state + mixed


@pytest.mark.parametrize("faulty", [ZeroedLastRowBiLSTM, SamePaddedRowLSTM])
def test_causality_faults_are_caught_by_the_jacobian(faulty):
    assert future_dependence(faulty) > 0
