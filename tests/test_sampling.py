import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from pixelcnn_tf import generate_images
from pixelcnn_tf.models import build_model
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


def test_class_conditional_sampling(tmp_path):
    cfg = tiny_config(1, num_classes=2)
    cfg.train.learning_rate = 0.05
    trainer = Trainer(cfg, str(tmp_path), (3, 3, 1))
    images = tf.concat([tf.fill([4, 3, 3, 1], tf.constant(30, tf.uint8)),
                        tf.fill([4, 3, 3, 1], tf.constant(220, tf.uint8))], axis=0)
    labels = tf.constant([0] * 4 + [1] * 4)
    for _ in range(80):
        trainer.train_step(images, labels)
    out = generate_images(trainer.model, (3, 3), 4, 1, labels=[0, 1, 0, 1], seed=0)
    assert np.mean(out[0::2] == 30) > 0.95 and np.mean(out[1::2] == 220) > 0.95
    with pytest.raises(ValueError, match="class-conditional"):
        generate_images(trainer.model, (3, 3), 2, 1)
