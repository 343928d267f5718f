import numpy as np
import pytest
import tensorflow as tf

from conftest import model_with_layer, random_model, tiny_config
from pixelcnn_tf import generate_images
from pixelcnn_tf.models import build_model
from pixelcnn_tf.models.base import has_steps
from pixelcnn_tf.models.pixelcnn import PixelCNNBlock
from pixelcnn_tf.trainer import Trainer


@pytest.fixture(scope="module")
def models():
    tf.random.set_seed(0)
    return {c: build_model(tiny_config(c).model, (4, 3, c)) for c in (1, 3)}


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_range_and_seed(models, channels):
    model = models[channels]
    a = generate_images(model, (4, 3), 5, channels, seed=7)
    assert a.shape == (5, 4, 3, channels) and a.dtype == np.uint8
    assert a.min() >= 0 and a.max() <= 255
    assert len(np.unique(a)) > 10  # an untrained model samples near-uniform values
    np.testing.assert_array_equal(a, generate_images(model, (4, 3), 5, channels, seed=7))
    assert not np.array_equal(a, generate_images(model, (4, 3), 5, channels, seed=8))


def test_greedy_and_temperature():
    tf.random.set_seed(1)
    model = build_model(tiny_config(1).model, (4, 3, 1))
    bias = model.output_logits.bias  # distinct logits so that argmax has no near-ties
    bias.assign(tf.random.normal(bias.shape, stddev=3.0))
    g1 = generate_images(model, (4, 3), 3, 1, greedy=True, seed=1)
    g2 = generate_images(model, (4, 3), 3, 1, greedy=True, seed=2)
    np.testing.assert_array_equal(g1, g2)  # argmax ignores the seed
    np.testing.assert_array_equal(g1[0], g1[1])  # and is the same for every image
    cold = generate_images(model, (4, 3), 3, 1, temperature=1e-4, seed=5)
    np.testing.assert_array_equal(cold, g1)  # temperature → 0 is greedy
    hot = generate_images(model, (4, 3), 3, 1, temperature=1.0, seed=5)
    assert np.mean(hot == g1) < 0.5


def test_completion_keeps_given_subpixels(models):
    model = models[3]
    init = np.full((2, 4, 3, 3), 17, np.uint8)
    out = generate_images(model, (4, 3), 2, 3, seed=3, init_images=init, start=(2, 1, 1))
    flat_out, flat_in = out.reshape(2, -1), init.reshape(2, -1)
    k0 = (2 * 3 + 1) * 3 + 1
    np.testing.assert_array_equal(flat_out[:, :k0], flat_in[:, :k0])
    assert np.any(flat_out[:, k0:] != 17)


def test_errors(models):
    model = models[1]
    with pytest.raises(ValueError, match="img_dims"):
        generate_images(model, (5, 3), 1, 1)
    with pytest.raises(ValueError, match="n_channels=3"):
        generate_images(model, (4, 3), 1, 3)
    with pytest.raises(ValueError, match="unknown sampling method"):
        generate_images(model, (4, 3), 1, 1, method="magic")
    with pytest.raises(ValueError, match="temperature"):
        generate_images(model, (4, 3), 1, 1, temperature=0)
    with pytest.raises(ValueError, match="start needs init_images"):
        generate_images(model, (4, 3), 1, 1, start=(1, 0, 0))
    with pytest.raises(ValueError, match="not class-conditional"):
        generate_images(model, (4, 3), 1, 1, labels=[0])


@pytest.mark.parametrize("channels", [1, 3])
def test_model_trained_on_one_value_samples_it(channels, tmp_path):
    """Every sub-pixel, the first one included, comes from the model."""
    cfg = tiny_config(channels)
    cfg.train.learning_rate = 0.05
    trainer = Trainer(cfg, str(tmp_path), (4, 3, channels))
    images = tf.fill([8, 4, 3, channels], tf.constant(201, tf.uint8))
    labels = tf.zeros([8], tf.int32)
    for _ in range(60):
        loss, _, _ = trainer.train_step(images, labels)
    assert float(loss) < 0.05
    out = generate_images(trainer.model, (4, 3), 6, channels, seed=0)
    assert np.mean(out == 201) > 0.99
    np.testing.assert_array_equal(
        generate_images(trainer.model, (4, 3), 2, channels, greedy=True), 201)


@pytest.mark.parametrize("layer_type", ["pixelcnn", "gated_pixelcnn", "row_lstm",
                                        "diagonal_bilstm"])
def test_class_conditional_sampling(tmp_path, layer_type):
    """A model trained a few steps on two classes of distinct images samples each class."""
    cfg = tiny_config(1, num_classes=2, type=layer_type)
    cfg.train.learning_rate = 0.05
    trainer = Trainer(cfg, str(tmp_path), (3, 3, 1))
    images = tf.concat([tf.fill([4, 3, 3, 1], tf.constant(30, tf.uint8)),
                        tf.fill([4, 3, 3, 1], tf.constant(220, tf.uint8))], axis=0)
    labels = tf.constant([0] * 4 + [1] * 4)
    for _ in range(80):
        trainer.train_step(images, labels)
    method = "fast" if has_steps(trainer.model) else "naive"
    out = generate_images(trainer.model, (3, 3), 4, 1, labels=[0, 1, 0, 1], seed=0,
                          method=method)
    assert np.mean(out[0::2] == 30) > 0.95 and np.mean(out[1::2] == 220) > 0.95
    with pytest.raises(ValueError, match="class-conditional"):
        generate_images(trainer.model, (3, 3), 2, 1)


# -- the fast (cached) sampler ---------------------------------------------------------------
from helpers import run_steps  # noqa: E402
from pixelcnn_tf.sampling import uniform_noise  # noqa: E402

# Steps == full pass and fast == naive for every type, output, colour count and variant
# (seeds, temperature, greedy, completions, labels): test_conformance.py.


def test_fast_batch_sizes_and_seeds():
    model = random_model(3)
    one = generate_images(model, (5, 4), 1, 3, seed=3, method="fast")
    five = generate_images(model, (5, 4), 5, 3, seed=3, method="fast")
    np.testing.assert_array_equal(five[:1], one)  # image b's noise depends on (seed, k, b)
    assert not np.array_equal(five[0], five[1])
    assert not np.array_equal(one, generate_images(model, (5, 4), 1, 3, seed=4, method="fast"))


def test_fast_sampler_runs_from_a_saved_model(tmp_path):
    from pixelcnn_tf.sampling import get_sampler
    model = random_model(3)
    module = tf.Module()
    module.model = model
    module.sample = get_sampler(model, "fast", False)
    tf.saved_model.save(module, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    images = tf.zeros([2, 5, 4, 3], tf.int32)
    out = loaded.sample(images, tf.constant(0), tf.constant(9, tf.int64), tf.constant(1.0),
                        tf.constant(False), tf.zeros([2], tf.int32))
    np.testing.assert_array_equal(out.numpy(),
                                  generate_images(model, (5, 4), 2, 3, seed=9, method="naive"))


def test_finish_row_reads_only_finished_rows(rng):
    """The row states for row i depend on image rows < i only."""
    for layer_type in ("gated_pixelcnn", "row_lstm", "diagonal_bilstm"):
        model = random_model(3, layer_type)
        stepper = model.stepper()
        assert stepper.row_wise
        x = rng.uniform(size=(2, 5, 4, 3)).astype(np.float32)
        changed = x.copy()
        changed[:, 3:] = rng.uniform(size=(2, 2, 4, 3))  # rows 3 and 4
        state_a = state_b = stepper.initial(2)
        none = stepper.conditions()
        for row in range(3):
            state_a = stepper.finish_row(state_a, x, row, none)
            state_b = stepper.finish_row(state_b, changed, row, none)
        for a, b in zip(tf.nest.flatten(state_a), tf.nest.flatten(state_b)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        state_c = stepper.finish_row(state_b, changed, 3, none)
        assert any(not np.array_equal(a.numpy(), c.numpy()) for a, c in
                   zip(tf.nest.flatten(stepper.finish_row(state_a, x, 3, none)),
                       tf.nest.flatten(state_c)))


def test_layers_without_steps_fall_back_to_naive(caplog):
    class Uncached(PixelCNNBlock):
        Step = None  # no cached step

    model = model_with_layer(Uncached, 1, (5, 4))
    assert not has_steps(model)
    with caplog.at_level("WARNING", logger="pixelcnn_tf.sampling"):
        fast = generate_images(model, (5, 4), 2, 1, seed=1, method="fast")
    assert "using the naive sampler" in caplog.text
    np.testing.assert_array_equal(fast, generate_images(model, (5, 4), 2, 1, seed=1))


def lowbias32(x):
    x = np.uint64(x)
    mask = np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & mask
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & mask
    x ^= x >> np.uint64(16)
    return x


def numpy_noise(seed, k, n):
    lo, hi = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    key1 = lowbias32(lo ^ lowbias32(np.uint64(k)))
    key2 = lowbias32(hi ^ lowbias32(key1))
    bits = [lowbias32(lowbias32(lowbias32(np.uint64(idx)) ^ key1) ^ key2)
            for idx in range(n * 256)]
    return np.array([(float(b >> np.uint64(9)) + 0.5) / 2**23 for b in bits]).reshape(n, 256)


def test_uniform_noise_matches_numpy_reference_in_graph_and_xla():
    seed, k, n = 2**33 + 77, 5, 2
    expected = numpy_noise(seed, k, n)
    args = (tf.constant(seed, tf.int64), tf.constant(k), tf.constant(n))
    for fn in (uniform_noise, tf.function(uniform_noise),
               tf.function(uniform_noise, jit_compile=True)):
        np.testing.assert_allclose(fn(*args).numpy(), expected, rtol=1e-7)


def test_extreme_hash_outputs_map_strictly_inside_the_unit_interval():
    from pixelcnn_tf.sampling import unit_interval
    bits = tf.constant([0, 1, 2**31, 2**32 - 512, 2**32 - 1], tf.uint32)
    u = unit_interval(bits).numpy()
    assert u.dtype == np.float32
    assert (u > 0).all() and (u < 1).all()
    assert u[0] == np.float32(2.0**-24) and u[-1] == np.float32(1 - 2.0**-24)
    gumbel = -np.log(-np.log(u.astype(np.float64)))
    assert np.isfinite(gumbel).all() and gumbel.max() < 17  # bounded: no value can win alone


def test_every_bit_of_the_seed_counts():
    """Seeds that agree in their low 32 bits, or that collided in the old 32-bit key
    (5 and 6,048,813,253), give different noise."""
    base = uniform_noise(tf.constant(5, tf.int64), tf.constant(0), tf.constant(1)).numpy()
    for other in (6_048_813_253, 5 + 2**32, 5 + 2**62):
        noise = uniform_noise(tf.constant(other, tf.int64), tf.constant(0), tf.constant(1))
        assert not np.array_equal(base, noise.numpy())


def test_a_value_with_no_mass_is_never_drawn():
    """A model that puts (nearly) all its mass on one value draws only that value, for
    every sub-pixel of many images and seeds, in both methods (before the fix, seed 10
    drew 248 at one sub-pixel)."""
    model = random_model(1, shape=(8, 8))
    bias = model.output_logits.bias
    bias.assign(tf.concat([[40.0], tf.fill([255], -40.0)], 0))  # P(0) = 1 - 1e-33
    for v in model.output_logits.trainable_variables:
        if v is not bias:
            v.assign(tf.zeros_like(v))
    for method in ("naive", "fast"):
        for seed in range(10, 13) if method == "naive" else range(10, 60):
            out = generate_images(model, (8, 8), 64, 1, seed=seed, method=method)
            assert out.max() == 0, (method, seed)


def test_seed_range_is_checked():
    model = random_model(1)
    for bad in (-1, 2**63, 10**20, 1.5, "3"):
        with pytest.raises(ValueError, match="seed must be"):
            generate_images(model, (5, 4), 1, 1, seed=bad)
    generate_images(model, (5, 4), 1, 1, seed=2**63 - 1)  # the largest int64 is fine


def test_draws_follow_the_softmax():
    """Gumbel-max over counter-based noise: frequencies match softmax(logits / T)."""
    from pixelcnn_tf.likelihood import Categorical
    categorical = Categorical(1)
    logits = np.full(256, -5.0, np.float32)
    logits[:4] = [2.0, 1.0, 0.0, -1.0]
    n = 4000
    batch = tf.constant(np.tile(logits, (n, 1)))
    for temperature in (1.0, 2.0):
        probs = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        values = np.concatenate([
            categorical.draw(batch, tf.zeros([n, 1], tf.int32), 0, tf.constant([False]),
                             uniform_noise(tf.constant(s, tf.int64), 0, n), temperature,
                             False).numpy()[:, 0]
            for s in range(3)])
        freq = np.bincount(values, minlength=256) / len(values)
        # 12,000 draws: the standard error of each frequency is below 0.005.
        np.testing.assert_allclose(freq[:4], probs[:4], atol=0.02)
        assert abs(freq[4:].sum() - probs[4:].sum()) < 0.02


def test_complete_images_keeps_the_top_rows(rng):
    from pixelcnn_tf.sampling import complete_images
    model = random_model(3)
    images = rng.integers(0, 256, size=(2, 5, 4, 3)).astype(np.uint8)
    out = complete_images(model, images, rows=2, n_completions=3, seed=0, method="fast")
    assert out.shape == (2, 3, 5, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, :2], np.repeat(images[:, None, :2], 3, axis=1))
    assert not np.array_equal(out[:, 0, 2:], out[:, 1, 2:])  # different completions
    with pytest.raises(ValueError, match="rows must be between 1 and 4"):
        complete_images(model, images, rows=5)


def test_sampler_cache_does_not_keep_models_alive():
    import gc
    import weakref
    from pixelcnn_tf.sampling import _SAMPLERS
    model = random_model(1)
    generate_images(model, (5, 4), 1, 1, seed=0, method="fast")
    ref = weakref.ref(model)
    assert model in _SAMPLERS
    del model
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("kept_red", [False, True])
def test_mixture_draws_follow_the_likelihood(kept_red):
    """The O(M + C) mixture sampler (component, then inverse CDF per colour) draws pixels
    with the frequencies the NLL scores: exp(-NLL) of each drawn (r, g, b), and given a
    kept red value, p(r, g, b) / p(r)."""
    from pixelcnn_tf.likelihood import LogisticMixture
    dist = LogisticMixture(3, 3)
    gen = np.random.default_rng(3)
    one = gen.normal(size=dist.num_params).astype(np.float32)
    # Layout: 3 mixture logits, 9 means, 9 log-scales, 9 coefficients.
    one[3:12] = gen.uniform(-0.5, 0.5, 9)  # means inside the range
    one[12:21] = -5.5  # narrow logistics (half a bin): frequencies are measurable
    one[21:] *= 3  # strong colour coefficients
    n = 40_000
    params = tf.constant(np.tile(one, (n, 1)))
    images = tf.fill([n, 1, 1, 3], 0)
    red = 140
    if kept_red:
        images = tf.concat([tf.fill([n, 1, 1, 1], red), tf.zeros([n, 1, 1, 2], tf.int32)], -1)
    noise = uniform_noise(tf.constant(7, tf.int64), 0, n, dist.noise_width)
    drawn = dist.draw(params, images[:, 0, 0], 0, tf.constant([kept_red, False, False]),
                      noise, tf.constant(1.0), False).numpy().reshape(n, 3)
    triples, counts = np.unique(drawn, axis=0, return_counts=True)
    exact = np.exp(-dist.nll_per_image(tf.constant(np.tile(one, (len(triples), 1)))[:, None, None],
                                       tf.constant(triples[:, None, None])).numpy())
    if kept_red:
        assert np.all(triples[:, 0] == red)
        p_red = np.exp(dist.subpixel_logits(tf.constant(one[None]), tf.constant([[red, 0, 0]]),
                                            0).numpy()[0, red])
        exact = exact / p_red
    assert exact.sum() > 0.98  # the drawn values cover (almost) all of the mass
    assert 0.5 * np.abs(counts / n - exact).sum() < 0.03  # total variation


@pytest.mark.parametrize("channels,output", [(3, "logistic_mixture"), (1, "categorical")])
def test_weight_normalised_pixelcnn_pp_samples_exactly(channels, output, rng):
    """model.weight_norm (kernels g·v/‖v‖, initialised from data): the fast sampler's
    per-step parameters equal the full pass and fast == naive."""
    model = random_model(channels, "pixelcnn_pp", num_classes=3, output=output,
                         weight_norm=True)
    x = tf.constant(rng.uniform(size=(2, *model.image_shape)).astype(np.float32))
    for k, (got, want) in enumerate(zip(*run_steps(model, x, tf.constant([0, 2])))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"step {k}")
    kwargs = dict(img_dims=(8, 8), n_images=3, n_channels=channels, seed=3, labels=[0, 1, 2])
    np.testing.assert_array_equal(generate_images(model, method="fast", **kwargs),
                                  generate_images(model, method="naive", **kwargs))
