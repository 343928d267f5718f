"""What several test files share: numpy references, the Jacobian causality check, the
step-by-step walk, small models and the CLI runner. Test files import from here, never
from each other."""
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
import yaml

from conftest import ROOT, randomize_biases, tiny_config
from pixelcnn_tf.models import build_model
from pixelcnn_tf.nn.layers import Position


def raster_jacobian(model, image_shape, seed=0, labels=None, n_images=8):
    """|d(projected output at step k) / d(input sub-pixel k')| summed over a few random
    images, as a [K, K'] matrix in raster order. Categorical output: steps are sub-pixels
    ((i, j, c) with c fastest), K = H·W·C; logistic mixture: steps are pixels, K = H·W."""
    h, w, c = image_shape
    gen = np.random.default_rng(seed)
    x = tf.constant(gen.uniform(size=(n_images, h, w, c)).astype(np.float32))
    if labels is not None:
        labels = tf.repeat(labels, n_images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, labels)  # [N, H, W, C, 256] or [N, H, W, P]
        proj = tf.constant(gen.normal(size=(1, *out.shape[1:])).astype(np.float32))
        y = tf.reduce_sum(out * proj, axis=-1)  # [N, H, W, C] or [N, H, W]
    jac = tape.batch_jacobian(y, x)  # [N, *y.shape[1:], H, W, C]
    k = int(np.prod(y.shape[1:]))
    return np.abs(jac.numpy().reshape(n_images, k, h * w * c)).sum(axis=0)  # [K, K']


def assert_causal_without_blind_spots(jac, per_step: int):
    """Step k (``per_step`` sub-pixels each) depends on every earlier sub-pixel's input
    somewhere and on nothing from sub-pixel ``k·per_step`` on."""
    k = jac.shape[0]
    first_unseen = np.arange(k)[:, None] * per_step  # the step's first sub-pixel
    future = np.arange(jac.shape[1])[None, :] >= first_unseen
    assert np.all(jac[future] == 0.0), "an output depends on the current or a later input"
    for out in range(1, k):
        assert np.any(jac[out, :out * per_step] != 0.0), f"step {out} ignores its inputs"


def assert_follows_draw_order(model, image_shape, seed=0, n_images=4):
    """A parallel multiscale model, untrained: the parameters of every group's sub-pixel
    depend only on sub-pixels drawn in earlier passes (``model.draw_order()``: the lower
    resolutions, earlier groups and earlier colours of the same pixel), and on the
    low-resolution pixel of its own 2x2 block (and, for a colour after the first, on the
    colour before it), so the network is not dead; the base model is causal in raster
    order."""
    h, w, c = image_shape
    base_shape = model.base.image_shape
    per_step = 1 if model.distribution.groups == c else c
    assert_causal_without_blind_spots(raster_jacobian(model.base, base_shape), per_step)
    order = model.draw_order()
    gen = np.random.default_rng(seed)
    x = tf.constant(gen.uniform(size=(n_images, h, w, c)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        _, groups = model(x)
        projected = [tf.reduce_sum(p * gen.normal(size=p.shape[1:]).astype(np.float32), -1)
                     for p in groups]  # [N, r, s, C] (categorical) or [N, r, s]
    for index, y in enumerate(projected):
        level, g = divmod(index, 3)
        g += 1
        step = 2 ** (model.doublings - 1 - level)
        di, dj = divmod(g, 2)
        jac = np.abs(tape.batch_jacobian(y, x).numpy()).sum(0)  # [r, s, (C,) H, W, C]
        jac = jac.reshape(*jac.shape[:2], -1, h, w, c)  # [r, s, colours, H, W, C]
        for a, b, colour in np.ndindex(*jac.shape[:3]):
            i, j = (2 * a + di) * step, (2 * b + dj) * step
            seen = jac[a, b, colour]
            assert np.all(seen[order >= order[i, j, colour]] == 0.0), (
                f"level {level} group {g} pixel ({i}, {j}) colour {colour} sees a sub-pixel "
                f"drawn with it or later")
            assert np.any(seen[i - di * step, j - dj * step] != 0.0), "ignores its block"
            if colour > 0:
                assert seen[i, j, colour - 1] != 0.0, "ignores the colour before it"


def numpy_masked_conv(x, kernel, bias, mask, dilation=1):
    """Reference: stride 1, zero (SAME) padding, cross-correlation like tf.nn.conv2d; tap
    (di, dj) reads the input at (i + d·(di - kh//2), j + d·(dj - kw//2))."""
    w = kernel * mask
    kh, kw, _, cout = w.shape
    b, h, wd, _ = x.shape
    d = dilation
    ph, pw = d * (kh // 2), d * (kw // 2)
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    out = np.zeros((b, h, wd, cout), np.float64)
    for di in range(kh):
        for dj in range(kw):
            out += np.einsum("bhwc,co->bhwo", xp[:, d * di:d * di + h, d * dj:d * dj + wd, :],
                             w[di, dj])
    return out + bias


def multiscale_model(channels, layer_type="gated_pixelcnn", output="categorical",
                     num_classes=0, factor=2, shape=(6, 4), seed=0, random_biases=True):
    """A small untrained multi-scale model, with random non-zero biases unless
    ``random_biases`` is False (as initialised: zero biases)."""
    tf.random.set_seed(seed)
    cfg = tiny_config(channels, type=layer_type, output=output, num_mixtures=2,
                      num_classes=num_classes, kernel_size=3, input_kernel_size=5,
                      multiscale=f"{{factor: {factor}}}")
    model = build_model(cfg.model, (*shape, channels))
    return randomize_biases(model) if random_biases else model


def run_steps(model, x, labels, context=None):
    """The incremental evaluation over every step in order → the step parameters, as a
    list in raster order, with the full pass's parameters of the same steps. ``context``:
    the small image, for a multi-scale conditional network."""
    stepper = model.stepper()
    distribution = model.distribution
    full = model(x, labels) if context is None else model(x, labels, context=context)
    height, width, _ = model.image_shape
    cache = stepper.initial(x.shape[0])
    conditions = stepper.conditions(labels, context)
    got, want = [], []
    for i in range(height):
        if i > 0 and stepper.row_wise:  # row-wise layers: row i - 1 is complete
            cache = stepper.finish_row(cache, x, i - 1, conditions)
        for j in range(width):
            for c in range(distribution.groups):
                cache, params = stepper.step(cache, x, Position(i, j, c), conditions)
                cache = stepper.record(cache, x, Position(i, j, c))
                got.append(params.numpy())
                want.append(distribution.at(full, i, j, c).numpy())
    return got, want


def _python(argv, env, timeout):
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run(script, *args, env=None, timeout=300):
    return _python([os.path.join(ROOT, script), *args], env, timeout)


def run_code(code, env=None, timeout=600):
    """``python -c code`` in a fresh process (for settings TensorFlow reads once, at
    start-up), with the tests' modules importable."""
    tests = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    return _python(["-c", code], {"PYTHONPATH": tests, **(env or {})}, timeout)


def tiny_config_file(tmp_path, npz):
    config = {
        "data": {"dataset": "npz", "path": str(npz), "batch_size": 4, "eval_batch_size": 5,
                 "validation_size": 6},
        "model": {"hidden_dim": 4, "out_dim": 8, "n_layers": 1, "input_kernel_size": 3},
        "train": {"steps": 4, "log_every": 2, "eval_every": 2, "checkpoint_every": 2,
                  "sample_every": 4, "learning_rate": 0.01},
        "sample": {"n_images": 4},
    }
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(config))
    return str(path)
