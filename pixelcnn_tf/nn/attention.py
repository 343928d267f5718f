"""Causal self-attention and the PixelSNAIL pixel layer (Chen et al. 2018).

Attention runs over the raster sequence of the H·W positions, per colour group of the
query: the output of colour group g at position p may depend on the image only before
sub-pixel (p, g), as every masked convolution's. Two kinds of keys (and values) meet in
one softmax:

  earlier positions p' < p: one key per position from everything there, the attention
    input *and the image* at p' (a plain 1x1 projection of ``[a, x]``; without the image
    the last colour of p' would reach no later pixel through attention, and the last
    pixel of a row would stay out of reach of the next row's first pixels);
  the current pixel p: one key per colour group c <= g, from the attention input's
    colour groups <= c (a mask-B 1x1 projection; the stream at p already holds the
    pixel's earlier colours, never its own).

Queries are mask-B 1x1 projections too (query group g reads groups <= g). With one colour
group (the logistic-mixture output, or grey images) this is the usual causal attention
with each position attending to itself and everything before it.

Both masks are constants built once: ``earlier_mask`` ``[L, L]`` (key strictly before the
query) and ``own_mask`` ``[G, G]`` (key group <= query group), added to the logits as
``mask_bias`` (0 or -1e9).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import tensorflow as tf

from pixelcnn_tf.nn.layers import Conv2D, MaskedConv2D


def earlier_mask(length: int) -> np.ndarray:
    """``[L, L]`` bool: ``[q, k]`` is True where position k comes strictly before q."""
    return np.tril(np.ones((length, length), dtype=bool), k=-1)


def own_mask(groups: int) -> np.ndarray:
    """``[G, G]`` bool: ``[g, c]`` is True where key group c may serve query group g."""
    return np.tril(np.ones((groups, groups), dtype=bool))


def mask_bias(allowed: np.ndarray, dtype: tf.DType) -> tf.Tensor:
    """The additive form of a boolean mask: 0 where ``allowed``, a large negative number
    elsewhere, so that those keys get weight exactly 0 (``-inf`` in float16)."""
    return tf.constant(np.where(allowed, 0.0, -1e9).astype(np.float32), dtype)


def two_part_softmax(prev: tf.Tensor, own: tf.Tensor):
    """One softmax over the keys of two sets, without joining them (joining and splitting
    the ``[.., L, L]`` logits took more than half of the attention's time on CPU): logits
    ``prev`` ``[..., Kp]`` and ``own`` ``[..., Ko]`` (masks already added) → their
    weights, ``[..., Kp]`` and ``[..., Ko]``."""
    top = tf.stop_gradient(tf.maximum(tf.reduce_max(prev, -1, keepdims=True),
                                      tf.reduce_max(own, -1, keepdims=True)))
    e_prev, e_own = tf.exp(prev - top), tf.exp(own - top)
    total = tf.reduce_sum(e_prev, -1, keepdims=True) + tf.reduce_sum(e_own, -1, keepdims=True)
    return e_prev / total, e_own / total


class CausalSelfAttention(tf.Module):
    """Multi-head causal self-attention over the positions of ``[B, H, W, D]`` maps.

    ``__call__(a, x)``: ``a`` the attention input ``[B, H, W, D]`` (D split into
    ``n_colors`` colour groups), ``x`` the preprocessed image ``[B, H, W, C]`` → the
    attention output projected back to ``[B, H, W, features_out]`` by a mask-B 1x1
    convolution. ``num_heads`` heads of ``attention_dim`` query, key and value
    channels each, per colour group. See the module docstring for which keys each query
    sees.
    """

    def __init__(self, features_out: int, n_colors: int, num_heads: int = 1,
                 attention_dim: int = 16, name: Optional[str] = None):
        super().__init__(name=name)
        if num_heads < 1 or attention_dim < 1:
            raise ValueError(f"num_heads and attention_dim must be >= 1, got {num_heads} "
                             f"and {attention_dim}")
        self.n_colors, self.num_heads, self.attention_dim = n_colors, num_heads, attention_dim
        width = n_colors * num_heads * attention_dim  # colour groups of [heads, dim]
        self._mask_biases: dict = {}  # (L, dtype) → the two mask biases
        with self.name_scope:
            self.query = MaskedConv2D(width, 1, "B", n_colors, init_scale=1.0, name="query")
            self.key = MaskedConv2D(width, 1, "B", n_colors, init_scale=1.0, name="key")
            self.value = MaskedConv2D(width, 1, "B", n_colors, init_scale=1.0, name="value")
            # Keys and values of earlier positions (any later query may see all of them).
            self.earlier = Conv2D(2 * num_heads * attention_dim, (1, 1), name="earlier_kv")
            self.output = MaskedConv2D(features_out, 1, "B", n_colors, init_scale=1.0,
                                       name="output")

    def mask_biases(self, length: int, dtype: tf.DType):
        """``mask_bias`` of ``earlier_mask(length)`` and ``own_mask``, built once per
        sequence length and dtype."""
        key = (length, tf.as_dtype(dtype).name)
        if key not in self._mask_biases:
            with tf.init_scope():  # eager constants, even when first traced in a graph
                self._mask_biases[key] = (mask_bias(earlier_mask(length), dtype),
                                          mask_bias(own_mask(self.n_colors), dtype))
        return self._mask_biases[key]

    def heads(self, t: tf.Tensor, groups: int) -> tf.Tensor:
        """``[..., groups·heads·dim]`` → ``[..., groups, heads, dim]``."""
        shape = tf.concat([tf.shape(t)[:-1], [groups, self.num_heads, self.attention_dim]], 0)
        return tf.reshape(t, shape)

    def earlier_keys_values(self, a: tf.Tensor, x: tf.Tensor):
        """Keys and values of earlier positions from ``a`` ``[..., D]`` and the image ``x``
        ``[..., C]`` (any leading shape of rank 4): each ``[..., heads, dim]``."""
        kv = self.earlier(tf.concat([a, tf.cast(x, a.dtype)], -1))
        k, v = tf.split(kv, 2, axis=-1)
        return self.heads(k, 1)[..., 0, :, :], self.heads(v, 1)[..., 0, :, :]

    @tf.Module.with_name_scope
    def __call__(self, a: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        _, height, width, _ = a.shape
        n, g, d = self.num_heads, self.n_colors, self.attention_dim
        length = height * width
        batch = tf.shape(a)[0]

        def tokens(t, groups):  # [B, H, W, groups·n·d] → [B, n, L, groups, d]
            t = tf.reshape(t, [batch, length, groups, n, d])
            return tf.transpose(t, [0, 3, 1, 2, 4])

        q = tokens(self.query(a), g) / tf.cast(math.sqrt(d), a.dtype)  # [B, n, L, G, d]
        k_own, v_own = tokens(self.key(a), g), tokens(self.value(a), g)  # [B, n, L, G, d]
        k_prev, v_prev = self.earlier_keys_values(a, x)  # [B, H, W, n, d]
        k_prev = tf.transpose(tf.reshape(k_prev, [batch, length, n, d]), [0, 2, 1, 3])
        v_prev = tf.transpose(tf.reshape(v_prev, [batch, length, n, d]), [0, 2, 1, 3])
        # Queries per colour group over the earlier positions: [B, n, G·L, d] x [B, n, L, d].
        q_groups = tf.reshape(tf.transpose(q, [0, 1, 3, 2, 4]), [batch, n, g * length, d])
        prev = tf.reshape(tf.matmul(q_groups, k_prev, transpose_b=True),
                          [batch, n, g, length, length])  # [B, n, G (query), L (q), L (k)]
        earlier_bias, own_bias = self.mask_biases(length, prev.dtype)
        prev += earlier_bias
        own = tf.matmul(q, k_own, transpose_b=True) + own_bias  # [B, n, L, G (q), G (k)]
        w_prev, w_own = two_part_softmax(prev, tf.transpose(own, [0, 1, 3, 2, 4]))
        out = tf.reshape(tf.matmul(tf.reshape(w_prev, [batch, n, g * length, length]),
                                   v_prev), [batch, n, g, length, d])
        out += tf.transpose(tf.matmul(tf.transpose(w_own, [0, 1, 3, 2, 4]), v_own),
                            [0, 1, 3, 2, 4])  # [B, n, L, G, d] → [B, n, G, L, d]
        out = tf.reshape(tf.transpose(out, [0, 3, 2, 1, 4]),  # [B, L, G, n, d]
                         [batch, height, width, g * n * d])
        return self.output(out)

