"""Categorical negative log-likelihood and bits per dimension.

bits/dim = total NLL in nats over every sub-pixel of every image (the first one
included) / (N · H · W · C · ln 2). Over a split, nats are summed, never batch means
averaged, so a short last batch weighs exactly as much as its images.
"""
from __future__ import annotations

import math

import tensorflow as tf

LN2 = math.log(2.0)


def nll_per_dim(logits: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """NLL in nats of every sub-pixel.

    Args:
      logits: ``[B, H, W, C, 256]`` (any float dtype; the softmax runs in float32).
      images: ``[B, H, W, C]`` integer intensities 0..255 (the targets).

    Returns:
      float32 ``[B, H, W, C]``.
    """
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(images, tf.int32), logits=tf.cast(logits, tf.float32))


def nll_per_image(logits: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """Total NLL in nats of each image: ``[B]`` float32."""
    return tf.reduce_sum(nll_per_dim(logits, images), axis=[1, 2, 3])


def bits_per_dim(total_nats, num_dims) -> float:
    """Converts a summed NLL in nats over ``num_dims`` sub-pixels to bits/dim."""
    return float(total_nats) / (float(num_dims) * LN2)


def mean_bits_per_dim(logits: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """The training loss: mean NLL over every sub-pixel of the batch, in bits. Scalar."""
    return tf.reduce_mean(nll_per_dim(logits, images)) / LN2
