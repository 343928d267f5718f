"""The PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"):
``model.type: pixelcnn``, and the template for a new model type.

A model type built from pixel layers is one file like this one: the layer (its full
pass over whole images) and, beside it, its ``LayerStep`` (the same layer evaluated at
one position from caches, for the fast sampler and the codec), named by the layer's
``Step``. The container (models/pixel_rnn.py) does the rest; models/__init__.py lists
the type. docs/adding_a_model_type.md walks through it.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from pixelcnn_tf.models.base import LayerStep, PixelLayer
from pixelcnn_tf.nn.layers import MaskedConv2D, colour_group, per_image


class PixelCNNBlock(PixelLayer):
    """The PixelCNN residual block (van den Oord et al. 2016, figure 5).

    ``x [B, H, W, 2h]`` → ReLU → 1x1 (2h→h) → ReLU → kxk (h→h) → ReLU → 1x1 (h→2h),
    all mask B, added back to ``x``. ``condition`` (a class bias ``[B, 2h]``) is added
    to the block's output when given. With ``dilation`` d the kxk convolution is dilated.
    """

    type_name = "pixelcnn"
    dilatable = True

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int = 3,
                 dilation: int = 1, name: Optional[str] = None):
        super().__init__(hidden_dim, n_colors, kernel_size, dilation, name=name)
        with self.name_scope:
            self.reduce = MaskedConv2D(hidden_dim, 1, "B", n_colors, name="reduce_1x1")
            self.conv = MaskedConv2D(hidden_dim, kernel_size, "B", n_colors,
                                     dilation=dilation,
                                     name=f"conv_{kernel_size}x{kernel_size}")
            self.expand = MaskedConv2D(2 * hidden_dim, 1, "B", n_colors, name="expand_1x1")

    def __call__(self, state: tf.Tensor, condition: Optional[tf.Tensor] = None) -> tf.Tensor:
        y = self.reduce(tf.nn.relu(state))  # [B, H, W, h]
        y = self.conv(tf.nn.relu(y))  # [B, H, W, h]
        y = self.expand(tf.nn.relu(y))  # [B, H, W, 2h]
        if condition is not None:
            y += per_image(condition, y)  # [B, 2h] broadcast over positions
        return state + y



class PixelCNNStep(LayerStep):
    """Three masked convolutions, each at the one position."""

    def __init__(self, layer, width, dtype):
        super().__init__(layer, width, dtype)
        self.convs = [self.conv(c) for c in (layer.reduce, layer.conv, layer.expand)]

    def initial(self, batch):
        return tuple(c.initial(batch) for c in self.convs)

    def step(self, cache, x, pos, condition):
        caches, y = [], x
        for conv, conv_cache in zip(self.convs, cache):
            conv_cache, y = conv.step(conv_cache, tf.nn.relu(y), pos)
            caches.append(conv_cache)
        if condition is not None:
            y += colour_group(condition, self.groups, pos.c)
        return tuple(caches), x + y


PixelCNNBlock.Step = PixelCNNStep
LAYER = PixelCNNBlock
