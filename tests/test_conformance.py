"""The conformance suite: every registered model type (``models.TYPES``), with each output,
1 and 3 colours, and each variant the type takes (dilation rates, two scales), passes the
same checks. A new type is listed here by registering it; it passes when it is correct.

  causality     the Jacobian of an untrained model: each step depends on every earlier
                sub-pixel (no blind spot) and on nothing from its own on (for a model
                drawn group by group, on nothing drawn in its pass or later)
  steps         the cached step-by-step evaluation equals the full pass, class labels too
  sampling      fast == naive, image for image: seeds, temperature, greedy, completion from
                several start positions, labels
  enumeration   at 1 bit, the probabilities of every possible tiny image (all 65,536 grey
                4x4 images; all 4,096 RGB 2x2 images where the type takes that size) sum
                to one, for a model trained a few steps (conditionals far from uniform): a
                model that peeks at a later sub-pixel, or a distribution that does not
                normalise, fails it
  bfloat16      layers computing in bfloat16 give float32 parameters close to float32's
  training      recomputed blocks (train.recompute) give the same loss and gradients,
                dropout included; XLA-compiled ones (train.jit_compile) equal within
                float tolerance (one RGB case per type, the outputs in turn)
  codec         encode → decode gives back every image (types with a cached step, one scale)

Type-specific checks (numpy references, receptive fields, PixelCNN++'s weight norm) live in
the type's own test file.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import tensorflow as tf

from conftest import randomize_biases, tiny_config
from helpers import (assert_causal_without_blind_spots, assert_follows_draw_order,
                     raster_jacobian, run_steps)
from pixelcnn_tf import codec, generate_images
from pixelcnn_tf.config import ConfigError, check_model_fits_images
from pixelcnn_tf.models import build_model, model_types, type_options
from pixelcnn_tf.models.base import unit_images
from pixelcnn_tf.sampling import fast_sampling

OUTPUTS = ("categorical", "logistic_mixture")
VARIANTS = {  # variant → (the model options it sets, the option a type must take)
    "": ({}, None),
    "dilated": ({"dilations": "[2, 3]"}, "dilations"),
    "multiscale": ({"multiscale": "{factor: 2}"}, "multiscale"),
}
SHAPES = {"": (5, 4), "dilated": (6, 5), "multiscale": (6, 4)}  # rates 2, 3 pass the edges
TYPE_SHAPES = {"pixelcnn_pp": (8, 8),  # three resolutions need multiples of 4
               "parallel_multiscale": (4, 8)}  # a 1x2 base image, two doublings
SMALL = {"kernel_size": 3, "input_kernel_size": 5, "num_mixtures": 2, "n_layers": 2}
PARALLEL = {"base_size": 1, "n_layers": 1,  # a 1-pixel-high base, so 2x2 images work
            "base": "{type: gated_pixelcnn, hidden_dim: 6, out_dim: 6, n_layers: 2, "
                    "input_kernel_size: 3}"}


@dataclasses.dataclass(frozen=True)
class Case:
    type: str
    output: str
    channels: int
    variant: str = ""

    def __str__(self):
        return "-".join(filter(None, (self.type, self.variant, self.output[:3],
                                      f"{self.channels}c")))

    def config(self, num_classes: int = 0):
        options, _ = VARIANTS[self.variant]
        taken = type_options(self.type)
        model = {k: v for k, v in {**SMALL, **options}.items() if k in taken}
        if self.type == "pixelcnn_pp":
            model.update(hidden_dim=4, n_layers=1)
        if self.type == "parallel_multiscale":
            model.update(PARALLEL)
        return tiny_config(self.channels, type=self.type, output=self.output,
                           num_classes=num_classes, **model).model

    @property
    def shape(self):
        size = TYPE_SHAPES.get(self.type, SHAPES[self.variant])
        return (*size, self.channels)

    def fits(self, shape) -> bool:
        try:
            check_model_fits_images(self.config(), shape)
            return True
        except ConfigError:
            return False

    def model(self, shape=None, bits: int = 8, num_classes: int = 0, seed: int = 0,
              random_biases: bool = True):
        """An untrained model; with ``random_biases``, non-zero biases and class biases
        everywhere (as initialised they are zero)."""
        tf.random.set_seed(seed)
        model = build_model(self.config(num_classes), shape or self.shape, bits=bits)
        return randomize_biases(model) if random_biases else model


def all_cases():
    """Every type x output x colour count; the variants (which change the stack and the
    sampler's stages, not the colour handling or the output head) once per type, with RGB
    images (the harder case) and the outputs taken in turn, so each variant meets both."""
    taken = {variant: 0 for variant in VARIANTS}  # types so far that take the variant
    for name, variant in itertools.product(model_types(), VARIANTS):
        option = VARIANTS[variant][1]
        if option is not None and option not in type_options(name):
            continue
        if option is None:
            combinations = itertools.product(OUTPUTS, (1, 3))
        else:
            combinations = [(OUTPUTS[taken[variant] % len(OUTPUTS)], 3)]
            taken[variant] += 1
        for output, channels in combinations:
            case = Case(name, output, channels, variant)
            if case.fits(case.shape):
                yield case


CASES = list(all_cases())
STEPPED = [c for c in CASES if fast_sampling(c.model())]
CODED = [c for c in STEPPED if c.variant != "multiscale"]


def test_every_type_is_in_the_suite():
    assert {c.type for c in CASES} == set(model_types())
    assert {c.type for c in STEPPED} == set(model_types())  # every type samples fast
    assert {(c.variant, c.output, c.channels) for c in CASES} >= {
        ("", o, c) for o in OUTPUTS for c in (1, 3)}


def walked(model, x):
    """The networks the samplers walk step by step, each with its input and context: the
    model; for a multi-scale model the small network on x[::f, ::f] and the conditional
    network on x given that small image; for a parallel multiscale model its base model
    on the base image (its groups are drawn by full passes of their networks)."""
    if hasattr(model, "draw_order"):
        return [(model.base, model.level_image(x, 0), None)]
    if not hasattr(model, "small"):
        return [(model, x, None)]
    small = model.small_image(x)
    return [(model.small, small, None), (model.large, x, small)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_causal_by_jacobian(case):
    """Untrained, as initialised. Categorical outputs see the sub-pixels before them,
    mixture outputs the pixels before them; a multi-scale model's conditional network
    sees the earlier pixels and the small image taken from x (beyond the causal past),
    nothing else."""
    model = case.model(random_biases=False)
    per_step = 1 if case.output == "categorical" else case.channels
    if hasattr(model, "draw_order"):  # drawn group by group, not in raster order
        assert_follows_draw_order(model, case.shape)
        return
    if not hasattr(model, "small"):
        assert_causal_without_blind_spots(raster_jacobian(model, case.shape), per_step)
        return
    small_shape = model.small.image_shape
    assert_causal_without_blind_spots(raster_jacobian(model.small, small_shape), per_step)

    class Conditional(tf.Module):  # x → the conditional network's parameters
        def __call__(self, x, labels=None):
            return model.large(x, context=model.small_image(x))

    jac = raster_jacobian(Conditional(), case.shape)  # [steps, H·W·C]
    h, w, c = case.shape
    grid = np.zeros((h, w), bool)
    grid[::model.factor, ::model.factor] = True
    grid = np.repeat(grid.reshape(-1), c)[None, :]
    later = np.arange(jac.shape[1])[None, :] >= np.arange(jac.shape[0])[:, None] * per_step
    assert np.all(jac[later & ~grid] == 0.0), "the conditional network sees a later pixel"
    assert np.any(jac[later & grid] != 0.0), "the small image does not reach the network"


@pytest.mark.parametrize("case", STEPPED, ids=str)
def test_steps_equal_the_full_pass(case, rng):
    """The cached step of every layer, with class labels, equals the full pass."""
    model = case.model(num_classes=3)
    x = tf.constant(rng.uniform(size=(2, *case.shape)).astype(np.float32))
    for network, inputs, context in walked(model, x):
        got, want = run_steps(network, inputs, tf.constant([0, 2]), context)
        for k, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=f"step {k}")


@pytest.mark.parametrize("case", STEPPED, ids=str)
def test_fast_equals_naive(case, rng):
    """Image for image, through one compiled sampler per method: seeds, temperature,
    greedy, completions from several starts (inside a pixel too), class labels."""
    model = case.model(num_classes=2)
    height, width, channels = case.shape
    kwargs = dict(img_dims=(height, width), n_images=4, n_channels=channels,
                  labels=[0, 1, 1, 0])
    init = rng.integers(0, 256, size=(4, *case.shape)).astype(np.uint8)
    settings = [dict(seed=11), dict(seed=12, temperature=0.7), dict(greedy=True)]
    starts = [(2, 0, 0), (height - 1, width - 1, channels - 1)]
    if channels == 3:
        starts.append((1, 1, 1))  # the mixture keeps red, draws green and blue
    settings += [dict(seed=5, init_images=init, start=s) for s in starts]
    for extra in settings:
        naive = generate_images(model, method="naive", **kwargs, **extra)
        fast = generate_images(model, method="fast", **kwargs, **extra)
        np.testing.assert_array_equal(fast, naive, err_msg=str(extra.get("start", extra)))
        if "start" in extra:
            k0 = (extra["start"][0] * width + extra["start"][1]) * channels + extra["start"][2]
            flat, given = fast.reshape(4, -1), init.reshape(4, -1)
            np.testing.assert_array_equal(flat[:, :k0], given[:, :k0])
            assert np.any(flat[:, k0:] != given[:, k0:])
    drawn = generate_images(model, method="fast", seed=11, **kwargs)
    assert len(np.unique(drawn)) > 1  # a sampled (not greedy) image varies
    other = generate_images(model, method="fast", seed=11, **{**kwargs, "labels": [1, 0, 0, 1]})
    assert not np.array_equal(drawn, other)  # the labels reach the network


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bfloat16_layers_match_float32(case, rng):
    """Layers computing in bfloat16 on float32 variables return float32 parameters
    close to the float32 model's."""
    full = case.model(random_biases=False)
    low = build_model(case.config(), case.shape, compute_dtype=tf.bfloat16)
    for ours, theirs in zip(low.trainable_variables, full.trainable_variables):
        ours.assign(theirs)
    x = tf.constant(rng.uniform(size=(2, *case.shape)).astype(np.float32))
    for out, want in zip(tf.nest.flatten(low(x)), tf.nest.flatten(full(x))):
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out.numpy(), want.numpy(), atol=0.1)
    assert all(v.dtype == tf.float32 for v in low.trainable_variables)


# -- training: recomputation and the compiled step -----------------------------------------
def loss_and_gradients(model, images, labels, training=True, recompute=False):
    """Mean bits/dim of uint8 ``images`` and its gradients for every trainable variable."""
    with tf.GradientTape() as tape:
        params = model(unit_images(images, model.distribution.n_levels), labels,
                       training=training, recompute=recompute)
        loss = model.distribution.mean_bits_per_dim(params, images)
    return loss, tape.gradient(loss, model.trainable_variables)


def training_model(case):
    """The case's class-conditional model, with dropout where the type has it (its masks
    must be drawn alike by a recomputed block), built the same way on every call."""
    config = case.config(num_classes=2)
    if "dropout" in type_options(case.type):
        config = dataclasses.replace(config, dropout=0.5)
    tf.random.set_seed(0)
    return randomize_biases(build_model(config, case.shape))


def assert_same_loss_and_gradients(got, want):
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-5)
    for g, w in zip(got[1], want[1]):
        assert g is not None
        g, w = tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(w).numpy()
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(w).max()))


# One case per type and variant (the output head is not part of a block), RGB where the
# type takes it (the last case of each: RGB, mixture).
RECOMPUTED = list({(c.type, c.variant): c for c in CASES}.values())


@pytest.mark.parametrize("case", RECOMPUTED, ids=str)
def test_recompute_gives_the_same_loss_and_gradients(case, rng):
    """``train.recompute``: every block rerun in the backward pass, dropout masks too."""
    images = tf.constant(rng.integers(0, 256, (3, *case.shape)), tf.uint8)
    labels = tf.constant([0, 1, 1])
    step = tf.function(loss_and_gradients, autograph=False)  # as the Trainer runs it
    want = loss_and_gradients(training_model(case), images, labels)
    got = step(training_model(case), images, labels, recompute=True)
    assert_same_loss_and_gradients(got, want)


# One case per type, RGB, the outputs taken in turn: XLA's compilation is the slow part.
COMPILED = [rgb[i % len(rgb)] for i, rgb in enumerate(
    [c for c in CASES if c.type == name and not c.variant and c.channels == 3]
    for name in model_types())]


@pytest.mark.parametrize("case", COMPILED, ids=str)
def test_compiled_loss_and_gradients_equal_the_plain_ones(case, rng):
    """``train.jit_compile``: XLA's loss and gradients within float tolerance of the plain
    graph's (without dropout, whose stateless masks XLA draws differently)."""
    model = training_model(case)
    images = tf.constant(rng.integers(0, 256, (3, *case.shape)), tf.uint8)
    labels = tf.constant([0, 1, 1])
    plain = tf.function(loss_and_gradients, autograph=False)
    compiled = tf.function(loss_and_gradients, autograph=False, jit_compile=True)
    assert_same_loss_and_gradients(compiled(model, images, labels, training=False),
                                   plain(model, images, labels, training=False))


# -- enumeration -----------------------------------------------------------------------------
ENUMERATED = [(c, (4, 4, 1)) for c in CASES if c.channels == 1 and c.fits((4, 4, 1))]
ENUMERATED += [(c, (2, 2, 3)) for c in CASES if c.channels == 3 and c.fits((2, 2, 3))]


def every_binary_image(shape) -> np.ndarray:
    """All 2^(H·W·C) binary images ``[2^K, H, W, C]`` uint8 (K ≤ 16)."""
    k = int(np.prod(shape))
    bits = (np.arange(2 ** k)[:, None] >> np.arange(k)[None, :]) & 1  # [2^K, K]
    return bits.reshape(-1, *shape).astype(np.uint8)


def train_a_few_steps(model, images, labels, steps=8, learning_rate=0.05):
    """Adam on ``images`` (levels) so the conditionals move far from uniform."""
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    for _ in range(steps):
        _, grads = loss_and_gradients(model, images, labels, training=False)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))


@pytest.mark.parametrize("case,shape", ENUMERATED, ids=lambda v: str(v) if isinstance(
    v, Case) else "x".join(map(str, v)))
def test_probabilities_of_every_binary_image_sum_to_one(case, shape):
    model = case.model(shape, bits=1, num_classes=2)
    gen = np.random.default_rng(0)
    stripes = (np.arange(shape[0])[:, None, None] % 2).repeat(shape[1], 1).repeat(shape[2], 2)
    batch = np.where(gen.uniform(size=(16, *shape)) < 0.15, 1 - stripes, stripes)
    train_a_few_steps(model, tf.constant(batch, tf.uint8), tf.constant([1] * 16))
    images = every_binary_image(shape)
    log_probs = []
    for start in range(0, len(images), 8192):
        part = tf.constant(images[start:start + 8192])
        labels = tf.ones([len(part)], tf.int32)
        params = model(unit_images(part, 2), labels)
        log_probs.append(-model.distribution.nll_per_image(params, part).numpy())
    log_probs = np.concatenate(log_probs).astype(np.float64)
    total = np.logaddexp.reduce(log_probs)
    assert abs(total) < 1e-4, f"the probabilities sum to exp({total:.3g})"
    # Far from uniform: the likeliest image is over 50 times likelier than the least.
    assert log_probs.max() - log_probs.min() > np.log(50)


# -- codec -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CODED, ids=str)
def test_codec_round_trip(case, rng):
    """Untrained with random biases (class-conditional): 10 images in batches of 4, 4, 2
    decode bit for bit, and the code length is the model's NLL (less where the model puts
    a value below the 2^-24 floor of the coder's frequencies)."""
    model = case.model(num_classes=2)
    images = rng.integers(0, 256, (10, *case.shape)).astype(np.uint8)
    images[0], images[1] = 0, 255
    labels = np.arange(10) % 2
    encoded = codec.encode_with_stats(model, images, labels, batch_size=4)
    np.testing.assert_array_equal(codec.decode(model, encoded.data), images)
    params = model(unit_images(images, 256), tf.constant(labels))
    nats = float(tf.reduce_sum(model.distribution.nll_per_image(params, images)))
    model_bits = nats / np.log(2)
    assert 0.99 * model_bits <= encoded.ideal_bits <= model_bits * (1 + 1e-5)
