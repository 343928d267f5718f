import numpy as np
import pytest
import tensorflow as tf

from helpers import numpy_masked_conv
from pixelcnn_tf.nn.layers import MaskedConv2D
from pixelcnn_tf.nn.masks import get_mask


@pytest.mark.parametrize("mode", ["A", "B"])
@pytest.mark.parametrize("kernel", [1, 3, 5, (1, 3), (1, 5), (3, 5), (5, 1)])
@pytest.mark.parametrize("colours,cin,cout", [(1, 2, 4), (3, 3, 6), (3, 6, 9)])
def test_matches_numpy_reference(mode, kernel, colours, cin, cout, rng):
    tf.random.set_seed(1)
    layer = MaskedConv2D(cout, kernel, mode, n_colors=colours)
    x = rng.normal(size=(2, 6, 5, cin)).astype(np.float32)
    y = layer(x).numpy()
    layer.bias.assign(rng.normal(size=cout).astype(np.float32))
    y = layer(x).numpy()
    expected = numpy_masked_conv(x, layer.kernel.numpy(), layer.bias.numpy(),
                                 get_mask(kernel, cin, cout, mode, colours))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["A", "B"])
@pytest.mark.parametrize("kernel", [3, 5, (1, 3), (3, 5), (5, 1)])
@pytest.mark.parametrize("dilation", [2, 3, 7])
@pytest.mark.parametrize("colours,cin,cout", [(1, 2, 4), (3, 6, 9)])
def test_dilated_matches_numpy_reference(mode, kernel, dilation, colours, cin, cout, rng):
    """Dilated taps, the reduced-row trick included, against the full masked kernel
    (dilation 7 reaches past the 6x5 image: those taps read zero padding)."""
    tf.random.set_seed(2)
    layer = MaskedConv2D(cout, kernel, mode, n_colors=colours, dilation=dilation)
    x = rng.normal(size=(2, 6, 5, cin)).astype(np.float32)
    layer(x)
    layer.bias.assign(rng.normal(size=cout).astype(np.float32))
    expected = numpy_masked_conv(x, layer.kernel.numpy(), layer.bias.numpy(),
                                 get_mask(kernel, cin, cout, mode, colours), dilation)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_eager_equals_tf_function(rng):
    layer = MaskedConv2D(6, 3, "A", n_colors=3)
    x = tf.constant(rng.normal(size=(2, 5, 5, 3)).astype(np.float32))
    eager = layer(x)
    graph = tf.function(layer)(x)
    np.testing.assert_allclose(eager.numpy(), graph.numpy(), rtol=1e-6, atol=1e-6)


def test_variables_are_lazy_and_mask_is_not_assigned(rng):
    layer = MaskedConv2D(4, 3, "A", n_colors=1)
    assert layer.trainable_variables == ()
    x = rng.normal(size=(1, 4, 4, 2)).astype(np.float32)
    layer(x)
    assert layer.kernel.shape == (3, 3, 2, 4)
    assert len(layer.trainable_variables) == 2
    before = layer.kernel.numpy().copy()
    layer(x)
    np.testing.assert_array_equal(layer.kernel.numpy(), before)  # variable never masked
    assert np.any(before * (1 - layer.mask.numpy()) != 0)  # masked taps keep their values


def test_masked_taps_get_zero_gradient(rng):
    layer = MaskedConv2D(3, 3, "B", n_colors=3)
    x = tf.constant(rng.normal(size=(1, 4, 4, 3)).astype(np.float32))
    layer(x)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    grad = tape.gradient(loss, layer.kernel).numpy()
    np.testing.assert_array_equal(grad * (1 - layer.mask.numpy()), 0.0)


def test_errors():
    with pytest.raises(ValueError, match="odd"):
        MaskedConv2D(4, 2)
    with pytest.raises(ValueError, match="features_out=4 is not divisible by n_colors=3"):
        MaskedConv2D(4, 3, n_colors=3)
    layer = MaskedConv2D(3, 3, n_colors=3)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        layer(tf.zeros([4, 4, 3]))
    with pytest.raises(ValueError, match="no mask yet"):
        layer.mask
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="dilation must be an integer >= 1"):
            MaskedConv2D(3, 3, n_colors=3, dilation=bad)
