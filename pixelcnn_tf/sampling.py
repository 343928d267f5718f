"""Sampling from a trained model in graph mode.

``generate_images`` runs a ``tf.function`` whose ``tf.while_loop`` visits the H·W·C
sub-pixels in raster order (R < G < B inside a pixel). At step ``k`` it runs the model,
draws sub-pixel ``k`` of every image from its categorical distribution and writes it
with ``tf.tensor_scatter_nd_update``. Every sub-pixel, the first one included, is drawn
from the model. Draws are stateless: sub-pixel ``k`` uses the seed
``fold_in(seed, k)``, so the same seed always gives the same images.
"""
from __future__ import annotations

import random
import weakref
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

METHODS = ("naive",)

_SAMPLERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _naive_sampler(model, greedy: bool, conditional: bool):
    """A tf.function ``(images, start, seed, temperature, labels) → images`` for ``model``."""
    height, width, channels = model.image_shape
    total = height * width * channels

    def draw(logits: tf.Tensor, seed: tf.Tensor, k: tf.Tensor,
             temperature: tf.Tensor) -> tf.Tensor:
        """logits ``[N, 256]`` → int32 values ``[N]``."""
        if greedy:
            return tf.argmax(logits, axis=-1, output_type=tf.int32)
        step_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(k, tf.int64))
        values = tf.random.stateless_categorical(
            logits / temperature, 1, seed=step_seed, dtype=tf.int32)  # [N, 1]
        return values[:, 0]

    def sample(images, start, seed, temperature, labels):
        n = tf.shape(images)[0]
        rows = tf.range(n)

        def body(k, images):
            i, j, c = k // (width * channels), (k // channels) % width, k % channels
            inputs = tf.cast(images, tf.float32) / 255.0  # [N, H, W, C] in [0, 1]
            logits = model(inputs, labels if conditional else None)  # [N, H, W, C, 256]
            values = draw(tf.cast(logits[:, i, j, c, :], tf.float32), seed, k, temperature)
            # One update per image: indices [N, 4] = (n, i, j, c).
            indices = tf.stack([rows, tf.fill([n], i), tf.fill([n], j), tf.fill([n], c)],
                               axis=1)
            return k + 1, tf.tensor_scatter_nd_update(images, indices, values)

        _, images = tf.while_loop(lambda k, _: k < total, body, [start, images])
        return tf.cast(images, tf.uint8)

    return tf.function(sample, input_signature=[
        tf.TensorSpec([None, height, width, channels], tf.int32),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([2], tf.int64),
        tf.TensorSpec([], tf.float32),
        tf.TensorSpec([None], tf.int32),
    ])


def _get_sampler(model, method: str, greedy: bool, conditional: bool):
    per_model = _SAMPLERS.setdefault(model, {})
    key = (method, greedy, conditional)
    if key not in per_model:
        per_model[key] = _naive_sampler(model, greedy, conditional)
    return per_model[key]


def start_index(start: Optional[Sequence[int]], image_shape: Sequence[int]) -> int:
    """(row, col, channel) → index of that sub-pixel in raster order."""
    height, width, channels = image_shape
    if start is None:
        return 0
    if len(start) != 3:
        raise ValueError(f"start must be (row, col, channel), got {start!r}")
    row, col, channel = (int(s) for s in start)
    if not (0 <= row < height and 0 <= col < width and 0 <= channel < channels):
        raise ValueError(f"start={tuple(start)} is outside images of shape "
                         f"{tuple(image_shape)}")
    return (row * width + col) * channels + channel


def generate_images(model, img_dims: Sequence[int], n_images: int, n_channels: int, *,
                    seed: Optional[int] = None, temperature: float = 1.0,
                    greedy: bool = False, method: str = "naive", labels=None,
                    init_images=None, start: Optional[Sequence[int]] = None) -> np.ndarray:
    """Draws ``n_images`` images from ``model``.

    Args:
      model: a model from ``build_model`` (has ``image_shape``).
      img_dims: (height, width); must match the model.
      n_images: how many images to draw (one batch).
      n_channels: 1 or 3; must match the model.
      seed: int; the same seed gives the same images. None draws a random seed.
      temperature: divides the logits (>0); < 1 sharpens, > 1 flattens.
      greedy: take the most likely value instead of sampling.
      method: "naive" (a full forward pass per sub-pixel).
      labels: class ids ``[n_images]`` (or one int) for class-conditional models.
      init_images: uint8 ``[n_images, H, W, C]``; sub-pixels before ``start`` are kept.
      start: (row, col, channel) of the first sub-pixel to sample (default (0, 0, 0)).

    Returns:
      uint8 numpy array ``[n_images, H, W, C]``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; allowed: {', '.join(METHODS)}")
    image_shape = tuple(model.image_shape)
    if tuple(int(d) for d in img_dims) != image_shape[:2]:
        raise ValueError(f"img_dims={tuple(img_dims)} does not match the model's image size "
                         f"{image_shape[:2]}")
    if int(n_channels) != image_shape[2]:
        raise ValueError(f"n_channels={n_channels} does not match the model's "
                         f"{image_shape[2]} channels")
    if int(n_images) < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    shape = (int(n_images), *image_shape)
    k0 = start_index(start, image_shape)
    if init_images is None:
        if k0 > 0:
            raise ValueError("start needs init_images: the sub-pixels before it are kept")
        images = np.zeros(shape, np.int32)
    else:
        images = np.asarray(init_images)
        if images.shape != shape:
            raise ValueError(f"init_images must have shape {shape}, got {images.shape}")
        if images.min() < 0 or images.max() > 255:
            raise ValueError("init_images must hold intensities 0..255")
        images = images.astype(np.int32)
    conditional = getattr(model, "num_classes", 0) > 0
    if conditional:
        if labels is None:
            raise ValueError("this model is class-conditional: pass labels=[class ids]")
        labels = np.broadcast_to(np.asarray(labels, np.int32), [shape[0]])
        if labels.min() < 0 or labels.max() >= model.num_classes:
            raise ValueError(f"labels must be in 0..{model.num_classes - 1}")
    elif labels is not None:
        raise ValueError("labels were given but the model is not class-conditional")
    else:
        labels = np.zeros([shape[0]], np.int32)
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    sampler = _get_sampler(model, method, bool(greedy), conditional)
    out = sampler(tf.constant(images), tf.constant(k0, tf.int32),
                  tf.constant([int(seed), 0], tf.int64),
                  tf.constant(temperature, tf.float32), tf.constant(labels))
    return out.numpy()
