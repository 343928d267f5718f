"""The model types, one file each (its layers and its cached fast step side by side), and
``build_model``.

Importing this package does not import TensorFlow (the config checks ``model.type``
against ``TYPES`` before anything heavy is loaded); ``build_model`` imports the chosen
type's file. Adding a type is one new file (models/pixelcnn.py is the template; see
docs/adding_a_model_type.md), one line in ``TYPES``, its configs and its tests.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Sequence

# The model.* keys every type takes.
SHARED_OPTIONS = ("type", "hidden_dim", "n_layers", "num_classes", "output", "num_mixtures")
_CONTAINER = ("out_dim", "kernel_size", "input_kernel_size", "multiscale")  # PixelRNN's own

# model.type → (its file in pixelcnn_tf/models/, the model.* keys it takes besides the
# shared ones; the config refuses any other key set away from its default). A
# pixel-layer type's file defines ``LAYER`` (its PixelLayer subclass, built into the
# PixelRNN container of models/pixel_rnn.py); a whole-model type's file defines ``build``.
TYPES = {
    "pixelcnn": ("pixelcnn", _CONTAINER + ("dilations",)),
    "gated_pixelcnn": ("gated_pixelcnn", _CONTAINER + ("dilations",)),
    "row_lstm": ("row_lstm", _CONTAINER),
    "diagonal_bilstm": ("diagonal_bilstm", ("out_dim", "input_kernel_size", "multiscale")),
    "pixelsnail": ("pixelsnail", _CONTAINER + ("num_heads", "attention_dim",
                                               "convs_per_block")),
    "pixelcnn_pp": ("pixelcnn_pp", ("dropout", "weight_norm")),
    "parallel_multiscale": ("parallel_multiscale", ("kernel_size", "base_size", "base")),
}


def model_types() -> tuple:
    """Every ``model.type``, sorted."""
    return tuple(sorted(TYPES))


def type_options(name: str) -> tuple:
    """Every ``model.*`` key that ``model.type`` ``name`` takes."""
    return SHARED_OPTIONS + TYPES[name][1]


def types_taking(option: str) -> tuple:
    """The model types that take ``model.<option>``, sorted."""
    return tuple(name for name in model_types() if option in type_options(name))


def type_module(name: str) -> ModuleType:
    """The file that defines ``model.type`` ``name`` (imported on first use)."""
    if name not in TYPES:
        raise ValueError(f"unknown model type {name!r}; allowed: {', '.join(model_types())}")
    return importlib.import_module(f"pixelcnn_tf.models.{TYPES[name][0]}")


def pixel_layer(name: str):
    """The ``PixelLayer`` subclass of a pixel-layer type (a ValueError for the others)."""
    module = type_module(name)
    if not hasattr(module, "LAYER"):
        raise ValueError(f"model type {name!r} is a whole model, not a pixel-layer type")
    return module.LAYER


def pixel_layer_types() -> tuple:
    """The types built from pixel layers in the PixelRNN container (imports them)."""
    return tuple(name for name in model_types() if hasattr(type_module(name), "LAYER"))


def build_model(model_config, image_shape: Sequence[int], compute_dtype=None, seed: int = 0,
                bits: int = 8):
    """Builds a model from ``model_config`` (a ``ModelConfig``) and creates its variables.

    Returns a ``tf.Module``: ``model(images, labels=None, training=False, recompute=False)``
    (``recompute``: gradient checkpointing of its blocks, ``nn.layers.run_block``) with images
    ``[B, H, W, C]`` in [0, 1] returns the float32 parameters of ``model.distribution``
    (categorical logits ``[B, H, W, C, 2^bits]`` or mixture parameters ``[B, H, W, P]``).
    With ``model.multiscale`` it is a ``MultiScalePixelRNN``, whose parameters are a pair
    (small network's, conditional network's) scored by its distribution.
    ``compute_dtype`` (bfloat16 or float16 for mixed precision; default float32) is the
    dtype of the layers' arithmetic; ``seed`` seeds the dropout masks (models with
    dropout); ``bits`` (``data.bits``, 1..8) the depth of the images it models: their
    values are the levels 0..2^bits - 1, so the categorical output has 2^bits logits per
    sub-pixel and the mixture 2^bits bins.
    """
    import tensorflow as tf

    from pixelcnn_tf.likelihood import levels_of
    n_levels = levels_of(bits)
    compute_dtype = tf.float32 if compute_dtype is None else compute_dtype
    module = type_module(model_config.type)
    if hasattr(module, "build"):  # a whole-model type
        extra = {}
        if getattr(model_config, "base", None) is not None:  # parallel_multiscale's base
            extra["base"] = build_model(model_config.base,
                                        module.base_shape(model_config, image_shape),
                                        compute_dtype, seed, bits)
        model = module.build(model_config, image_shape, compute_dtype, seed, n_levels,
                             **extra)
    elif model_config.multiscale:
        from pixelcnn_tf.models.multiscale import MultiScalePixelRNN
        model = MultiScalePixelRNN.from_config(module.LAYER, model_config, image_shape,
                                               compute_dtype, n_levels)
    else:
        from pixelcnn_tf.models.pixel_rnn import PixelRNN
        model = PixelRNN.from_config(module.LAYER, model_config, image_shape, compute_dtype,
                                     n_levels=n_levels)
    images = tf.zeros([1, *model.image_shape])
    labels = tf.zeros([1], tf.int32) if model.num_classes > 0 else None
    model(images, labels)  # creates every variable now, eagerly
    return model


def count_parameters(model) -> int:
    return int(sum(v.shape.num_elements() for v in model.trainable_variables))
