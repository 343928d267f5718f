import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pixelcnn_tf.config import load_config  # noqa: E402


def tiny_config(channels: int = 1, **model):
    """A small, fast config for unit tests (widths divisible by 3 for RGB)."""
    overrides = [f"model.hidden_dim={6 if channels == 3 else 4}",
                 f"model.out_dim={12 if channels == 3 else 8}",
                 "model.n_layers=2", "model.input_kernel_size=3"]
    overrides += [f"model.{k}={v}" for k, v in model.items()]
    return load_config(None, overrides)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
