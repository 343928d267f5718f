"""The Parallel Multiscale PixelCNN's own checks (the conformance suite runs the shared
ones: causality by its drawing order, fast == naive, enumeration, bfloat16, codec): the
drawing order worked by hand, the likelihood against a numpy reference, the number of
network passes, other base types, its config errors, and a run through the CLIs."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import randomize_biases, tiny_config
from helpers import run, tiny_config_file
from pixelcnn_tf import generate_images
from pixelcnn_tf.config import ConfigError, check_model_fits_images, load_config
from pixelcnn_tf.models import build_model
from pixelcnn_tf.models.base import unit_images
from pixelcnn_tf.models.parallel_multiscale import GroupNetwork

BASE = "{type: gated_pixelcnn, hidden_dim: 6, out_dim: 6, n_layers: 2, input_kernel_size: 3}"


def parallel_model(channels, shape, output="categorical", base=BASE, base_size=1,
                   num_classes=0, seed=0):
    tf.random.set_seed(seed)
    cfg = tiny_config(channels, type="parallel_multiscale", output=output, num_mixtures=2,
                      n_layers=1, base_size=base_size, base=base, num_classes=num_classes)
    return randomize_biases(build_model(cfg.model, (*shape, channels)))


def test_draw_order_by_hand():
    """4x4 grey, a 1x1 base: the base pixel, then x[::2, ::2]'s groups (one pixel each),
    then the full image's groups (four pixels each)."""
    model = parallel_model(1, (4, 4))
    np.testing.assert_array_equal(model.draw_order()[..., 0], [[0, 4, 1, 4],
                                                               [5, 6, 5, 6],
                                                               [2, 4, 3, 4],
                                                               [5, 6, 5, 6]])
    rgb = parallel_model(3, (2, 2)).draw_order()  # categorical: one pass per colour
    np.testing.assert_array_equal(rgb[0, 0], [0, 1, 2])
    np.testing.assert_array_equal(rgb[1, 1], [9, 10, 11])
    mixture = parallel_model(3, (2, 2), output="logistic_mixture").draw_order()
    np.testing.assert_array_equal(mixture[..., 0], [[0, 1], [2, 3]])
    assert np.all(mixture == mixture[..., :1])  # a pixel's colours are drawn together


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("channels", [1, 3])
def test_likelihood_against_numpy(channels, rng):
    """nll_per_image = the base model's NLL of x[::4, ::4] + for every group the NLL of
    its pixels (numpy log-softmax of its logits at the pixel's value), with the pixels
    found by their positions in x, not through the code's space-to-depth."""
    model = parallel_model(channels, (8, 4), base_size=2)  # base 2x1, two doublings
    images = rng.integers(0, 256, (3, 8, 4, channels)).astype(np.uint8)
    base_params, groups = model(unit_images(images, 256))
    want = model.base.distribution.nll_per_image(base_params, images[:, ::4, ::4]).numpy()
    for index, logits in enumerate(groups):  # [B, r, s, C, 256]
        level, g = divmod(index, 3)
        step = 2 // 2 ** level  # x_1 = x[::2, ::2], x_2 = x
        di, dj = divmod(g + 1, 2)
        logp = log_softmax(logits.numpy().astype(np.float64))
        for b, a, col, c in np.ndindex(*logp.shape[:4]):
            value = images[b, (2 * a + di) * step, (2 * col + dj) * step, c]
            want[b] -= logp[b, a, col, c, value]
    got = model.distribution.nll_per_image((base_params, groups), images).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sampling_takes_a_few_passes_per_doubling(monkeypatch):
    """The fast sampler runs each group network's body once and its head once per colour
    group: 3 bodies and 3·C heads per doubling (counted while tracing, where each call is
    one pass over every pixel of its group), not one per pixel."""
    model = parallel_model(3, (8, 8))  # 1x1 base, three doublings
    calls = {"features": 0, "head": 0}
    for name in calls:
        original = getattr(GroupNetwork, name)

        def counted(self, *args, _name=name, _original=original):
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(GroupNetwork, name, counted)
    generate_images(model, (8, 8), 2, 3, seed=0, method="fast")
    assert calls == {"features": 3 * 3, "head": 3 * 3 * 3}


@pytest.mark.parametrize("channels,output", [(1, "categorical"), (3, "logistic_mixture")])
def test_groups_drawn_in_pieces_give_the_same_images(monkeypatch, channels, output):
    """A large group is drawn in pieces of positions (sampling.GROUP_PIECE); each
    sub-pixel keeps its own noise and kept values, so pieces of 3 positions (6 pieces for
    the 16 positions of each last group here) give the images of one piece, completions
    and labels included."""
    from pixelcnn_tf import sampling
    kwargs = dict(seed=3, labels=[0, 1], init_images=np.full((2, 8, 8, channels), 200,
                                                             np.uint8), start=(3, 5, 0))
    calls = []
    draw_positions = sampling._draw_positions
    monkeypatch.setattr(sampling, "_draw_positions",
                        lambda *args: calls.append(1) or draw_positions(*args))
    model = parallel_model(channels, (8, 8), output, num_classes=2)
    whole = generate_images(model, (8, 8), 2, channels, **kwargs)
    one_piece_each, calls[:] = len(calls), []
    monkeypatch.setattr(sampling, "GROUP_PIECE", 3 * model.distribution.noise_width)
    pieces = generate_images(parallel_model(channels, (8, 8), output, num_classes=2),
                             (8, 8), 2, channels, **kwargs)
    assert len(calls) > one_piece_each  # (traced calls: the pieces of every group)
    np.testing.assert_array_equal(pieces, whole)
    assert np.all(pieces[:, :3] == 200)


@pytest.mark.parametrize("base", [
    "{type: pixelcnn_pp, hidden_dim: 4, n_layers: 1}",
    "{type: pixelsnail, hidden_dim: 4, out_dim: 8, n_layers: 1, input_kernel_size: 3}"])
def test_other_base_types(base, rng):
    """Any raster-order type models the base image (here 4x4 of an 8x8 image): fast ==
    naive through its own cached sampler, and completions keep the given sub-pixels."""
    model = parallel_model(1, (8, 8), output="logistic_mixture", base=base, base_size=4)
    init = rng.integers(0, 256, (2, 8, 8, 1)).astype(np.uint8)
    for extra in [dict(seed=3), dict(seed=4, init_images=init, start=(5, 2, 0))]:
        fast = generate_images(model, (8, 8), 2, 1, method="fast", **extra)
        naive = generate_images(model, (8, 8), 2, 1, method="naive", **extra)
        np.testing.assert_array_equal(fast, naive)
    np.testing.assert_array_equal(fast.reshape(2, -1)[:, :42], init.reshape(2, -1)[:, :42])


@pytest.mark.parametrize("overrides,message", [
    (["model.base_size=4"], r"model.base_size=4 does not fit images 28x28: .* base sizes "
                            r"that fit: 14, 7"),
    (["model.base={type: gated_pixelcnn, output: logistic_mixture}"],
     r"model.base.output='logistic_mixture': the base model takes model.output"),
    (["model.base={type: parallel_multiscale}"], r"model.base.type='parallel_multiscale'"),
    (["model.base={type: gated_pixelcnn, multiscale: {factor: 2}}"], r"raster type"),
    (["model.base={type: row_lstm, dilations: [1, 2]}"],
     r"model.base.dilations=\[1, 2\] is not an option of model.base.type=row_lstm"),
    (["model.base={type: gated_pixelcnn, colour: 3}"], r"unknown config key 'model.base.colour'"),
    (["model.base={type: gated_pixelcnn, hidden_dim: 0}"], r"model.base.hidden_dim=0 is out"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg = load_config("configs/quickstart_parallel_multiscale.yml", overrides)
        check_model_fits_images(cfg.model, (28, 28, 1))


def test_recorded_config_names_the_whole_base():
    cfg = load_config("configs/quickstart_parallel_multiscale.yml")
    base = cfg.model.base
    assert (base.type, base.hidden_dim, base.n_layers, base.output) == (
        "gated_pixelcnn", 16, 5, "categorical")
    default = load_config(None, ["model.type=parallel_multiscale"]).model.base
    assert default.type == "gated_pixelcnn" and default.hidden_dim == 24


@pytest.mark.slow
def test_trains_evaluates_samples_exports_and_compresses_through_the_clis(tmp_path):
    """train.py → evaluate.py (bits/dim and nats, a sample grid) → the SavedModel's
    log_prob equal to evaluate.py's figure → compress.py / decompress.py bit for bit."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "rgb.npz"
    images = rng.integers(0, 256, (20, 8, 8, 3)).astype(np.uint8)
    np.savez(npz, images=images)
    workdir = str(tmp_path / "run")
    settings = ["model.type=parallel_multiscale", "model.out_dim=64",
                "model.input_kernel_size=7", "model.hidden_dim=6", "model.base_size=2",
                f"model.base={BASE}", "model.output=logistic_mixture", "model.num_mixtures=2"]
    args = [a for s in settings for a in ("--set", s)]
    result = run("train.py", "--config", tiny_config_file(tmp_path, npz), "--workdir", workdir,
                 "--set", "sample.method=fast", "--set", "train.sample_every=100", *args)
    assert result.returncode == 0, result.stderr
    assert f"new run in {workdir}: parallel_multiscale" in result.stdout
    ev = run("evaluate.py", "--workdir", workdir, "--samples", "2", "--eval", "--out",
             str(tmp_path / "s.png"), "--split", "all")
    assert ev.returncode == 0, ev.stderr
    assert "bits/dim over 20 images" in ev.stdout and "nats/image" in ev.stdout
    assert (tmp_path / "s.png").exists() and "naive sampler" not in ev.stderr
    record = json.load(open(os.path.join(workdir, "eval_npz_rgb_all.json")))

    loaded = tf.saved_model.load(os.path.join(workdir, "saved_model"))
    bits = loaded.signatures["log_prob"](images=tf.constant(images))["bits_per_dim"].numpy()
    assert bits.mean() == pytest.approx(record["bits_per_dim"], abs=1e-4)
    assert loaded.sampling_method.numpy() == b"fast"

    packed = str(tmp_path / "x.pxz")
    done = run("compress.py", "--workdir", workdir, str(npz), "-o", packed)
    assert done.returncode == 0, done.stderr
    back = run("decompress.py", "--workdir", workdir, packed, "-o", str(tmp_path / "o.npz"))
    assert back.returncode == 0, back.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "o.npz")["images"], images)
