import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite checks exact equalities between different computations of the same model
# (fast == naive sampling, image for image) that hold on the CPU; on a GPU they differ by
# rounding (TF32, cuDNN's algorithms; README "On a GPU"), so the suite hides GPUs unless
# PIXELCNN_TF_TEST_GPU=1 (set before TensorFlow is imported, for subprocesses too).
if os.environ.get("PIXELCNN_TF_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pixelcnn_tf.config import load_config  # noqa: E402


def tiny_config(channels: int = 1, **model):
    """A small, fast config for unit tests (widths divisible by 3 for RGB)."""
    from pixelcnn_tf.models import type_options
    small = {"hidden_dim": 6 if channels == 3 else 4, "out_dim": 12 if channels == 3 else 8,
             "n_layers": 2, "input_kernel_size": 3}
    taken = type_options(model.get("type", "pixelcnn"))
    small = {k: v for k, v in small.items() if k in taken}  # the keys the type takes
    overrides = [f"model.{k}={v}" for k, v in {**small, **model}.items()]
    return load_config(None, overrides)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# The dilatable types, with the rates their small test models use (2 layers).
DILATED = [(t, o) for t in ("gated_pixelcnn", "pixelcnn") for o in ("categorical",
                                                                    "logistic_mixture")]
TEST_DILATIONS = "[2, 3]"


def model_with_layer(layer_cls, channels, shape, **model):
    """A ``PixelRNN`` with a pixel-layer class that is not a registered type (a test's
    faulty or step-less variant), from ``tiny_config(channels, **model)``."""
    from pixelcnn_tf.models.pixel_rnn import PixelRNN
    model = PixelRNN.from_config(layer_cls, tiny_config(channels, **model).model,
                                 (*shape, channels))
    labels = np.zeros([1], np.int32) if model.num_classes else None
    model(np.zeros([1, *shape, channels], np.float32), labels)  # its variables, now
    return model


def random_model(channels, layer_type="pixelcnn", num_classes=0, shape=(5, 4), seed=0,
                 output="categorical", dilations=None, weight_norm=False):
    """A small untrained model with random non-zero biases and class biases (pixelcnn_pp:
    8x8 images, its three resolutions need multiples of 4; with ``weight_norm``,
    initialised from random images first)."""
    import tensorflow as tf
    from pixelcnn_tf.models import build_model
    tf.random.set_seed(seed)
    if layer_type == "pixelcnn_pp":
        cfg = tiny_config(channels, type=layer_type, output=output, num_mixtures=2,
                          hidden_dim=4, n_layers=1, num_classes=num_classes,
                          weight_norm=weight_norm)
        shape = (8, 8)
    else:
        extra = {} if dilations is None else {"dilations": dilations}
        cfg = tiny_config(channels, type=layer_type, num_classes=num_classes, kernel_size=3,
                          input_kernel_size=5, output=output, num_mixtures=2, **extra)
    model = build_model(cfg.model, (*shape, channels))
    if weight_norm:
        model.initialize_from_data(tf.random.uniform([4, *shape, channels]),
                                   tf.constant([0, 1, 2, 0]) if num_classes else None)
    return randomize_biases(model)


def randomize_biases(model):
    """Non-zero biases and class biases everywhere (as initialised they are zero), from
    TensorFlow's global seed. Returns the model."""
    import tensorflow as tf
    for v in model.trainable_variables:
        if "bias" in v.name or "class" in v.name:
            v.assign(tf.random.normal(v.shape, stddev=0.5))
    return model
