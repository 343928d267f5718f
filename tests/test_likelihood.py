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


# -- the discretized logistic mixture --------------------------------------------------------
from pixelcnn_tf.likelihood import LogisticMixture, log_bin_probs  # noqa: E402


def numpy_logistic_bins(mean, log_scale, n_levels=256):
    """Probabilities of the L bins of one discretized logistic, computed with 60-digit
    decimals (no cancellation), as float64."""
    import decimal
    ctx = decimal.Context(prec=60)
    mean, s = ctx.create_decimal(float(mean)), ctx.create_decimal(float(log_scale)).exp(ctx)

    def sigmoid(t):
        return 1 / (1 + (-t).exp(ctx)) if t > -10000 else decimal.Decimal(0)

    probs, top = [], n_levels - 1
    for v in range(n_levels):
        x = 2 * ctx.create_decimal(v) / top - 1
        upper = 1 if v == top else sigmoid((x + ctx.create_decimal(1) / top - mean) / s)
        lower = 0 if v == 0 else sigmoid((x - ctx.create_decimal(1) / top - mean) / s)
        probs.append(float(upper - lower))
    return np.array(probs)


def mixture_params(rng, n, dist, scale):
    return tf.constant((rng.normal(size=(n, dist.num_params)) * scale).astype(np.float32))


@pytest.mark.parametrize("colours", [1, 3])
@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 1000.0])
@pytest.mark.parametrize("n_levels", [256, 32, 2])
def test_mixture_conditionals_sum_to_one_and_chain_to_the_nll(colours, scale, n_levels, rng):
    """For random and extreme parameters and any bit depth: every colour's L
    probabilities sum to 1, and the per-colour conditionals the sampler draws from
    multiply to the likelihood."""
    dist = LogisticMixture(colours, 4, n_levels)
    params = mixture_params(rng, 6, dist, scale)
    pixels = rng.integers(0, n_levels, size=(6, colours))
    pixels[0], pixels[1] = 0, n_levels - 1  # the edge bins
    total = np.zeros(6)
    for c in range(colours):
        logits = dist.subpixel_logits(params, tf.constant(pixels), c).numpy().astype(np.float64)
        np.testing.assert_allclose(np.exp(logits).sum(-1), 1.0, atol=1e-5)
        total += logits[np.arange(6), pixels[:, c]]
    nll = dist.nll_per_image(tf.reshape(params, [6, 1, 1, -1]),
                             tf.constant(pixels.reshape(6, 1, 1, colours))).numpy()
    assert np.all(np.isfinite(nll))
    np.testing.assert_allclose(nll, -total, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("n_levels", [256, 32, 4, 2])
def test_log_bin_probs_match_float64_and_stay_finite(n_levels):
    """L bins of width 2/(L-1) on [-1, 1], the edge bins taking the tails."""
    values = tf.range(n_levels)
    for mean, log_scale in [(0.0, 0.0), (0.3, -3.0), (-0.9, -7.0), (0.99, 2.0), (0.0, 30.0),
                            (5.0, -7.0), (-5.0, -7.0)]:
        got = log_bin_probs(values, mean, tf.constant(log_scale), n_levels).numpy()
        assert np.all(np.isfinite(got)), (mean, log_scale)
        assert np.exp(got.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-5)
        expected = numpy_logistic_bins(mean, log_scale, n_levels)
        ok = expected > 1e-30  # float64 itself underflows beyond
        np.testing.assert_allclose(got[ok], np.log(expected[ok]), rtol=1e-4, atol=1e-4)


def test_mixture_matches_a_numpy_reference(rng):
    """Means: green moves with red, blue with red and green; weights shared by colours."""
    dist = LogisticMixture(3, 2)
    params = mixture_params(rng, 3, dist, 1.0)
    pixels = rng.integers(0, 256, size=(3, 3))
    p = params.numpy().astype(np.float64)
    logits, means, log_scales, coeffs = (p[:, :2], p[:, 2:8].reshape(3, 3, 2),
                                         np.maximum(p[:, 8:14].reshape(3, 3, 2), -7.0),
                                         np.tanh(p[:, 14:20].reshape(3, 3, 2)))
    expected = []
    for b in range(3):
        x = pixels[b] / 127.5 - 1.0
        total = 0.0
        for k in range(2):
            m = means[b, :, k] + np.array([0.0, coeffs[b, 0, k] * x[0],
                                           coeffs[b, 1, k] * x[0] + coeffs[b, 2, k] * x[1]])
            prob = np.prod([numpy_logistic_bins(m[c], log_scales[b, c, k])[pixels[b, c]]
                            for c in range(3)])
            w = np.exp(logits[b] - logits[b].max())
            total += w[k] / w.sum() * prob
        expected.append(-np.log(total))
    got = dist.nll_per_image(tf.reshape(params, [3, 1, 1, -1]),
                             tf.constant(pixels.reshape(3, 1, 1, 3))).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_zero_output_mixture_model_has_the_closed_form_value(channels, rng, tmp_path):
    """All-zero parameters: every sub-pixel is a logistic(0, 1) discretized into 256 bins
    (equal mixture weights of identical components, coefficients tanh(0) = 0), so the NLL
    of an image is Σ -log(σ(x + 1/255) - σ(x - 1/255)) with the tails at 0 and 255."""
    cfg = tiny_config(channels, output="logistic_mixture", num_mixtures=3)
    trainer = Trainer(cfg, str(tmp_path), (4, 5, channels))
    out = trainer.model.output_logits
    out.kernel.assign(tf.zeros_like(out.kernel))
    out.bias.assign(tf.zeros_like(out.bias))
    images = rng.integers(0, 256, size=(7, 4, 5, channels)).astype(np.uint8)
    images[0] = 0
    images[1] = 255
    ds = tf.data.Dataset.from_tensor_slices((images, np.zeros(7, np.int32))).batch(3)
    result = trainer.evaluate(ds)
    bins = numpy_logistic_bins(0.0, 0.0)
    expected = -np.log(bins[images]).sum() / (images.size * math.log(2))
    assert result.bits_per_dim == pytest.approx(expected, rel=1e-6)
