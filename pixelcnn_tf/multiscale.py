"""The Multi-Scale PixelRNN (van den Oord et al. 2016, section 3.5).

An unconditional network models the small image s = x[::f, ::f] (every f-th row and
column of x); a conditional network models the other sub-pixels of x given the whole
small image, which it sees through bias maps (``PixelRNN`` with ``context_factor``: an
unmasked convolution of s, up-sampled by a stride-f deconvolution, added where the class
vectors go in every layer). Both networks are ``PixelRNN``s of the same pixel-layer
type and settings, trained together: the likelihood is exact,

    p(x) = p_small(s) · p_cond(the sub-pixels of x not in s | s),

and every sub-pixel of x is counted once: the conditional network's loss leaves out the
pixels (f·a, f·b) that s already fixed. Bits/dim divide by N·H·W·C as for every model.
Sampling draws s first, then the rest of x with s kept (sampling.py).
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from pixelcnn_tf.likelihood import Distribution
from pixelcnn_tf.models import PixelRNN, check_image_shape, check_inputs


def grid_mask(height: int, width: int, factor: int) -> tf.Tensor:
    """bool ``[H, W]``: the pixels (f·a, f·b) the small image holds."""
    rows = tf.equal(tf.range(height) % factor, 0)
    cols = tf.equal(tf.range(width) % factor, 0)
    return rows[:, None] & cols[None, :]


def place_on_grid(small: tf.Tensor, values: tf.Tensor, factor: int) -> tf.Tensor:
    """``values`` ``[B, H, W, ...]`` with pixel (f·a, f·b) replaced by ``small[:, a, b]``
    (``small``: ``[B, H/f, W/f, ...]``)."""
    spread = tf.repeat(tf.repeat(small, factor, axis=1), factor, axis=2)  # [B, H, W, ...]
    grid = grid_mask(values.shape[1], values.shape[2], factor)
    grid = tf.reshape(grid, [1, *grid.shape] + [1] * (values.shape.rank - 3))
    return tf.where(grid, spread, values)


class MultiScaleDistribution(Distribution):
    """The likelihood of a multi-scale model: parameters are the pair (small network's,
    conditional network's); the NLL of an image is the small image's NLL plus the
    conditional network's NLL of the pixels off the grid."""

    def __init__(self, small: Distribution, large: Distribution, factor: int):
        super().__init__(large.n_colors)
        self.small, self.large, self.factor = small, large, int(factor)
        self.name = large.name
        self.groups, self.num_params = large.groups, large.num_params

    def nll_per_pixel(self, params, images):
        """``[B, H, W]``: the conditional network's NLL off the grid, the small network's
        on it (pixel (f·a, f·b) holds the NLL of small pixel (a, b))."""
        small_params, large_params = params
        f = self.factor
        images = tf.convert_to_tensor(images)
        small = self.small.nll_per_pixel(small_params, images[:, ::f, ::f])  # [B, H/f, W/f]
        return place_on_grid(small, self.large.nll_per_pixel(large_params, images), f)


class MultiScalePixelRNN(tf.Module):
    """Two ``PixelRNN``s in one model (see the module docstring).

    ``model(images, labels)`` with images ``[B, H, W, C]`` in [0, 1] → (the small
    network's parameters on ``images[:, ::f, ::f]``, the conditional network's on
    ``images``); ``model.distribution`` scores the pair. ``small`` and ``large`` are the
    two networks; class conditioning (``num_classes``) reaches both.
    """

    def __init__(self, image_shape: Sequence[int], factor: int, layer_type: str = "pixelcnn",
                 compute_dtype: tf.DType = tf.float32, name: Optional[str] = None,
                 **settings):
        super().__init__(name=name)
        self.image_shape = check_image_shape(image_shape)
        height, width, channels = self.image_shape
        self.factor = int(factor)
        if self.factor < 2 or height % self.factor or width % self.factor:
            raise ValueError(f"a multi-scale factor must be >= 2 and divide the image size "
                             f"{height}x{width}, got {factor}")
        self.layer_type = layer_type
        self.compute_dtype = tf.as_dtype(compute_dtype)
        self.num_classes = int(settings.get("num_classes", 0))
        small_shape = (height // self.factor, width // self.factor, channels)
        with self.name_scope:
            self.small = PixelRNN(small_shape, layer_type, compute_dtype=compute_dtype,
                                  name="small", **settings)
            self.large = PixelRNN(self.image_shape, layer_type, context_factor=self.factor,
                                  compute_dtype=compute_dtype, name="large", **settings)
        self.distribution = MultiScaleDistribution(self.small.distribution,
                                                   self.large.distribution, self.factor)

    @tf.Module.with_name_scope
    def __call__(self, images: tf.Tensor, labels: Optional[tf.Tensor] = None,
                 training: bool = False):
        images = tf.convert_to_tensor(images)
        check_inputs(self, images, labels)
        small = self.small_image(images)
        return (self.small(small, labels, training=training),
                self.large(images, labels, training=training, context=small))

    def small_image(self, images: tf.Tensor) -> tf.Tensor:
        """``[B, H, W, C]`` → the pixels the small network models, ``[B, H/f, W/f, C]``."""
        return images[:, ::self.factor, ::self.factor]
