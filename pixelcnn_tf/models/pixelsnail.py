"""PixelSNAIL (Chen et al. 2018, "PixelSNAIL: An Improved Autoregressive Generative
Model"): ``model.type: pixelsnail``, its blocks of gated convolutions and causal
self-attention (nn/attention.py), and their cached step with a key/value cache."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import tensorflow as tf

from pixelcnn_tf.models.base import LayerStep, PixelLayer
from pixelcnn_tf.nn.attention import CausalSelfAttention, mask_bias, own_mask, two_part_softmax
from pixelcnn_tf.nn.layers import MaskedConv2D, colour_group, gate, with_colour_group


class PixelSNAILInput(tf.Module):
    """The PixelSNAIL layers' input layer: images (preprocessed) ``[B, H, W, C]`` → (a kxk
    mask-A convolution ``[B, H, W, 2h]``, the images themselves, which the attention of
    every layer reads at earlier positions)."""

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int,
                 name: Optional[str] = None):
        super().__init__(name=name)
        with self.name_scope:
            self.conv = MaskedConv2D(2 * hidden_dim, kernel_size, "A", n_colors, name="conv")

    @property
    def kernel_size(self):
        return self.conv.kernel_size

    def __call__(self, x: tf.Tensor):
        return self.conv(x), x


class PixelSNAILBlock(PixelLayer):
    """A PixelSNAIL block: ``convs_per_block`` gated residual masked convolutions, then
    causal multi-head self-attention over every earlier position (``CausalSelfAttention``)
    added back to the stream.

    State: (stream ``[B, H, W, 2h]``, preprocessed images ``[B, H, W, C]``).
      s ← s + gate(kxk mask-B conv(ReLU(s)))       (2h → 4h → 2h, per conv; the class
                                                   vector ``[B, 4h]`` enters every gate)
      a = s + P                                    (P: learned position embedding [H, W, 2h])
      s ← s + attention(a, images)
    One block reaches every sub-pixel before the output's own (tested exactly).
    """

    type_name = "pixelsnail"
    OPTIONS = ("num_heads", "attention_dim", "convs_per_block")
    condition_input = False  # the class vector enters every gate

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int = 3,
                 dilation: int = 1, name: Optional[str] = None, num_heads: int = 1,
                 attention_dim: int = 16, convs_per_block: int = 2):
        super().__init__(hidden_dim, n_colors, kernel_size, dilation, name=name)
        if convs_per_block < 1:
            raise ValueError(f"convs_per_block must be >= 1, got {convs_per_block}")
        width = 2 * hidden_dim
        with self.name_scope:
            self.convs = [MaskedConv2D(2 * width, kernel_size, "B", n_colors, init_scale=1.0,
                                       name=f"gated_conv_{i}")
                          for i in range(convs_per_block)]
            self.attention = CausalSelfAttention(width, n_colors, num_heads, attention_dim,
                                                 name="attention")
        self.position: Optional[tf.Variable] = None  # [H, W, 2h], made on the first call

    @staticmethod
    def condition_width(hidden_dim: int) -> int:
        return 4 * hidden_dim  # tanh and sigmoid halves of the gates

    @staticmethod
    def make_input(hidden_dim: int, n_colors: int, kernel_size: int) -> tf.Module:
        return PixelSNAILInput(hidden_dim, n_colors, kernel_size, name="input_conv")

    @staticmethod
    def features(state) -> tf.Tensor:
        return state[0]

    @staticmethod
    def input_masked_conv(input_layer) -> MaskedConv2D:
        return input_layer.conv

    @staticmethod
    def step_state(features):
        return features, None  # the image reaches the layers' steps through ``record``

    def residual_convs(self, s: tf.Tensor, condition: Optional[tf.Tensor]) -> tf.Tensor:
        for conv in self.convs:
            s = s + gate(conv(tf.nn.relu(s)), self.n_colors, condition)
        return s

    def position_embedding(self, height: int, width: int, dtype: tf.DType) -> tf.Tensor:
        """The learned position embedding ``[H, W, 2h]`` (created on the first call)."""
        if self.position is None:
            with self.name_scope:
                self.position = tf.Variable(
                    tf.random.normal([height, width, 2 * self.hidden_dim], stddev=0.1),
                    name="position")
        if tuple(self.position.shape[:2]) != (height, width):
            raise ValueError(f"{self.name} was built for {self.position.shape[0]}x"
                             f"{self.position.shape[1]} images, got {height}x{width}")
        return tf.cast(self.position, dtype)

    def __call__(self, state, condition: Optional[tf.Tensor] = None):
        s, x = state
        s = self.residual_convs(s, condition)
        a = s + self.position_embedding(s.shape[1], s.shape[2], s.dtype)
        return s + self.attention(a, x), x


class PixelSNAILStep(LayerStep):
    """The gated convolutions at the position, then attention from the one query (colour
    group c of pixel p = i·W + j) with a key/value cache.

    Cache: the convolutions' caches; the attention input at pixel p so far ``[N, 2h]``
    (its colour groups <= c; the keys, values and queries of the pixel's own groups come
    from it); the keys and values of every position ``[H·W, N, heads, dim]`` each, slot
    p' written by ``record`` from the attention input and the image at p' (rewritten
    after each colour group, final after the last; a query at p reads slots p' < p only:
    the later ones are masked, as XLA needs static shapes). A step multiplies its query
    with the H·W cached keys and values plus the pixel's own G: its attention cost grows
    linearly with the image's size (O(H·W·heads·dim) per step), so a whole image costs
    O((H·W)²) where the naive sampler's full passes cost O((H·W)³).
    """

    def __init__(self, layer, width, dtype):
        super().__init__(layer, width, dtype)
        att = layer.attention
        self.convs = [self.conv(c) for c in layer.convs]
        self.output = self.conv(att.output)
        self.height = int(layer.position.shape[0])
        g, n, d = self.groups, att.num_heads, att.attention_dim
        self.heads, self.dim = n, d

        def one_by_one(conv):  # a masked 1x1 convolution as a matrix and a bias
            return conv.masked_kernel(dtype)[0, 0], tf.cast(conv.bias, dtype)

        self.query, self.key, self.value = (one_by_one(c) for c in (att.query, att.key,
                                                                    att.value))
        self.position = tf.cast(layer.position, dtype)  # [H, W, 2h]
        self.own_bias = mask_bias(own_mask(g), dtype)  # [G, G]
        self.earlier_bias = mask_bias(np.array([False, True]), dtype)
        self.scale = tf.cast(1.0 / math.sqrt(d), dtype)

    def initial(self, batch):
        n, d, length = self.heads, self.dim, self.height * self.width
        table = tf.zeros(tf.stack([length, batch, n, d]), self.dtype)
        pixel = tf.zeros(tf.stack([batch, 2 * self.layer.hidden_dim]), self.dtype)
        return (tuple(c.initial(batch) for c in self.convs), self.output.initial(batch),
                pixel, table, table)

    def _project(self, pixel, weights):
        kernel, bias = weights
        return tf.matmul(pixel, kernel) + bias

    def step(self, cache, x, pos, condition):
        conv_caches, out_cache, pixel, keys, values = cache
        s, _ = x  # [N, 2h/G]: colour group c of the stream
        g, n, d = self.groups, self.heads, self.dim
        cond = None if condition is None else colour_group(condition, g, pos.c)
        new_conv_caches = []
        for conv, conv_cache in zip(self.convs, conv_caches):
            conv_cache, pre = conv.step(conv_cache, tf.nn.relu(s), pos)
            s = s + gate(pre, 1, cond)
            new_conv_caches.append(conv_cache)
        a = s + colour_group(self.position[pos.i, pos.j][None], g, pos.c)
        pixel = with_colour_group(tf.where(pos.c > 0, pixel, tf.zeros_like(pixel)), a,
                                  pos.c, g)  # [N, 2h]: groups <= c of the pixel
        batch = tf.shape(a)[0]

        def per_group(weights):  # [N, G, n, d]
            return tf.reshape(self._project(pixel, weights), [batch, g, n, d])

        q = tf.gather(per_group(self.query), pos.c, axis=1) * self.scale  # [N, n, d]
        k_own, v_own = per_group(self.key), per_group(self.value)  # [N, G, n, d]
        # Every slot, the ones at p and after masked (XLA needs static shapes; their
        # weights are exactly 0): [N, n, L].
        earlier = tf.range(tf.shape(keys)[0]) < pos.i * self.width + pos.j
        prev = tf.einsum("bnd,pbnd->bnp", q, keys) + tf.gather(self.earlier_bias, tf.cast(
            earlier, tf.int32))
        own = tf.einsum("bnd,bgnd->bng", q, k_own) + tf.gather(self.own_bias, pos.c)
        w_prev, w_own = two_part_softmax(prev, own)  # [N, n, L], [N, n, G]
        out = (tf.einsum("bnp,pbnd->bnd", w_prev, values)
               + tf.einsum("bng,bgnd->bnd", w_own, v_own))  # [N, n, d]
        out_cache, y = self.output.step(out_cache, tf.reshape(out, [batch, n * d]), pos)
        return ((tuple(new_conv_caches), out_cache, pixel, keys, values), (s + y, None))

    def record(self, cache, pixel_values, pos):
        """Keys and values of pixel p from its attention input and its drawn values."""
        conv_caches, out_cache, pixel, keys, values = cache
        k, v = self.layer.attention.earlier_keys_values(  # one position: [N, 1, 1, n, d]
            pixel[:, None, None], pixel_values[:, None, None])
        where = [[pos.i * self.width + pos.j]]
        keys = tf.tensor_scatter_nd_update(keys, where, k[None, :, 0, 0])
        values = tf.tensor_scatter_nd_update(values, where, v[None, :, 0, 0])
        return conv_caches, out_cache, pixel, keys, values


PixelSNAILBlock.Step = PixelSNAILStep
LAYER = PixelSNAILBlock
