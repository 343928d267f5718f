"""The Multi-Scale PixelRNN (van den Oord et al. 2016, section 3.5).

An unconditional network models the small image s = x[::f, ::f] (every f-th row and
column of x); a conditional network models the other sub-pixels of x given the whole
small image, which it sees through bias maps (``ContextPixelRNN``: an
unmasked convolution of s, up-sampled by a stride-f deconvolution, added where the class
vectors go in every layer). Both networks are ``PixelRNN``s of the same pixel-layer
type and settings, trained together: the likelihood is exact,

    p(x) = p_small(s) · p_cond(the sub-pixels of x not in s | s),

and every sub-pixel of x is counted once: the conditional network's loss leaves out the
pixels (f·a, f·b) that s already fixed. Bits/dim divide by N·H·W·C as for every model.
Sampling draws s first, then the rest of x with s kept (sampling.py).
"""
from __future__ import annotations

from typing import Optional, Sequence, Type

import tensorflow as tf

from pixelcnn_tf.likelihood import Distribution
from pixelcnn_tf.models.base import PixelLayer, Position, check_image_shape, check_inputs
from pixelcnn_tf.models.pixel_rnn import PixelRNN, settings_of
from pixelcnn_tf.nn.layers import Conv2D, per_image


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
        super().__init__(large.n_colors, large.n_levels)
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



class ContextPixelRNN(PixelRNN):
    """The conditional network of a Multi-Scale PixelRNN: a ``PixelRNN`` that also takes
    ``context``, the small image ``[B, H/f, W/f, C]`` in [0, 1], which it may see whole.

    An unmasked KxK convolution (K = ``input_kernel_size``) and ReLU encode it; a
    stride-f, fxf deconvolution (written as a 1x1 convolution and ``depth_to_space``)
    up-samples the code to ``[B, H, W, 2h]``; a 1x1 projection of it gives one bias map
    ``[B, H, W, width]`` per conditioning slot, added where the class vectors go (the
    input features and every layer).
    """

    def __init__(self, image_shape: Sequence[int], layer_cls: Type[PixelLayer], factor: int,
                 name: Optional[str] = None, **settings):
        super().__init__(image_shape, layer_cls, name=name, **settings)
        hidden_dim = settings.get("hidden_dim", 64)
        k, f = settings.get("input_kernel_size", 7), int(factor)
        self.context_factor = f
        with self.name_scope:
            self.context_conv = Conv2D(2 * hidden_dim, (k, k), (k // 2,) * 4, init_scale=2.0,
                                       name="context_conv")
            self.context_up = Conv2D(f * f * 2 * hidden_dim, (1, 1), name="context_up")
            self.context_proj = Conv2D(self._slots * self._condition_width, (1, 1),
                                       name="context_proj")
            self.context_proj(tf.zeros([1, 1, 1, 2 * hidden_dim]))  # its variables now:
            # slot_conditions multiplies by its kernel directly

    @tf.Module.with_name_scope
    def __call__(self, images: tf.Tensor, labels: Optional[tf.Tensor] = None,
                 training: bool = False, context: Optional[tf.Tensor] = None,
                 recompute: bool = False) -> tf.Tensor:
        """images ``[B, H, W, C]`` in [0, 1], labels ``[B]`` (class-conditional models),
        context ``[B, H/f, W/f, C]`` in [0, 1] → the output distribution's parameters."""
        images = tf.convert_to_tensor(images)
        check_inputs(self, images, labels)
        return self.forward(images, self.slot_conditions(self.step_conditions(labels,
                                                                               context)),
                            recompute)

    def step_conditions(self, labels: Optional[tf.Tensor], context=None):
        """What the conditions are made of, once per batch: (the class vectors of every
        slot ``[B, slots, width]`` or None, the context code ``[B, H, W, 2h]``)."""
        if context is None:
            f = self.context_factor
            raise ValueError(f"{self.name} is the conditional network of a multi-scale "
                             f"model: pass context, the small image [B, H/{f}, W/{f}, C]")
        return self.condition_inputs(labels), self.context_code(context)

    def slot_conditions(self, inputs):
        """(class vectors ``[B, slots, width]`` or None, context code ``[B, ..., 2h]``: the
        whole map, one row ``[B, 1, W, 2h]`` or one pixel ``[B, 2h]``) → (the input
        features' bias or None, one condition per pixel layer): the bias maps (1x1
        projection of the code, + class vector) of the code's positions ``[B, ..., width]``."""
        classes, code = inputs
        slots = self.class_slots(classes)
        count, width = self._slots, self._condition_width
        # One 2-D matmul per slot, on the slot's columns of the projection (slicing the
        # small kernel instead of one big [.., slots, width] map keeps the gradient
        # cheap; einsum's "...c,cd" gradient was ~200x slower on CPU).
        flat = tf.reshape(code, [-1, code.shape[-1]])  # [B·..., 2h]
        kernel = tf.reshape(tf.cast(self.context_proj.kernel[0, 0], code.dtype),
                            [-1, count, width])  # [2h, slots, width]
        bias = tf.reshape(tf.cast(self.context_proj.bias, code.dtype), [count, width])
        shape = tf.concat([tf.shape(code)[:-1], [width]], 0)
        for k in range(count):
            bias_map = tf.reshape(tf.matmul(flat, kernel[:, k]) + bias[k], shape)
            bias_map.set_shape(code.shape[:-1].concatenate([width]))
            slots[k] = bias_map if slots[k] is None else bias_map + per_image(slots[k],
                                                                              bias_map)
        return self.split_slots(slots)

    def conditions_at(self, inputs, pos: Position):
        """The conditions of pixel ``pos``: the code there ``[N, 2h]``."""
        classes, code = inputs
        return self.slot_conditions(
            (classes, tf.gather(tf.gather(code, pos.i, axis=1), pos.j, axis=1)))

    def conditions_of_row(self, inputs, row):
        """The conditions of row ``row``: the code over it ``[N, 1, W, 2h]``."""
        classes, code = inputs
        return self.slot_conditions((classes, tf.gather(code, row, axis=1)[:, None]))

    def context_code(self, context: tf.Tensor) -> tf.Tensor:
        """The small image ``[B, H/f, W/f, C]`` in [0, 1] → its code at full resolution
        ``[B, H, W, 2h]``: an unmasked KxK convolution, ReLU, and the fxf stride-f
        deconvolution (a 1x1 convolution to f·f·2h maps and ``depth_to_space``)."""
        context = tf.convert_to_tensor(context)
        height, width, channels = self.image_shape
        f = self.context_factor
        want = (height // f, width // f, channels)
        if context.shape.rank != 4 or tuple(context.shape[1:]) != want:
            raise ValueError(f"{self.name} takes context images [B, {', '.join(map(str, want))}]"
                             f", got shape {context.shape.as_list()}")
        x = tf.cast(self.preprocess(context), self.compute_dtype)
        code = tf.nn.relu(self.context_conv(x))  # [B, H/f, W/f, 2h]
        return tf.nn.depth_to_space(self.context_up(code), f)  # [B, H, W, 2h]


class MultiScalePixelRNN(tf.Module):
    """Two ``PixelRNN``s in one model (see the module docstring).

    ``model(images, labels)`` with images ``[B, H, W, C]`` in [0, 1] → (the small
    network's parameters on ``images[:, ::f, ::f]``, the conditional network's on
    ``images``); ``model.distribution`` scores the pair. ``small`` and ``large`` are the
    two networks; class conditioning (``num_classes``) reaches both.
    """

    def __init__(self, image_shape: Sequence[int], factor: int, layer_cls: Type[PixelLayer],
                 compute_dtype: tf.DType = tf.float32, name: Optional[str] = None,
                 **settings):
        super().__init__(name=name)
        self.image_shape = check_image_shape(image_shape)
        height, width, channels = self.image_shape
        self.factor = int(factor)
        if self.factor < 2 or height % self.factor or width % self.factor:
            raise ValueError(f"a multi-scale factor must be >= 2 and divide the image size "
                             f"{height}x{width}, got {factor}")
        self.layer_type = layer_cls.type_name
        self.compute_dtype = tf.as_dtype(compute_dtype)
        self.num_classes = int(settings.get("num_classes", 0))
        small_shape = (height // self.factor, width // self.factor, channels)
        with self.name_scope:
            self.small = PixelRNN(small_shape, layer_cls, compute_dtype=compute_dtype,
                                  name="small", **settings)
            self.large = ContextPixelRNN(self.image_shape, layer_cls, self.factor,
                                         compute_dtype=compute_dtype, name="large",
                                         **settings)
        self.distribution = MultiScaleDistribution(self.small.distribution,
                                                   self.large.distribution, self.factor)

    @tf.Module.with_name_scope
    def __call__(self, images: tf.Tensor, labels: Optional[tf.Tensor] = None,
                 training: bool = False, recompute: bool = False):
        images = tf.convert_to_tensor(images)
        check_inputs(self, images, labels)
        small = self.small_image(images)
        return (self.small(small, labels, training=training, recompute=recompute),
                self.large(images, labels, training=training, context=small,
                           recompute=recompute))

    def small_image(self, images: tf.Tensor) -> tf.Tensor:
        """``[B, H, W, C]`` → the pixels the small network models, ``[B, H/f, W/f, C]``."""
        return images[:, ::self.factor, ::self.factor]

    def has_steps(self) -> bool:
        """Both networks are walked on their own (sampling.py)."""
        return self.small.has_steps() and self.large.has_steps()

    @classmethod
    def from_config(cls, layer_cls: Type[PixelLayer], model_config, image_shape,
                    compute_dtype: tf.DType = tf.float32, n_levels: int = 256
                    ) -> "MultiScalePixelRNN":
        return cls(image_shape, model_config.multiscale["factor"], layer_cls,
                   compute_dtype=compute_dtype, name="multiscale", n_levels=n_levels,
                   **settings_of(layer_cls, model_config))
