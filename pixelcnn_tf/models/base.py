"""What every model type shares: the pixel-layer interface, the step contract of the fast
sampler, the input checks, and ``walk``.

A model is evaluated two ways. The full pass (``model(images)``) runs every layer over
whole images: training, scoring and the naive sampler. The fast sampler and the codec
visit the steps in raster order, pixel (i, j) and, for models whose masks split channels
into colour groups (the categorical output), colour group c of it; each component is then
evaluated at the one position from caches of earlier steps (Ramachandran et al. 2017).
The results equal the full pass. Every component implements one explicit API:

  ``initial(batch)``                 → its cache before the first step (a nest of tensors,
                                        carried by the sampler's while loop);
  ``step(cache, x, pos, ...)``       → (cache, its output at position ``pos``): ``x`` is its
                                        input there (``[N, D]``, or colour group ``pos.c``
                                        of it, ``[N, D / groups]``);
  ``finish_row(cache, x_row, ...)``  → (cache, its output over the row), once row r is
                                        complete, for layers whose dependence on the rows
                                        above goes through a per-row state (``row_wise``);
  ``record(cache, pixel, pos)``      → cache, after the step's sub-pixels are drawn, for
                                        layers that read the image itself.

Components: ``nn.layers.ConvStep`` (a MaskedConv2D), one ``LayerStep`` per pixel-layer type
(in the type's own file, named by its ``Step``), and a model's stepper
(``model.stepper()``: ``PixelRNNStepper``, ``PixelCNNPPStepper``). ``walk`` runs a stepper
over every step; the sampler, the codec and the tests use exactly this API.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Type

import tensorflow as tf

from pixelcnn_tf.nn.layers import ConvStep, MaskedConv2D, Position, check_dilation


class PixelLayer(tf.Module):
    """Base class of pixel layers. Subclasses take ``(hidden_dim, n_colors, kernel_size,
    dilation)``; ``n_colors`` is the number of colour groups of their masks (1 for models
    whose output distribution predicts a whole pixel at once). Types whose spatial
    convolutions can be dilated set ``dilatable``; the others refuse ``dilation != 1``.

    A layer type is sampled with the fast sampler when its class names its cached
    one-position evaluation, a ``LayerStep`` subclass, in ``Step`` (in the same file);
    otherwise with the naive one. ``type_name`` is its ``model.type``.
    """
    type_name: str = ""
    Step: Optional[Type["LayerStep"]] = None
    OPTIONS: tuple = ()  # the model.* keys of its own, passed to __init__ (PixelSNAIL's)
    # Class conditioning: the container adds a learned class bias to the input layer's
    # features when ``condition_input`` and passes each layer a per-class vector of
    # ``condition_width(h)`` values (``condition``).
    condition_input = True
    dilatable = False

    def __init__(self, hidden_dim: int, n_colors: int, kernel_size: int = 3,
                 dilation: int = 1, name: Optional[str] = None):
        super().__init__(name=name)
        self.hidden_dim = hidden_dim
        self.n_colors = n_colors
        self.kernel_size = kernel_size
        self.dilation = check_dilation(dilation)
        if self.dilation != 1 and not self.dilatable:
            raise ValueError(f"{type(self).__name__} has no dilated form (dilation="
                             f"{dilation}); dilations apply to the "
                             "types whose layers set dilatable")

    @staticmethod
    def condition_width(hidden_dim: int) -> int:
        return 2 * hidden_dim

    @staticmethod
    def make_input(hidden_dim: int, n_colors: int, kernel_size: int) -> tf.Module:
        """The input layer: images ``[B, H, W, C]`` (preprocessed) → the features that
        ``initial_state`` turns into the first state. Default: a kxk mask-A convolution
        (C → 2h)."""
        return MaskedConv2D(2 * hidden_dim, kernel_size, "A", n_colors, name="input_conv")

    @staticmethod
    def initial_state(features):
        """The input layer's output (``[B, H, W, 2h]`` by default) → this type's state."""
        return features

    @staticmethod
    def features(state) -> tf.Tensor:
        """This type's state → features ``[B, H, W, 2h]`` for the output layers."""
        return state

    # The fast sampler (``LayerStep``) evaluates the input layer's masked convolution
    # at one position and turns its output there into this type's state at the step.
    @staticmethod
    def input_masked_conv(input_layer: tf.Module) -> MaskedConv2D:
        """The masked convolution of the image inside ``make_input``'s layer."""
        return input_layer

    @staticmethod
    def step_state(features):
        """That convolution's output at one position → the state at the step."""
        return features

    def __call__(self, state, condition: Optional[tf.Tensor] = None):
        raise NotImplementedError



class LayerStep:
    """A pixel layer evaluated incrementally (see ``walk``).

    ``row_wise`` layers get ``finish_row`` after every row; their ``step`` reads the row
    state it left. Inputs and outputs are the layer type's state (a tensor, or the gated
    PixelCNN's (vertical, horizontal) pair), at one position and colour group in ``step``
    and over one row ``[N, 1, W, ·]`` in ``finish_row``.
    """

    row_wise = False

    def __init__(self, layer: PixelLayer, width: int, dtype: tf.DType):
        self.layer, self.width, self.dtype = layer, width, dtype
        self.groups = layer.n_colors

    def conv(self, conv: MaskedConv2D) -> ConvStep:
        return ConvStep(conv, self.width, self.dtype)

    def initial(self, batch) -> tuple:
        raise NotImplementedError

    def step(self, cache: tuple, x, pos: Position, condition: Optional[tf.Tensor]):
        raise NotImplementedError

    def finish_row(self, cache: tuple, x_row, condition: Optional[tf.Tensor]):
        return cache, None

    def record(self, cache: tuple, pixel: tf.Tensor, pos: Position) -> tuple:
        """After a step's sub-pixels are drawn: ``pixel`` ``[N, C]`` is pixel ``pos`` of
        the image (preprocessed; its colour groups after ``pos.c`` are not drawn yet and
        hold any value). Layers that read the image itself keep what they need here."""
        return cache



def check_dilations(dilations: Optional[Sequence[int]], n_layers: int) -> tuple:
    """One dilation rate per pixel layer (None: all 1), as a tuple of ints >= 1."""
    if dilations is None:
        return (1,) * n_layers
    dilations = tuple(dilations)
    if len(dilations) != n_layers:
        raise ValueError(f"dilations must give one rate per pixel layer: {n_layers} layers, "
                         f"{len(dilations)} rates {list(dilations)}")
    return tuple(check_dilation(d) for d in dilations)


def check_image_shape(image_shape: Sequence[int]) -> tuple:
    """``(H, W, C)`` with C in (1, 3), as ints, or a ValueError."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
    image_shape = tuple(int(d) for d in image_shape)
    if image_shape[-1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {image_shape[-1]}")
    return image_shape


def check_inputs(model, images: tf.Tensor, labels) -> None:
    """A model's call arguments against its image shape and class conditioning."""
    if images.shape.rank != 4 or tuple(images.shape[1:]) != model.image_shape:
        raise ValueError(
            f"{model.name} was built for images [B, {', '.join(map(str, model.image_shape))}]"
            f", got shape {images.shape.as_list()}")
    if labels is not None and model.num_classes == 0:
        raise ValueError("labels were given to an unconditional model: set "
                         "model.num_classes > 0 to train a class-conditional model")
    if labels is None and model.num_classes > 0:
        raise ValueError(f"this model is class-conditional (num_classes="
                         f"{model.num_classes}): pass labels [B] with class ids")



def has_steps(model) -> bool:
    """Whether ``model`` has a cached step-by-step evaluation (``model.stepper()``)."""
    return bool(getattr(model, "has_steps", lambda: False)())


def step_position(k, width: int, groups: int) -> Position:
    """Step index k (raster order over pixels, then colour groups) → its Position."""
    return Position(k // (width * groups), (k // groups) % width, k % groups)


def walk(model, images: tf.Tensor, labels: Optional[tf.Tensor], fill: Callable,
         context: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Visits every step of ``model`` in raster order with ``model.stepper()`` inside a
    ``tf.while_loop`` (call it inside a ``tf.function``) and returns the final images.

    At step (i, j, c) the layers are advanced to the position (``finish_row`` once per
    completed row for row-wise layers, then ``step``), ``fill(params, images, pos)`` writes
    the step's sub-pixels into ``images`` (int32 ``[N, H, W, C]``; the sampler draws them,
    the codec codes them) and ``record`` stores them where the layers reading the image
    need them. ``labels``: int32 ``[N]`` for class-conditional models, else None;
    ``context``: the small image ``[N, H/f, W/f, C]`` in [0, 1] for the conditional
    network of a multi-scale model, else None. Their conditions are computed once, before
    the loop.
    """
    height, width, _ = model.image_shape
    groups, n_levels = model.distribution.groups, model.distribution.n_levels
    evaluator = model.stepper()
    conditions = evaluator.conditions(labels, context)

    def body(k, images, cache):
        pos = step_position(k, width, groups)
        inputs = unit_images(images, n_levels)  # [N, H, W, C] in [0, 1]
        if evaluator.row_wise:  # row-wise layers: update their row states at each new row
            cache = tf.cond((pos.i > 0) & tf.equal(pos.j, 0) & tf.equal(pos.c, 0),
                            lambda: evaluator.finish_row(cache, inputs, pos.i - 1, conditions),
                            lambda: cache)
        cache, params = evaluator.step(cache, inputs, pos, conditions)
        images = fill(params, images, pos)
        # The layers reading the image get the pixel with the values just written.
        cache = evaluator.record(cache, unit_images(images, n_levels), pos)
        return k + 1, images, cache

    _, images, _ = tf.while_loop(lambda k, *_: k < height * width * groups, body,
                                 [tf.constant(0), images,
                                  evaluator.initial(tf.shape(images)[0])])
    return images


def unit_images(images: tf.Tensor, n_levels: int) -> tf.Tensor:
    """Integer levels ``[..., C]`` (0..L-1; 0..255 for 8-bit images) → float32 in [0, 1],
    what a model takes: the one place the scale is written."""
    return tf.cast(images, tf.float32) / float(n_levels - 1)
