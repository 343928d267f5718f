"""pixelcnn_tf: PixelCNN-family autoregressive image models in TensorFlow 2.

The public names below are imported lazily (PEP 562), so ``import pixelcnn_tf.cli``
does not import TensorFlow before the command line is parsed.
"""
import importlib

_EXPORTS = {
    "get_mask": "pixelcnn_tf.nn.masks",
    "MaskedConv2D": "pixelcnn_tf.nn.layers",
    "load_config": "pixelcnn_tf.config",
    "build_model": "pixelcnn_tf.models",
    "generate_images": "pixelcnn_tf.sampling",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pixelcnn_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
