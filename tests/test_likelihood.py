import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from pixelcnn_tf.likelihood import (bits_per_dim, mean_bits_per_dim, nll_per_dim,
                                    nll_per_image)
from pixelcnn_tf.trainer import Trainer


def numpy_nll(logits, images):
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    log_z = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
    picked = np.take_along_axis(logits, images[..., None].astype(int), -1)[..., 0]
    return log_z - picked


def test_nll_matches_numpy(rng):
    logits = rng.normal(size=(2, 3, 4, 3, 256)).astype(np.float32) * 3
    images = rng.integers(0, 256, size=(2, 3, 4, 3)).astype(np.uint8)
    expected = numpy_nll(logits, images)
    np.testing.assert_allclose(nll_per_dim(logits, images).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(nll_per_image(logits, images).numpy(),
                               expected.sum(axis=(1, 2, 3)), rtol=1e-5)
    assert mean_bits_per_dim(logits, images).numpy() == pytest.approx(
        expected.mean() / math.log(2), rel=1e-5)


def test_first_subpixel_counts():
    logits = np.zeros((1, 2, 2, 1, 256), np.float32)
    logits[0, 0, 0, 0, 7] = 100.0  # the first sub-pixel is certain to be 7...
    images = np.zeros((1, 2, 2, 1), np.uint8)  # ...but it is 0: a huge NLL
    assert nll_per_dim(logits, images).numpy()[0, 0, 0, 0] > 99


def test_bits_per_dim_conversion():
    assert bits_per_dim(256 * math.log(256), 256) == pytest.approx(8.0)


def zero_output_trainer(channels, workdir):
    trainer = Trainer(tiny_config(channels), str(workdir), (4, 5, channels))
    out = trainer.model.output_logits
    out.kernel.assign(tf.zeros_like(out.kernel))
    out.bias.assign(tf.zeros_like(out.bias))
    return trainer


@pytest.mark.parametrize("channels", [1, 3])
def test_zero_output_model_is_exactly_8_bits(channels, rng, tmp_path):
    trainer = zero_output_trainer(channels, tmp_path)
    images = rng.integers(0, 256, size=(7, 4, 5, channels)).astype(np.uint8)
    ds = tf.data.Dataset.from_tensor_slices((images, np.zeros(7, np.int32))).batch(3)
    result = trainer.evaluate(ds)
    assert result.num_images == 7 and result.num_dims == 7 * 4 * 5 * channels
    assert f"{result.bits_per_dim:.3f}" == "8.000"
    assert result.bits_per_dim == pytest.approx(8.0, abs=1e-6)


def test_evaluation_sums_nats_instead_of_averaging_batch_means(rng, tmp_path):
    """Batches of 3, 3 and 1 image: averaging batch means would overweight the last one."""
    trainer = Trainer(tiny_config(1), str(tmp_path), (4, 4, 1))
    images = rng.integers(0, 256, size=(7, 4, 4, 1)).astype(np.uint8)
    images[-1] = 0  # an easy last image makes batch-mean averaging visibly wrong
    labels = np.zeros(7, np.int32)
    per_image = nll_per_image(trainer.model(images / 255.0), images).numpy().astype(np.float64)
    expected = per_image.sum() / (7 * 16 * math.log(2))
    for batch in (3, 7, 1):
        ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)
        assert trainer.evaluate(ds).bits_per_dim == pytest.approx(expected, rel=1e-6)
    batch_means = [per_image[i:i + 3].mean() for i in range(0, 7, 3)]
    wrong = np.mean(batch_means) / (16 * math.log(2))
    assert abs(wrong - expected) > 1e-3
