"""Pixel layers: the pluggable middle of the PixelRNN-style container.

A pixel layer maps a *state* to a state of the same structure. The container turns the
first masked convolution's features into the initial state with ``initial_state`` and
reads the features back with ``features`` after the last layer, so a layer type whose
state is not a single tensor (e.g. the two stacks of a gated PixelCNN) plugs in
without changing the container.

New types register themselves with :func:`register_pixel_layer`.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Type

import tensorflow as tf

from pixelcnn_tf.layers import MaskedConv2D, per_image


class PixelLayer(tf.Module):
    """Base class of pixel layers. Subclasses take ``(hidden_dim, n_colors, kernel_size)``.

    ``position_wise = True`` declares that the layer is built only from MaskedConv2D and
    position-wise operations (written to work on ``[..., C]``), so the fast sampler can
    evaluate it at one position from cached inputs. Layers with other state (recurrent
    layers) leave it False and are sampled with the naive method.
    """

    position_wise = False

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int = 3,
                 name: Optional[str] = None):
        super().__init__(name=name)
        self.hidden_dim = hidden_dim
        self.n_colors = n_colors
        self.kernel_size = kernel_size

    @staticmethod
    def initial_state(features: tf.Tensor):
        """Input-convolution features ``[B, H, W, 2h]`` → this type's state."""
        return features

    @staticmethod
    def features(state) -> tf.Tensor:
        """This type's state → features ``[B, H, W, 2h]`` for the output layers."""
        return state

    def __call__(self, state, condition: Optional[tf.Tensor] = None):
        raise NotImplementedError


PIXEL_LAYERS: Dict[str, Type[PixelLayer]] = {}


def register_pixel_layer(name: str) -> Callable[[Type[PixelLayer]], Type[PixelLayer]]:
    """Class decorator: makes a pixel-layer type selectable as ``model.type: name``."""

    def register(cls: Type[PixelLayer]) -> Type[PixelLayer]:
        if name in PIXEL_LAYERS:
            raise ValueError(f"pixel layer type {name!r} is already registered")
        PIXEL_LAYERS[name] = cls
        return cls

    return register


def get_pixel_layer(name: str) -> Type[PixelLayer]:
    try:
        return PIXEL_LAYERS[name]
    except KeyError:
        raise ValueError(f"unknown pixel layer type {name!r}; allowed: "
                         f"{', '.join(sorted(PIXEL_LAYERS))}") from None


@register_pixel_layer("pixelcnn")
class PixelCNNBlock(PixelLayer):
    """The PixelCNN residual block (van den Oord et al. 2016, figure 5).

    ``x [B, H, W, 2h]`` → ReLU → 1x1 (2h→h) → ReLU → kxk (h→h) → ReLU → 1x1 (h→2h),
    all mask B, added back to ``x``. ``condition`` (a class bias ``[B, 2h]``) is added
    to the block's output when given.
    """

    position_wise = True

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int = 3,
                 name: Optional[str] = None):
        super().__init__(hidden_dim, n_colors, kernel_size, name=name)
        with self.name_scope:
            self.reduce = MaskedConv2D(hidden_dim, 1, "B", n_colors, name="reduce_1x1")
            self.conv = MaskedConv2D(hidden_dim, kernel_size, "B", n_colors,
                                     name=f"conv_{kernel_size}x{kernel_size}")
            self.expand = MaskedConv2D(2 * hidden_dim, 1, "B", n_colors, name="expand_1x1")

    def __call__(self, state: tf.Tensor, condition: Optional[tf.Tensor] = None) -> tf.Tensor:
        y = self.reduce(tf.nn.relu(state))  # [B, H, W, h]
        y = self.conv(tf.nn.relu(y))  # [B, H, W, h]
        y = self.expand(tf.nn.relu(y))  # [B, H, W, 2h]
        if condition is not None:
            y += per_image(condition, y)  # [B, 2h] broadcast over positions
        return state + y
