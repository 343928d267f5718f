"""SavedModel export: loaded in a fresh process where pixelcnn_tf cannot be imported."""
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from pixelcnn_tf import generate_images
from pixelcnn_tf.export import export_saved_model
from pixelcnn_tf.trainer import Trainer

SHAPE = (5, 4, 3)

LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    try:
        import pixelcnn_tf  # noqa: F401
        sys.exit("pixelcnn_tf must not be importable here")
    except ImportError:
        pass
    path, out, conditional = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    m = tf.saved_model.load(path)
    images = np.load(out + ".in.npz")["images"]
    labels = {"labels": tf.constant([1, 0, 1], tf.int32)} if conditional else {}
    lp = m.signatures["log_prob"](images=tf.constant(images), **labels)["bits_per_dim"]
    none = {"labels": tf.zeros([0], tf.int32)} if conditional else {}
    empty = m.signatures["log_prob"](images=tf.constant(images[:0]), **none)["bits_per_dim"]
    default = m.signatures["serving_default"](images=tf.constant(images), **labels)
    s = m.signatures["sample"](n=tf.constant(3), seed=tf.constant(5, tf.int64),
                               temperature=tf.constant(0.8), **labels)["images"]
    c = m.signatures["complete"](images=tf.constant(images), rows=tf.constant(2),
                                 seed=tf.constant(1, tf.int64), **labels)["images"]
    none_completed = m.signatures["complete"](images=tf.constant(images[:0]),
                                              rows=tf.constant(1),
                                              seed=tf.constant(1, tf.int64), **none)["images"]
    np.savez(out, log_prob=lp.numpy(), empty=empty.numpy(),
             none_completed=none_completed.numpy(),
             default=default["bits_per_dim"].numpy(),
             sample=s.numpy(), complete=c.numpy())
    json.dump({"image_shape": m.image_shape.numpy().tolist(),
               "num_classes": int(m.num_classes.numpy()),
               "config": m.config_yaml.numpy().decode(),
               "method": m.sampling_method.numpy().decode()}, open(out + ".json", "w"))
""")


def trained_trainer(tmp_path, num_classes=0, layer_type="pixelcnn", shape=SHAPE, **model):
    cfg = tiny_config(3, num_classes=num_classes, type=layer_type, **model)
    cfg.train.learning_rate = 0.01
    trainer = Trainer(cfg, str(tmp_path / "run"), shape)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (6, *shape)).astype(np.uint8))
    for _ in range(5):
        trainer.train_step(images, tf.constant([0, 1] * 3))
    return trainer


def load_in_fresh_process(tmp_path, path, images, conditional):
    out = str(tmp_path / "out")
    np.savez(out + ".in.npz", images=images)
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, str(script), path, out, str(int(conditional))],
                            cwd=str(tmp_path), env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out + ".npz")), json.load(open(out + ".json"))


MIXTURE = dict(output="logistic_mixture", num_mixtures=2)
PP = dict(MIXTURE, hidden_dim=6, n_layers=1, dropout=0.5)
MULTISCALE = dict(multiscale="{factor: 2}")
PARALLEL = dict(base_size=1, n_layers=1, base="{type: gated_pixelcnn, hidden_dim: 6, "
                "out_dim: 6, n_layers: 2, input_kernel_size: 3}")


# Every type once; between them both outputs, with and without classes, the multi-scale
# container and PixelCNN++'s weight norm and dropout (each case exports and loads a
# SavedModel in a fresh process: the slow part).
EXPORTED = [
    ("pixelcnn", 2, {}), ("gated_pixelcnn", 2, MULTISCALE),
    ("row_lstm", 0, dict(MULTISCALE, **MIXTURE)), ("diagonal_bilstm", 0, {}),
    ("pixelsnail", 0, dict(MIXTURE, num_heads=2)),
    ("pixelcnn_pp", 2, dict(PP, weight_norm=True)),
    ("parallel_multiscale", 2, dict(PARALLEL, **MIXTURE))]


def exported_shape(layer_type, model_keys):
    """The image shape of an ``EXPORTED`` case."""
    return ((8, 4, 3) if layer_type == "pixelcnn_pp" else
            (6, 4, 3) if "multiscale" in model_keys else
            (4, 8, 3) if layer_type == "parallel_multiscale" else SHAPE)


def test_every_type_is_exported():
    from pixelcnn_tf.models import model_types
    assert {layer_type for layer_type, _, _ in EXPORTED} == set(model_types())
    assert {keys.get("output", "categorical") for _, _, keys in EXPORTED} == {
        "categorical", "logistic_mixture"} and {n for _, n, _ in EXPORTED} == {0, 2}


@pytest.mark.parametrize("layer_type,num_classes,model_keys", EXPORTED)
def test_signatures_match_the_library_in_a_fresh_process(tmp_path, layer_type, num_classes,
                                                         model_keys):
    shape = exported_shape(layer_type, model_keys)
    trainer = trained_trainer(tmp_path, num_classes, layer_type, shape, **model_keys)
    model = trainer.model
    path = export_saved_model(model, trainer.config, str(tmp_path / "sm"))
    images = np.random.default_rng(1).integers(0, 256, (3, *shape)).astype(np.uint8)
    labels = np.array([1, 0, 1], np.int32) if num_classes else None
    got, meta = load_in_fresh_process(tmp_path, path, images, bool(num_classes))

    params = model(images / 255.0, None if labels is None else tf.constant(labels))
    expected = (model.distribution.nll_per_image(params, images).numpy()
                / (np.prod(shape) * math.log(2)))
    np.testing.assert_allclose(got["log_prob"], expected, atol=1e-5)
    np.testing.assert_array_equal(got["default"], got["log_prob"])
    assert got["empty"].shape == (0,)  # an empty batch scores to an empty result
    assert got["none_completed"].shape == (0, *shape)  # and completes to no images
    ds = tf.data.Dataset.from_tensor_slices(
        (images, labels if labels is not None else np.zeros(3, np.int32))).batch(2)
    assert trainer.evaluate(ds).bits_per_dim == pytest.approx(got["log_prob"].mean(), abs=1e-5)

    np.testing.assert_array_equal(
        got["sample"], generate_images(model, shape[:2], 3, 3, seed=5, temperature=0.8,
                                       labels=labels))
    completed = generate_images(model, shape[:2], 3, 3, seed=1, init_images=images,
                                start=(2, 0, 0), labels=labels)
    np.testing.assert_array_equal(got["complete"], completed)
    np.testing.assert_array_equal(got["complete"][:, :2], images[:, :2])

    assert meta["image_shape"] == list(shape) and meta["num_classes"] == num_classes
    assert "hidden_dim: 6" in meta["config"] and meta["method"] == "fast"
    assert os.path.exists(os.path.join(path, "assets", "config.yml"))


def test_bad_inputs_fail_at_the_signature(tmp_path):
    trainer = trained_trainer(tmp_path)
    loaded = tf.saved_model.load(export_saved_model(trainer.model, trainer.config,
                                                    str(tmp_path / "sm")))
    log_prob = loaded.signatures["log_prob"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor"):
        log_prob(images=tf.zeros([2, *SHAPE], tf.float32))
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError),
                       match=r"images must be \[N, 5, 4, 3\] uint8"):
        loaded.log_prob(tf.zeros([2, 6, 4, 3], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="rows must be < height 5"):
        loaded.signatures["complete"](images=tf.zeros([1, *SHAPE], tf.uint8),
                                      rows=tf.constant(7), seed=tf.constant(0, tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature must be > 0"):
        loaded.signatures["sample"](n=tf.constant(1), seed=tf.constant(0, tf.int64),
                                    temperature=tf.constant(0.0))
    # Dynamic batch: any n works.
    out = loaded.signatures["sample"](n=tf.constant(5), seed=tf.constant(0, tf.int64),
                                      temperature=tf.constant(1.0))["images"]
    assert out.shape == (5, *SHAPE) and out.dtype == tf.uint8


def test_saved_model_cli_lists_the_signatures(tmp_path):
    trainer = trained_trainer(tmp_path)
    path = export_saved_model(trainer.model, trainer.config, str(tmp_path / "sm"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(["saved_model_cli", "show", "--dir", path, "--all"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("log_prob", "sample", "complete", "serving_default"):
        assert f"signature_def['{name}']" in result.stdout
    assert "bits_per_dim" in result.stdout and "(-1, 5, 4, 3)" in result.stdout


def test_wrong_sizes_and_float_images_are_refused_everywhere(tmp_path):
    """Issue: signatures["log_prob"] scored 32x32 images with a 28x28 model, and the
    attribute path cast float images in [0, 1] to uint8 zeros."""
    trainer = trained_trainer(tmp_path)
    loaded = tf.saved_model.load(export_saved_model(trainer.model, trainer.config,
                                                    str(tmp_path / "sm")))
    message = r"images must be \[N, 5, 4, 3\] uint8"
    for bad in ([2, 6, 4, 3], [2, 5, 5, 3], [2, 5, 4, 1]):
        images = tf.zeros(bad, tf.uint8)
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
            loaded.signatures["log_prob"](images=images)
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
            loaded.log_prob(images)
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
            loaded.signatures["complete"](images=images, rows=tf.constant(1),
                                          seed=tf.constant(0, tf.int64))
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
            loaded.complete(images, tf.constant(1), tf.constant(0, tf.int64))
    floats = np.full([2, *SHAPE], 0.5, np.float32)
    for attempt in (lambda: loaded.log_prob(floats), lambda: loaded.log_prob(floats * 255),
                    lambda: loaded.log_prob(floats.astype(np.float64))):
        with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
            attempt()
    good = loaded.log_prob(np.zeros([2, *SHAPE], np.uint8))
    assert good.numpy().shape == (2,) if not isinstance(good, dict) else True
