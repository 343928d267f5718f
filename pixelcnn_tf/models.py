"""The PixelRNN-style model container and ``build_model``."""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from pixelcnn_tf import attention  # noqa: F401  (registers the pixelsnail layer type)
from pixelcnn_tf.blocks import PIXEL_LAYERS, get_pixel_layer
from pixelcnn_tf.layers import Conv2D, MaskedConv2D, check_dilation, per_image
from pixelcnn_tf.likelihood import make_distribution


class PixelRNN(tf.Module):
    """Autoregressive image model over sub-pixels in raster order, R < G < B.

    images ``[B, H, W, C]`` in [0, 1]
      → kxk mask-A conv (C → 2h)                          (``input_kernel_size``;
                                                            gated: ``GatedInput``)
      → n_layers pixel layers of one registered type (2h → 2h), layer l with dilation
        ``dilations[l]`` (pixelcnn, gated_pixelcnn; default 1)
      → ReLU → 1x1 mask-B conv (2h → out_dim) → ReLU → 1x1 mask-B conv (→ P per pixel)
      → the parameters of ``output`` (see likelihood.py): categorical logits
        ``[B, H, W, C, 256]`` or logistic-mixture parameters ``[B, H, W, P]``.

    Categorical: masks split channels into C colour groups, so output ``[b, i, j, c]``
    depends only on sub-pixels strictly before ``(i, j, c)``. Logistic mixture: one group
    (``groups = 1``), so the output at ``(i, j)`` depends only on pixels strictly before
    ``(i, j)``, and the distribution orders the colours inside the pixel.
    With ``num_classes > 0`` a learned per-class vector enters the input features and
    every pixel layer (``condition_width`` values per layer: a bias of the stream, or the
    gated PixelCNN's gate projections); it is position-independent, so causality is
    unaffected.

    ``layer_options``: the layer type's own settings, passed to every pixel layer (the
    pixelsnail type: ``num_heads``, ``attention_dim``, ``convs_per_block``).

    With ``context_factor`` f > 0 the model is the conditional network of a Multi-Scale
    PixelRNN (multiscale.py): it also takes ``context``, an image ``[B, H/f, W/f, C]``
    in [0, 1] that it may see whole. An unmasked KxK convolution (K =
    ``input_kernel_size``) and ReLU encode it; a stride-f, fxf deconvolution (written as
    a 1x1 convolution and ``depth_to_space``) up-samples the code to ``[B, H, W, 2h]``;
    a 1x1 projection of it gives one bias map ``[B, H, W, width]`` per slot, added where
    the class vectors go (the input features and every layer).
    """

    def __init__(self, image_shape: Sequence[int], layer_type: str = "pixelcnn",
                 hidden_dim: int = 64, out_dim: int = 256, n_layers: int = 5,
                 kernel_size: int = 3, input_kernel_size: int = 7, num_classes: int = 0,
                 output: str = "categorical", num_mixtures: int = 10,
                 dilations: Optional[Sequence[int]] = None, context_factor: int = 0,
                 layer_options: Optional[dict] = None,
                 compute_dtype: tf.DType = tf.float32, name: Optional[str] = None):
        super().__init__(name=name)
        # Layers compute in compute_dtype (e.g. bfloat16); variables stay float32 and the
        # outputs are returned in float32, so the likelihood runs in float32.
        self.compute_dtype = tf.as_dtype(compute_dtype)
        self.image_shape = check_image_shape(image_shape)
        n_colors = self.image_shape[-1]
        self.n_colors = n_colors
        self.distribution = make_distribution(output, n_colors, num_mixtures)
        self.groups = self.distribution.groups  # colour groups of every mask
        self.layer_type = layer_type
        self.num_classes = int(num_classes)
        layer_cls = get_pixel_layer(layer_type)
        self._layer_cls = layer_cls
        self.dilations = check_dilations(dilations, n_layers)
        groups = self.groups
        with self.name_scope:
            # A kxk mask-A convolution, or the layer type's own input layer (the gated
            # PixelCNN's two stacks).
            self.input_conv = layer_cls.make_input(hidden_dim, groups, input_kernel_size)
            self.pixel_layers = [
                layer_cls(hidden_dim, groups, kernel_size, dilation=d,
                          name=f"{layer_type}_{i}", **(layer_options or {}))
                for i, d in enumerate(self.dilations)]
            self.output_hidden = MaskedConv2D(out_dim, 1, "B", groups, name="output_hidden")
            self.output_logits = MaskedConv2D(self.distribution.num_params, 1, "B", groups,
                                              name="output_logits")
            # Conditioning slots: slot 0 biases the input features (when the type takes
            # it), then one slot per pixel layer, each condition_width(h) values.
            self._first_layer_slot = int(layer_cls.condition_input)
            self._slots = self._first_layer_slot + n_layers
            self._condition_width = layer_cls.condition_width(hidden_dim)
            if self.num_classes > 0:
                self.class_bias = tf.Variable(  # [classes, slots, width]
                    tf.zeros([self.num_classes, self._slots, self._condition_width]),
                    name="class_bias")
            self.context_factor = int(context_factor)
            if self.context_factor:
                k, f = input_kernel_size, self.context_factor
                self.context_conv = Conv2D(2 * hidden_dim, (k, k), (k // 2,) * 4,
                                           init_scale=2.0, name="context_conv")
                self.context_up = Conv2D(f * f * 2 * hidden_dim, (1, 1), name="context_up")
                self.context_proj = Conv2D(self._slots * self._condition_width, (1, 1),
                                           name="context_proj")
                self.context_proj(tf.zeros([1, 1, 1, 2 * hidden_dim]))  # its variables now:
                # slot_conditions multiplies by its kernel directly

    @tf.Module.with_name_scope
    def __call__(self, images: tf.Tensor, labels: Optional[tf.Tensor] = None,
                 training: bool = False, context: Optional[tf.Tensor] = None) -> tf.Tensor:
        """images ``[B, H, W, C]`` float in [0, 1], labels ``[B]`` int (class-conditional
        models), context ``[B, H/f, W/f, C]`` in [0, 1] (``context_factor`` f > 0) → the
        output distribution's parameters (float32). ``training`` changes nothing here (no
        dropout)."""
        images = tf.convert_to_tensor(images)
        check_inputs(self, images, labels)
        x = tf.cast(self.preprocess(images), self.compute_dtype)
        input_bias, conditions = self.conditions(labels, context)
        state = self.input_state(x, input_bias)
        for layer, condition in zip(self.pixel_layers, conditions):
            state = layer(state, condition)
        features = self._layer_cls.features(state)  # [B, H, W, 2h]
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
        return self._layer_cls.initial_state(features)

    def conditions(self, labels: Optional[tf.Tensor], context: Optional[tf.Tensor] = None):
        """labels ``[B]`` and context ``[B, H/f, W/f, C]`` (each when the model takes it)
        → (the input features' bias or None, one condition or None per pixel layer), in
        the compute dtype: per-image class vectors ``[B, width]``, or with a context
        per-position maps ``[B, H, W, width]`` (bias map + class vector)."""
        return self.slot_conditions(*self.condition_inputs(labels, context))

    def condition_inputs(self, labels: Optional[tf.Tensor],
                         context: Optional[tf.Tensor] = None):
        """What the conditions are made of, once per batch: (the class vectors of every
        slot ``[B, slots, width]`` or None, the context code ``[B, H, W, 2h]`` or None)."""
        if context is not None and not self.context_factor:
            raise ValueError(f"{self.name} takes no context images (context_factor=0)")
        if context is None and self.context_factor:
            raise ValueError(f"{self.name} is the conditional network of a multi-scale "
                             f"model: pass context, the small image [B, H/{self.context_factor}"
                             f", W/{self.context_factor}, C]")
        classes = None
        if self.num_classes > 0:
            classes = tf.cast(tf.gather(self.class_bias, tf.cast(labels, tf.int32)),
                              self.compute_dtype)  # [B, slots, width]
        return classes, None if context is None else self.context_code(context)

    def slot_conditions(self, classes: Optional[tf.Tensor], code: Optional[tf.Tensor]):
        """(class vectors ``[B, slots, width]`` or None, context code ``[B, ..., 2h]`` or
        None: the whole map, one row ``[B, 1, W, 2h]`` or one pixel ``[B, 2h]``) → (the
        input features' bias or None, one condition per pixel layer): class vectors
        ``[B, width]``, or with a code the bias maps (1x1 projection of the code, + class
        vector) of the code's positions ``[B, ..., width]``."""
        count, width = self._slots, self._condition_width
        slots = [None] * count
        if classes is not None:  # [B, slots, width] → per slot [B, width]
            slots = tf.unstack(classes, count, axis=1)
        if code is not None:
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
        first = self._first_layer_slot
        return (slots[0] if first else None), slots[first:]

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

    @staticmethod
    def preprocess(images: tf.Tensor) -> tf.Tensor:
        """[0, 1] → [-1, 1]: what the input layer receives."""
        return tf.cast(images, tf.float32) * 2.0 - 1.0


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


def model_types() -> tuple:
    """Every ``model.type``: the registered pixel-layer types and ``pixelcnn_pp``."""
    return tuple(sorted((*PIXEL_LAYERS, "pixelcnn_pp")))


def build_model(model_config, image_shape: Sequence[int],
                compute_dtype: tf.DType = tf.float32, seed: int = 0) -> tf.Module:
    """Builds a model from ``model_config`` (a ``ModelConfig``) and creates its variables.

    Returns a ``tf.Module``: ``model(images, labels=None, training=False)`` with images
    ``[B, H, W, C]`` in [0, 1] returns the float32 parameters of ``model.distribution``
    (categorical logits ``[B, H, W, C, 256]`` or mixture parameters ``[B, H, W, P]``).
    With ``model.multiscale`` it is a ``multiscale.MultiScalePixelRNN``, whose parameters
    are a pair (small network's, conditional network's) scored by its distribution.
    ``compute_dtype`` (bfloat16 or float16 for mixed precision) is the dtype of the
    layers' arithmetic; ``seed`` seeds the dropout masks (models with dropout).
    """
    if model_config.type == "pixelcnn_pp":
        from pixelcnn_tf.pixelcnn_pp import PixelCNNPlusPlus
        model = PixelCNNPlusPlus(
            image_shape, filters=2 * model_config.hidden_dim,
            blocks_per_stage=model_config.n_layers, output=model_config.output,
            num_mixtures=model_config.num_mixtures, dropout=model_config.dropout,
            num_classes=model_config.num_classes, weight_norm=model_config.weight_norm,
            compute_dtype=compute_dtype, seed=seed, name="pixelcnn_pp")
    else:
        settings = dict(hidden_dim=model_config.hidden_dim, out_dim=model_config.out_dim,
                        n_layers=model_config.n_layers, kernel_size=model_config.kernel_size,
                        input_kernel_size=model_config.input_kernel_size,
                        num_classes=model_config.num_classes, output=model_config.output,
                        num_mixtures=model_config.num_mixtures,
                        dilations=model_config.dilations)
        if model_config.type == "pixelsnail":
            settings["layer_options"] = dict(
                num_heads=model_config.num_heads, attention_dim=model_config.attention_dim,
                convs_per_block=model_config.convs_per_block)
        if model_config.multiscale:
            from pixelcnn_tf.multiscale import MultiScalePixelRNN
            model = MultiScalePixelRNN(image_shape, model_config.multiscale["factor"],
                                       model_config.type, compute_dtype=compute_dtype,
                                       name="multiscale", **settings)
        else:
            model = PixelRNN(image_shape, layer_type=model_config.type,
                             compute_dtype=compute_dtype, name="pixel_rnn", **settings)
    images = tf.zeros([1, *model.image_shape])
    labels = tf.zeros([1], tf.int32) if model.num_classes > 0 else None
    model(images, labels)  # creates every variable now, eagerly
    return model


def count_parameters(model: tf.Module) -> int:
    return int(sum(v.shape.num_elements() for v in model.trainable_variables))
