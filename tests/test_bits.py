"""Bit depth (``data.bits``, ``data.threshold``): the quantization rule, every data source,
the distributions at 2^bits levels, sampling, the codec and the SavedModel at low bit
depths, and a binarized run through the CLIs. (That the probabilities of every binary
image sum to one, for every type: test_conformance.py.)"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import randomize_biases, tiny_config
from helpers import run
from pixelcnn_tf import codec, container, generate_images
from pixelcnn_tf import data as data_lib
from pixelcnn_tf.config import ConfigError, load_config
from pixelcnn_tf.data import DataError, load_split, quantize, to_intensities
from pixelcnn_tf.models import build_model


# -- the rule --------------------------------------------------------------------------------
def test_quantize_by_hand():
    v = np.array([0, 1, 84, 85, 127, 128, 200, 255], np.uint8)
    assert quantize(v, 1).numpy().tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert quantize(v, 1, 0.33).numpy().tolist() == [0, 0, 0, 1, 1, 1, 1, 1]  # 0.33·256 = 84.48
    assert quantize(v, 2).numpy().tolist() == [0, 0, 1, 1, 1, 2, 3, 3]
    assert quantize(v, 5).numpy().tolist() == [0, 0, 10, 10, 15, 16, 25, 31]
    np.testing.assert_array_equal(quantize(v, 8).numpy(), v)
    assert to_intensities(np.array([0, 1]), 1).tolist() == [0, 255]
    assert to_intensities(np.array([0, 1, 2, 3]), 2).tolist() == [0, 85, 170, 255]
    with pytest.raises(ValueError, match="needs bits=1"):
        quantize(v, 2, 0.5)


@pytest.mark.parametrize("bits", range(1, 9))
def test_every_level_covers_as_many_intensities_and_shows_as_itself(bits):
    v = np.arange(256, dtype=np.uint8)
    levels = quantize(v, bits).numpy()
    assert np.all(np.bincount(levels) == 2 ** (8 - bits))
    shown = to_intensities(np.arange(2 ** bits), bits)
    assert shown[0] == 0 and shown[-1] == 255
    np.testing.assert_array_equal(quantize(shown, bits).numpy(), np.arange(2 ** bits))


def test_config_bits_and_threshold():
    assert load_config(None).data.bits == 8
    cfg = load_config(None, ["data.bits=1", "data.threshold=0.33"]).data
    assert (cfg.bits, cfg.threshold) == (1, 0.33)
    for overrides, message in [(["data.bits=0"], "data.bits=0 is out of range: it must be >= 1"),
                               (["data.bits=9"], "must be <= 8"),
                               (["data.threshold=0.33"], "add --set data.bits=1"),
                               (["data.bits=1", "data.threshold=1.5"], "data.threshold=1.5")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)


# -- every source ----------------------------------------------------------------------------
def levels_of(split):
    return np.stack([x for x, _ in split.dataset.as_numpy_iterator()])


def test_mnist5k_and_npz_are_quantized_when_loaded(tmp_path, rng):
    full = levels_of(load_split(load_config(None).data, "validation"))
    binary = levels_of(load_split(load_config(None, ["data.bits=1", "data.threshold=0.33"])
                                  .data, "validation"))
    np.testing.assert_array_equal(binary, (full >= 84.48).astype(np.uint8))
    images = rng.integers(0, 256, (6, 4, 5, 3)).astype(np.uint8)
    np.savez(tmp_path / "x.npz", images=images)
    cfg = load_config(None, [f"data.path={tmp_path / 'x.npz'}", "data.bits=3"]).data
    np.testing.assert_array_equal(levels_of(load_split(cfg, "all")), images >> 5)


def test_tfds_sources_are_quantized_when_loaded(monkeypatch):
    monkeypatch.setattr(data_lib, "check_tfds_download", lambda *a: None)
    with tfds.testing.mock_data(num_examples=6):
        for bits in (8, 2):
            cfg = load_config(None, ["data.dataset=mnist", "data.validation_size=3",
                                     f"data.bits={bits}"]).data
            got = levels_of(load_split(cfg, "test"))
            if bits == 8:
                full = got
    np.testing.assert_array_equal(got, full >> 6)  # mock_data repeats its images per seed


# -- models, sampling and the codec at low bit depths -----------------------------------------
LOW = [("gated_pixelcnn", "categorical", 1, 1, {}), ("pixelcnn_pp", "logistic_mixture", 3, 3,
                                                    {"hidden_dim": 6, "n_layers": 1}),
       ("row_lstm", "logistic_mixture", 3, 2, {"multiscale": "{factor: 2}"})]


def low_model(layer_type, output, channels, bits, extra, num_classes=2):
    tf.random.set_seed(0)
    cfg = tiny_config(channels, type=layer_type, output=output, num_mixtures=2,
                      num_classes=num_classes, **extra).model
    shape = (8, 8, channels) if layer_type == "pixelcnn_pp" else (4, 4, channels)
    return randomize_biases(build_model(cfg, shape, bits=bits))


def test_output_sizes_follow_the_bit_depth():
    model = build_model(tiny_config(1).model, (4, 4, 1), bits=1)
    assert model(tf.zeros([2, 4, 4, 1])).shape == (2, 4, 4, 1, 2)  # a Bernoulli per pixel
    assert model.distribution.n_levels == 2
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        build_model(tiny_config(1).model, (4, 4, 1), bits=9)


@pytest.mark.parametrize("layer_type,output,channels,bits,extra", LOW)
def test_low_bit_sampling_fast_equals_naive_and_codes_exactly(layer_type, output, channels,
                                                              bits, extra):
    model = low_model(layer_type, output, channels, bits, extra)
    shape = model.image_shape
    kwargs = dict(img_dims=shape[:2], n_images=4, n_channels=channels, labels=[0, 1, 1, 0])
    for extra_args in (dict(seed=3), dict(greedy=True)):
        fast = generate_images(model, method="fast", **kwargs, **extra_args)
        np.testing.assert_array_equal(fast, generate_images(model, method="naive", **kwargs,
                                                            **extra_args))
    assert fast.max() <= 2 ** bits - 1
    drawn = generate_images(model, method="fast", seed=3, **kwargs)
    assert set(np.unique(drawn)) <= set(range(2 ** bits))
    completed = generate_images(model, method="fast", seed=4, init_images=drawn,
                                start=(2, 0, 0), **kwargs)
    np.testing.assert_array_equal(completed[:, :2], drawn[:, :2])
    with pytest.raises(ValueError, match=f"levels 0..{2 ** bits - 1}"):
        generate_images(model, method="fast", seed=4, init_images=drawn + 2 ** bits,
                        start=(2, 0, 0), **kwargs)
    if hasattr(model, "small"):
        with pytest.raises(codec.CodecError, match="multi-scale"):
            codec.encode(model, drawn, [0, 1, 1, 0])
        return
    labels = np.array([0, 1, 1, 0])
    data = codec.encode(model, drawn, labels, batch_size=3)
    header = codec.read_header(data)
    assert header.bits == bits
    np.testing.assert_array_equal(codec.decode(model, data), drawn)
    with pytest.raises(codec.CodecError, match=f"{bits}-bit levels 0..{2 ** bits - 1}"):
        codec.encode(model, drawn + 2 ** bits, labels)
    other = low_model(layer_type, output, channels, 8 if bits < 8 else 1, extra)
    with pytest.raises(codec.CodecError, match=f"holds {bits}-bit images"):
        codec.decode(other, data)


def test_an_8_bit_file_keeps_its_layout():
    """Version-1 files of 8-bit runs are unchanged: no depth in the flags."""
    model = low_model("gated_pixelcnn", "categorical", 1, 8, {}, num_classes=0)
    data = codec.encode(model, np.zeros((1, 4, 4, 1), np.uint8))
    assert data[6] == container.FORMAT_VERSION and data[6 + 1 + 2 + 2 + 1 + 4 + 2] == 0  # flags


# -- the CLIs on a binarized run -------------------------------------------------------------
@pytest.mark.slow
def test_binarized_run_trains_evaluates_samples_exports_and_codes(tmp_path):
    from PIL import Image
    workdir = str(tmp_path / "run")
    sets = ["data.bits=1", "data.threshold=0.33", "train.steps=4", "train.eval_every=4",
            "train.sample_every=4", "train.checkpoint_every=4", "train.log_every=2",
            "data.validation_size=20", "data.eval_batch_size=20", "model.hidden_dim=4",
            "model.out_dim=8", "model.n_layers=1", "sample.n_images=4"]
    args = [a for s in sets for a in ("--set", s)]
    result = run("train.py", "--config", "configs/quickstart.yml", "--workdir", workdir, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nats/image" in result.stdout
    ev = run("evaluate.py", "--workdir", workdir, "--samples", "4", "--eval", "--out",
             str(tmp_path / "s.png"))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "1-bit" in ev.stdout and "nats/image" in ev.stdout
    record = json.load(open(os.path.join(workdir, "eval_mnist5k_validation.json")))
    assert record["nats_per_image"] == pytest.approx(
        record["bits_per_dim"] * 784 * np.log(2), rel=1e-6)
    assert 0 < record["bits_per_dim"] <= 1.5
    # Resuming or evaluating at another depth names the key.
    for script, extra in (("train.py", ["--config", "configs/quickstart.yml", *args]),
                          ("evaluate.py", [])):
        other = run(script, *extra, "--workdir", workdir, "--set", "data.bits=8",
                    "--set", "data.threshold=null")
        assert other.returncode == 2 and "data.bits=8 differs from the run" in other.stderr
    # The SavedModel: its depth, its nats, levels above 1 refused.
    loaded = tf.saved_model.load(os.path.join(workdir, "saved_model"))
    assert int(loaded.bits.numpy()) == 1
    digits = levels_of(load_split(load_config(
        None, ["data.bits=1", "data.threshold=0.33", "data.validation_size=20"]).data,
        "validation"))[:3]
    out = loaded.signatures["log_prob"](images=tf.constant(digits))
    np.testing.assert_allclose(out["nats"].numpy(), out["bits_per_dim"].numpy() * 784 *
                               np.log(2), rtol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="levels 0..1, data.bits=1"):
        loaded.signatures["log_prob"](images=tf.constant(digits * 255))
    # Binary PNGs (0 / 255) code losslessly; 8-bit PNGs need --quantize.
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, d in enumerate(digits):
        Image.fromarray(to_intensities(d[..., 0], 1)).save(pngs / f"{i}.png")
    packed = str(tmp_path / "d.pxz")
    done = run("compress.py", "--workdir", workdir, str(pngs), "-o", packed)
    assert done.returncode == 0, done.stderr[-2000:]
    back = run("decompress.py", "--workdir", workdir, packed, "-o", str(tmp_path / "back"))
    assert back.returncode == 0, back.stderr[-2000:]
    for i in range(3):
        assert (pngs / f"{i}.png").read_bytes() != b""
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "back" / f"{i}.png")),
                                      np.asarray(Image.open(pngs / f"{i}.png")))
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(np.full((28, 28), 100, np.uint8)).save(grey / "g.png")
    refused = run("compress.py", "--workdir", workdir, str(grey), "-o", str(tmp_path / "g.pxz"))
    assert refused.returncode == 2 and "add --quantize" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    lossy = run("compress.py", "--workdir", workdir, str(grey), "-o", str(tmp_path / "g.pxz"),
                "--quantize")
    assert lossy.returncode == 0, lossy.stderr[-2000:]


def test_levels_of_files_refuses_what_quantizing_would_change():
    cfg = load_config(None, ["data.bits=1"]).data
    ok = np.array([[0, 255]], np.uint8)
    np.testing.assert_array_equal(data_lib.levels_of_files(ok, cfg, "x"), [[0, 1]])
    with pytest.raises(DataError, match="1 of 2 values are not 1-bit levels"):
        data_lib.levels_of_files(np.array([[0, 200]], np.uint8), cfg, "x")
    assert data_lib.levels_of_files(np.array([[0, 200]], np.uint8), cfg, "x",
                                    lossy=True).tolist() == [[0, 1]]
