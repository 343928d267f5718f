"""The PixelRNN-style container (van den Oord et al. 2016) and its step-by-step
evaluation: every model type built from pixel layers (pixelcnn, gated_pixelcnn, row_lstm,
diagonal_bilstm, pixelsnail) is this container with its layer type plugged in.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Type

import tensorflow as tf

from pixelcnn_tf.likelihood import make_distribution
from pixelcnn_tf.models.base import (PixelLayer, Position, check_dilations, check_image_shape,
                                     check_inputs)
from pixelcnn_tf.nn.layers import ConvStep, MaskedConv2D, colour_group, per_image, run_block


def settings_of(layer_cls: Type[PixelLayer], model_config) -> dict:
    """The container's keyword settings from a ``ModelConfig``: those every pixel-layer
    type takes, and the layer type's own (``layer_cls.OPTIONS``)."""
    m = model_config
    return dict(hidden_dim=m.hidden_dim, out_dim=m.out_dim, n_layers=m.n_layers,
                kernel_size=m.kernel_size, input_kernel_size=m.input_kernel_size,
                num_classes=m.num_classes, output=m.output, num_mixtures=m.num_mixtures,
                dilations=m.dilations,
                layer_options={k: getattr(m, k) for k in layer_cls.OPTIONS})


class PixelRNN(tf.Module):
    """Autoregressive image model over sub-pixels in raster order, R < G < B.

    images ``[B, H, W, C]`` in [0, 1]
      → kxk mask-A conv (C → 2h)                          (``input_kernel_size``;
                                                            gated: ``GatedInput``)
      → n_layers pixel layers of one type ``layer_cls`` (2h → 2h), layer l with dilation
        ``dilations[l]`` (pixelcnn, gated_pixelcnn; default 1)
      → ReLU → 1x1 mask-B conv (2h → out_dim) → ReLU → 1x1 mask-B conv (→ P per pixel)
      → the parameters of ``output`` (see likelihood.py): categorical logits
        ``[B, H, W, C, L]`` or logistic-mixture parameters ``[B, H, W, P]``.

    Categorical: masks split channels into C colour groups, so output ``[b, i, j, c]``
    depends only on sub-pixels strictly before ``(i, j, c)``. Logistic mixture: one group
    (``groups = 1``), so the output at ``(i, j)`` depends only on pixels strictly before
    ``(i, j)``, and the distribution orders the colours inside the pixel.
    With ``num_classes > 0`` a learned per-class vector enters the input features and
    every pixel layer (``condition_width`` values per layer: a bias of the stream, or the
    gated PixelCNN's gate projections); it is position-independent, so causality is
    unaffected. Conditioning enters through *slots*: slot 0 biases the input features
    (when the layer type takes it), then one slot per pixel layer.

    ``layer_options``: the layer type's own settings, passed to every pixel layer (the
    pixelsnail type: ``num_heads``, ``attention_dim``, ``convs_per_block``).
    ``n_levels``: L = 2^bits, the values of a sub-pixel (``data.bits``).
    """

    def __init__(self, image_shape: Sequence[int], layer_cls: Type[PixelLayer],
                 hidden_dim: int = 64, out_dim: int = 256, n_layers: int = 5,
                 kernel_size: int = 3, input_kernel_size: int = 7, num_classes: int = 0,
                 output: str = "categorical", num_mixtures: int = 10,
                 dilations: Optional[Sequence[int]] = None,
                 layer_options: Optional[dict] = None, n_levels: int = 256,
                 compute_dtype: tf.DType = tf.float32, name: Optional[str] = None):
        super().__init__(name=name)
        # Layers compute in compute_dtype (e.g. bfloat16); variables stay float32 and the
        # outputs are returned in float32, so the likelihood runs in float32.
        self.compute_dtype = tf.as_dtype(compute_dtype)
        self.image_shape = check_image_shape(image_shape)
        n_colors = self.image_shape[-1]
        self.n_colors = n_colors
        self.distribution = make_distribution(output, n_colors, num_mixtures, n_levels)
        self.groups = self.distribution.groups  # colour groups of every mask
        self.layer_cls = layer_cls
        self.layer_type = layer_cls.type_name
        self.num_classes = int(num_classes)
        self.dilations = check_dilations(dilations, n_layers)
        groups = self.groups
        with self.name_scope:
            # A kxk mask-A convolution, or the layer type's own input layer (the gated
            # PixelCNN's two stacks).
            self.input_conv = layer_cls.make_input(hidden_dim, groups, input_kernel_size)
            self.pixel_layers = [
                layer_cls(hidden_dim, groups, kernel_size, dilation=d,
                          name=f"{self.layer_type}_{i}", **(layer_options or {}))
                for i, d in enumerate(self.dilations)]
            self.output_hidden = MaskedConv2D(out_dim, 1, "B", groups, name="output_hidden")
            self.output_logits = MaskedConv2D(self.distribution.num_params, 1, "B", groups,
                                              name="output_logits")
            self._first_layer_slot = int(layer_cls.condition_input)
            self._slots = self._first_layer_slot + n_layers
            self._condition_width = layer_cls.condition_width(hidden_dim)
            if self.num_classes > 0:
                self.class_bias = tf.Variable(  # [classes, slots, width]
                    tf.zeros([self.num_classes, self._slots, self._condition_width]),
                    name="class_bias")

    @classmethod
    def from_config(cls, layer_cls: Type[PixelLayer], model_config, image_shape,
                    compute_dtype: tf.DType = tf.float32, name: str = "pixel_rnn",
                    **extra) -> "PixelRNN":
        """The container of ``model_config`` (a ``ModelConfig``) with ``layer_cls``."""
        return cls(image_shape, layer_cls, compute_dtype=compute_dtype, name=name,
                   **settings_of(layer_cls, model_config), **extra)

    @tf.Module.with_name_scope
    def __call__(self, images: tf.Tensor, labels: Optional[tf.Tensor] = None,
                 training: bool = False, recompute: bool = False) -> tf.Tensor:
        """images ``[B, H, W, C]`` float in [0, 1], labels ``[B]`` int (class-conditional
        models) → the output distribution's parameters (float32). ``training`` changes
        nothing here (no dropout); ``recompute``: each pixel layer's activations are
        recomputed in the backward pass instead of kept (``nn.layers.run_block``)."""
        images = tf.convert_to_tensor(images)
        check_inputs(self, images, labels)
        return self.forward(images, self.slot_conditions(self.condition_inputs(labels)),
                            recompute)

    def forward(self, images: tf.Tensor, slots, recompute: bool = False) -> tf.Tensor:
        """The full pass, given the conditions ``slots`` (``slot_conditions``)."""
        x = tf.cast(self.preprocess(images), self.compute_dtype)
        input_bias, conditions = slots
        state = self.input_state(x, input_bias)
        for layer, condition in zip(self.pixel_layers, conditions):
            state = run_block(layer, state, condition, recompute=recompute)
        features = self.layer_cls.features(state)  # [B, H, W, 2h]
        y = self.output_hidden(tf.nn.relu(features))  # [B, H, W, out_dim]
        y = tf.cast(self.output_logits(tf.nn.relu(y)), tf.float32)  # [B, H, W, P]
        return self.distribution.to_output(y)

    def input_state(self, x: tf.Tensor, input_bias: Optional[tf.Tensor]):
        """Preprocessed images ``x`` ``[B, H, W, C]`` (or a window of rows) → the first
        pixel layer's state: the input layer (``[B, H, W, 2h]``; the gated type: both
        stacks) plus the class bias ``[B, 2h]`` when the type takes it."""
        features = self.input_conv(x)
        if input_bias is not None:
            features += per_image(input_bias, features)
        return self.layer_cls.initial_state(features)

    def condition_inputs(self, labels: Optional[tf.Tensor]) -> Optional[tf.Tensor]:
        """labels ``[B]`` → the class vectors of every slot ``[B, slots, width]`` in the
        compute dtype (None for an unconditional model)."""
        if self.num_classes == 0:
            return None
        return tf.cast(tf.gather(self.class_bias, tf.cast(labels, tf.int32)),
                       self.compute_dtype)  # [B, slots, width]

    def class_slots(self, classes: Optional[tf.Tensor]) -> List[Optional[tf.Tensor]]:
        """Class vectors ``[B, slots, width]`` (or None) → one ``[B, width]`` (or None)
        per slot."""
        if classes is None:
            return [None] * self._slots
        return tf.unstack(classes, self._slots, axis=1)

    def split_slots(self, slots: list):
        """One condition per slot → (the input features' bias or None, one condition per
        pixel layer)."""
        first = self._first_layer_slot
        return (slots[0] if first else None), slots[first:]

    def slot_conditions(self, classes: Optional[tf.Tensor]):
        """Class vectors ``[B, slots, width]`` or None → (the input features' bias or
        None, one condition or None per pixel layer)."""
        return self.split_slots(self.class_slots(classes))

    # What the stepper asks for: the conditions once per batch, then those of a step or
    # of a finished row (the same class vectors everywhere).
    def step_conditions(self, labels: Optional[tf.Tensor], context=None):
        if context is not None:
            raise ValueError(f"{self.name} takes no context images")
        return self.condition_inputs(labels)

    def conditions_at(self, classes, pos: Position):
        return self.slot_conditions(classes)

    def conditions_of_row(self, classes, row):
        return self.slot_conditions(classes)

    @staticmethod
    def preprocess(images: tf.Tensor) -> tf.Tensor:
        """[0, 1] → [-1, 1]: what the input layer receives."""
        return tf.cast(images, tf.float32) * 2.0 - 1.0

    def has_steps(self) -> bool:
        """Whether every pixel layer's type has its cached step (``Step``)."""
        return all(type(layer).Step is not None for layer in self.pixel_layers)

    def stepper(self, dtype: Optional[tf.DType] = None) -> "PixelRNNStepper":
        """This model evaluated step by step (see models/base.py), in ``dtype``."""
        if not self.has_steps():
            raise ValueError(f"model type {self.layer_type!r} has no incremental evaluation")
        return PixelRNNStepper(self, dtype)


class PixelRNNStepper:
    """A ``models.PixelRNN`` evaluated step by step.

    Step (i, j, c): the input layer at the pixel (its earlier colour groups; the gated
    type's input layer yields only the horizontal stack, the vertical one enters through
    the row states), every pixel layer, the output layers: the parameters of colour group
    c, ``[N, P / groups]``. Hidden activations at (i, j) never depend on the last colour
    group of (i, j) (mask A), so the caches written while drawing it are final; only the
    input layer's cache (which holds the image itself) is rewritten by ``record``.
    """

    def __init__(self, model, dtype: Optional[tf.DType] = None):
        self.model = model
        self.dtype = tf.as_dtype(dtype or model.compute_dtype)
        self.groups = model.groups
        _, width, _ = model.image_shape
        self.input = ConvStep(model.layer_cls.input_masked_conv(model.input_conv), width,
                              self.dtype)
        self.layers = [type(layer).Step(layer, width, self.dtype)
                       for layer in model.pixel_layers]
        self.row_wise = any(step.row_wise for step in self.layers)
        self.out_hidden = ConvStep(model.output_hidden, width, self.dtype)
        self.out_params = ConvStep(model.output_logits, width, self.dtype)

    def initial(self, batch) -> tuple:
        return (self.input.initial(batch), tuple(s.initial(batch) for s in self.layers),
                self.out_hidden.initial(batch), self.out_params.initial(batch))

    def _pixel(self, images: tf.Tensor, i, j) -> tf.Tensor:
        """images ``[N, H, W, C]`` in [0, 1] → the preprocessed pixel (i, j) ``[N, C]``."""
        return tf.cast(self.model.preprocess(images[:, i, j, :]), self.dtype)

    def conditions(self, labels: Optional[tf.Tensor] = None,
                   context: Optional[tf.Tensor] = None):
        """What the model's conditions are made of (``model.step_conditions``: class
        vectors; a multi-scale conditional network's context code too), computed once
        before the steps; each step takes its own from them (``model.conditions_at``)."""
        return self.model.step_conditions(labels, context)

    def step(self, cache: tuple, images: tf.Tensor, pos: Position, conditions):
        """→ (cache, the step's distribution parameters ``[N, P / groups]`` float32).
        ``images`` ``[N, H, W, C]`` in [0, 1]: pixel (i, j)'s colours before group c are
        read (later ones are masked). ``conditions``: from ``self.conditions``."""
        in_cache, layer_caches, hid_cache, out_cache = cache
        model = self.model
        input_bias, conditions = model.conditions_at(conditions, pos)  # [N, width] each
        in_cache, features = self.input.step(in_cache, self._pixel(images, pos.i, pos.j), pos)
        if input_bias is not None:
            features += colour_group(input_bias, self.groups, pos.c)
        state = model.layer_cls.step_state(features)
        new_caches = []
        for step, layer_cache, condition in zip(self.layers, layer_caches, conditions):
            layer_cache, state = step.step(layer_cache, state, pos, condition)
            new_caches.append(layer_cache)
        features = model.layer_cls.features(state)
        hid_cache, y = self.out_hidden.step(hid_cache, tf.nn.relu(features), pos)
        out_cache, params = self.out_params.step(out_cache, tf.nn.relu(y), pos)
        return ((in_cache, tuple(new_caches), hid_cache, out_cache),
                tf.cast(params, tf.float32))

    def record(self, cache: tuple, images: tf.Tensor, pos: Position) -> tuple:
        """Stores pixel (i, j) of ``images`` (its drawn values) in the input layer's cache
        and in the layers that read the image (``LayerStep.record``)."""
        in_cache, layer_caches, *rest = cache
        pixel = self._pixel(images, pos.i, pos.j)  # [N, C]
        in_cache = self.input.write(in_cache, pixel, pos)
        layer_caches = tuple(step.record(layer_cache, pixel, pos)
                             for step, layer_cache in zip(self.layers, layer_caches))
        return (in_cache, layer_caches, *rest)

    def finish_row(self, cache: tuple, images: tf.Tensor, row, conditions) -> tuple:
        """Row ``row`` of ``images`` ``[N, H, W, C]`` (in [0, 1]) is final: the row-wise
        layers' states for row ``row + 1``, from one pass of the network over that row (all
        columns), reading only image rows up to ``row``."""
        if not self.row_wise:
            return cache
        model = self.model
        in_cache, layer_caches, hid_cache, out_cache = cache
        kh = model.input_conv.kernel_size[0]
        x = tf.cast(model.preprocess(images), self.dtype)
        x = tf.pad(x, [[0, 0], [kh // 2, 0], [0, 0], [0, 0]])  # zero rows above the image
        n, _, width, channels = x.shape
        # Image rows row-kh//2 .. row → the input layer's features at row `row`.
        window = tf.slice(x, tf.stack([0, row, 0, 0]), [-1, kh // 2 + 1, width, channels])
        # Vectors [N, width], or (a context) maps [N, 1, W, width].
        input_bias, conditions = model.conditions_of_row(conditions, row)
        # [N, kh//2+1, W, ·] → the last row [N, 1, W, ·] (rows above were only context).
        state = tf.nest.map_structure(lambda t: t[:, -1:], model.input_state(window, input_bias))
        new_caches = []
        for step, layer_cache, condition in zip(self.layers, layer_caches, conditions):
            layer_cache, state = step.finish_row(layer_cache, state, condition)
            new_caches.append(layer_cache)
        return in_cache, tuple(new_caches), hid_cache, out_cache

