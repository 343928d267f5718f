"""The Multi-Scale PixelRNN: an exact likelihood counting every sub-pixel once, causality
of both networks, and its two-stage sampler (fast == naive)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from pixelcnn_tf import generate_images
from pixelcnn_tf.config import ConfigError, check_model_fits_images
from pixelcnn_tf.models import build_model
from pixelcnn_tf.models.multiscale import MultiScalePixelRNN
from pixelcnn_tf.trainer import Trainer
from helpers import multiscale_model

SHAPE = (6, 4)
OUTPUTS = ("categorical", "logistic_mixture")


def images_of(model, n=4, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *model.image_shape)).astype(np.uint8)


def on_grid(shape, factor):
    grid = np.zeros(shape[:2], bool)
    grid[::factor, ::factor] = True
    return grid


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("factor", [2, 3])
def test_zero_output_layers_score_exactly_8_bits_per_dim(channels, factor):
    """Uniform conditionals in both networks: 8 bits for every sub-pixel, each counted
    once (the small image's by the small network, the rest by the conditional one)."""
    model = multiscale_model(channels, "pixelcnn", factor=factor, shape=(6, 6))
    for net in (model.small, model.large):
        for v in net.output_logits.trainable_variables:
            v.assign(tf.zeros_like(v))
    images = images_of(model, 5)
    params = model(images / 255.0)
    bits = model.distribution.mean_bits_per_dim(params, images).numpy()
    assert bits == pytest.approx(8.0, abs=1e-6)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("channels", [1, 3])
def test_bits_per_dim_is_the_sum_of_the_two_parts(output, channels, tmp_path):
    """What evaluate.py reports (Trainer.evaluate) = the small network's NLL of
    x[::2, ::2] + the conditional network's NLL of the other pixels, computed here
    independently (numpy log-softmax for the categorical), over N·H·W·C."""
    cfg = tiny_config(channels, type="gated_pixelcnn", output=output, num_mixtures=2,
                      multiscale="{factor: 2}")
    trainer = Trainer(cfg, str(tmp_path / "run"), (*SHAPE, channels))
    model = trainer.model
    images = images_of(model, 6)
    batch = tf.constant(images)
    for _ in range(3):
        trainer.train_step(batch, tf.zeros([6], tf.int32))
    small_images = images[:, ::2, ::2]
    small_params = model.small(small_images / 255.0)
    large_params = model.large(images / 255.0, context=small_images / 255.0)
    if output == "categorical":
        def nll(logits, x):  # [B, H, W, C, 256] → per-pixel NLL [B, H, W]
            logp = log_softmax(logits.numpy().astype(np.float64))
            return -np.take_along_axis(logp, x[..., None].astype(int), -1)[..., 0].sum(-1)
        small_nll, large_nll = nll(small_params, small_images), nll(large_params, images)
    else:
        small_nll = model.small.distribution.nll_per_pixel(small_params, small_images).numpy()
        large_nll = model.large.distribution.nll_per_pixel(large_params, images).numpy()
    off_grid = ~on_grid(SHAPE, 2)
    total = small_nll.sum() + (large_nll * off_grid).sum()
    want = total / (images.size * math.log(2))
    ds = tf.data.Dataset.from_tensor_slices((images, np.zeros(6, np.int32))).batch(4)
    assert trainer.evaluate(ds).bits_per_dim == pytest.approx(want, rel=1e-5)
    # The conditional network's outputs on the grid are not counted: changing them
    # changes nothing.
    params = model(images / 255.0)
    grid = tf.constant(on_grid(SHAPE, 2))[None, :, :]
    grid = tf.reshape(grid, [1, *SHAPE] + [1] * (params[1].shape.rank - 3))
    moved = tf.where(grid, params[1] + 3.0, params[1])
    np.testing.assert_allclose(model.distribution.nll_per_image(params, images).numpy(),
                               model.distribution.nll_per_image((params[0], moved),
                                                                images).numpy(), rtol=1e-6)


# Causality of both networks, their steps == the full pass, fast == naive (completions,
# labels): the "multiscale" variant of every type in test_conformance.py.


@pytest.mark.parametrize("output", OUTPUTS)
def test_completion_and_labels_fast_equals_naive(output):
    channels = 3
    model = multiscale_model(channels, "gated_pixelcnn", output, num_classes=2)
    init = images_of(model, 4, seed=3)
    height, width = SHAPE
    for start in [(0, 0, 0), (2, 0, 0), (3, 1, 1), (height - 1, width - 1, 2)]:
        args = dict(seed=5, init_images=init, start=start, labels=[0, 1, 1, 0])
        naive = generate_images(model, SHAPE, 4, channels, method="naive", **args)
        fast = generate_images(model, SHAPE, 4, channels, method="fast", **args)
        np.testing.assert_array_equal(fast, naive, err_msg=str(start))
        k0 = (start[0] * width + start[1]) * channels + start[2]
        np.testing.assert_array_equal(fast.reshape(4, -1)[:, :k0], init.reshape(4, -1)[:, :k0])
        assert np.any(fast.reshape(4, -1)[:, k0:] != init.reshape(4, -1)[:, k0:])
    # The labels reach both networks.
    a = generate_images(model, SHAPE, 4, channels, seed=5, labels=[0, 0, 0, 0], method="fast")
    b = generate_images(model, SHAPE, 4, channels, seed=5, labels=[1, 1, 1, 1], method="fast")
    assert not np.array_equal(a[:, ::2, ::2], b[:, ::2, ::2])
    assert not np.array_equal(a * ~on_grid(SHAPE, 2)[..., None],
                              b * ~on_grid(SHAPE, 2)[..., None])


def test_the_small_image_is_drawn_first_and_kept():
    """Greedy: the sampled image's grid is the small network's own greedy image, and the
    conditional network's most likely values fill the rest given it."""
    model = multiscale_model(1, "pixelcnn")
    images = generate_images(model, SHAPE, 2, 1, greedy=True, method="fast")
    small = generate_images(model.small, (3, 2), 2, 1, greedy=True, method="fast")
    np.testing.assert_array_equal(images[:, ::2, ::2], small)
    params = model.large(images / 255.0, context=small / 255.0).numpy()  # [2, H, W, 1, 256]
    # Greedy in raster order: each off-grid value is the argmax given the pixels before
    # it, which the full pass on the final image reproduces.
    off = ~on_grid(SHAPE, 2)
    np.testing.assert_array_equal(params.argmax(-1)[:, off], images[:, off])


def test_parameter_count_and_errors():
    model = multiscale_model(1, "gated_pixelcnn")
    assert isinstance(model, MultiScalePixelRNN)
    assert model.small.image_shape == (3, 2, 1) and model.large.context_factor == 2
    with pytest.raises(ValueError, match="pass context, the small image"):
        model.large(tf.zeros([1, *SHAPE, 1]))
    with pytest.raises(TypeError, match="unexpected keyword argument 'context'"):
        model.small(tf.zeros([1, 3, 2, 1]), context=tf.zeros([1, 1, 1, 1]))  # a plain PixelRNN
    with pytest.raises(ValueError, match=r"takes context images \[B, 3, 2, 1\]"):
        model.large(tf.zeros([1, *SHAPE, 1]), context=tf.zeros([1, 2, 2, 1]))
    cfg = tiny_config(1, multiscale="{factor: 4}")
    with pytest.raises(ConfigError, match="factor=4 must divide the image size 6x4"):
        check_model_fits_images(cfg.model, (6, 4, 1))
    with pytest.raises(ConfigError, match="model.multiscale=.* is not an option of model.type=pixelcnn_pp"):
        tiny_config(1, multiscale="{factor: 2}", type="pixelcnn_pp", output="logistic_mixture")
    with pytest.raises(ConfigError, match="model.multiscale.factor=1 must be an integer"):
        tiny_config(1, multiscale="{factor: 1}")
    with pytest.raises(ConfigError, match="unknown key model.multiscale.size"):
        tiny_config(1, multiscale="{size: 2}")


def context_parameters(config, channels):
    """The conditional network's context layers: KxK conv (C → 2h), the deconvolution
    (2h → f·f·2h) and the projection to every slot (2h → slots·width), with biases."""
    from pixelcnn_tf.models import pixel_layer
    m = config.model
    two_h, k, f = 2 * m.hidden_dim, m.input_kernel_size, m.multiscale["factor"]
    layer = pixel_layer(m.type)
    slots = int(layer.condition_input) + m.n_layers
    width = layer.condition_width(m.hidden_dim)
    return ((k * k * channels + 1) * two_h + (two_h + 1) * f * f * two_h
            + (two_h + 1) * slots * width)


def stated_parameters(path):
    import re
    return int(re.search(r"([\d,]+) parameters", open(path).read()).group(1).replace(",", ""))


@pytest.mark.parametrize("path,one_scale,shape", [
    ("configs/quickstart_multiscale.yml", "configs/quickstart_gated_pixelcnn.yml", (28, 28, 1)),
    ("configs/cifar10_multiscale_pixelcnn.yml", "config.yml", (32, 32, 3))])
def test_config_parameter_counts(path, one_scale, shape):
    """Built: two one-scale networks plus the context layers, as the config states."""
    from pixelcnn_tf.config import load_config
    from pixelcnn_tf.models import count_parameters
    config = load_config(path)
    model = build_model(config.model, shape)
    single = count_parameters(build_model(load_config(one_scale).model, shape))
    assert count_parameters(model) == 2 * single + context_parameters(config, shape[-1])
    assert count_parameters(model) == stated_parameters(path)


def test_gated_cifar10_config_parameter_count():
    """Not built (280M parameters): two of configs/cifar10_gated_pixelcnn.yml (133,985,535,
    as configs/cifar10_gated_pixelcnn.yml states) plus the context layers."""
    from pixelcnn_tf.config import load_config
    path = "configs/cifar10_multiscale_gated_pixelcnn.yml"
    assert stated_parameters(path) == (2 * 133_985_535
                                       + context_parameters(load_config(path), 3))
