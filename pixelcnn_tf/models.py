"""The PixelRNN-style model container and ``build_model``."""
from __future__ import annotations

from typing import List, Optional, Sequence

import tensorflow as tf

from pixelcnn_tf.blocks import get_pixel_layer
from pixelcnn_tf.layers import MaskedConv2D, in_position_step, per_image, position_group

N_LEVELS = 256  # categorical output: one logit per 8-bit intensity


class PixelRNN(tf.Module):
    """Autoregressive image model over sub-pixels in raster order, R < G < B.

    images ``[B, H, W, C]`` in [0, 1]
      → kxk mask-A conv (C → 2h)                          (``input_kernel_size``;
                                                            gated: ``GatedInput``)
      → n_layers pixel layers of one registered type (2h → 2h)
      → ReLU → 1x1 mask-B conv (2h → out_dim) → ReLU → 1x1 mask-B conv (→ C·256)
      → logits ``[B, H, W, C, 256]``.

    Output ``[b, i, j, c]`` depends only on sub-pixels strictly before ``(i, j, c)``.
    With ``num_classes > 0`` a learned per-class vector enters the input features and
    every pixel layer (``condition_width`` values per layer: a bias of the stream, or the
    gated PixelCNN's gate projections); it is position-independent, so causality is
    unaffected.
    """

    def __init__(self, image_shape: Sequence[int], layer_type: str = "pixelcnn",
                 hidden_dim: int = 64, out_dim: int = 256, n_layers: int = 5,
                 kernel_size: int = 3, input_kernel_size: int = 7, num_classes: int = 0,
                 compute_dtype: tf.DType = tf.float32, name: Optional[str] = None):
        super().__init__(name=name)
        # Layers compute in compute_dtype (e.g. bfloat16); variables stay float32 and the
        # logits are returned in float32, so the softmax and loss run in float32.
        self.compute_dtype = tf.as_dtype(compute_dtype)
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
        self.image_shape = tuple(int(d) for d in image_shape)
        n_colors = self.image_shape[-1]
        if n_colors not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {n_colors}")
        self.n_colors = n_colors
        self.layer_type = layer_type
        self.num_classes = int(num_classes)
        layer_cls = get_pixel_layer(layer_type)
        self._layer_cls = layer_cls
        with self.name_scope:
            # A kxk mask-A convolution, or the layer type's own input layer (the gated
            # PixelCNN's two stacks).
            self.input_conv = layer_cls.make_input(hidden_dim, n_colors, input_kernel_size)
            self.pixel_layers = [
                layer_cls(hidden_dim, n_colors, kernel_size, name=f"{layer_type}_{i}")
                for i in range(n_layers)]
            self.output_hidden = MaskedConv2D(out_dim, 1, "B", n_colors, name="output_hidden")
            self.output_logits = MaskedConv2D(n_colors * N_LEVELS, 1, "B", n_colors,
                                              name="output_logits")
            if self.num_classes > 0:
                # [classes, slots, width]: slot 0 biases the input features (when the type
                # takes it), then one slot per pixel layer.
                self._first_layer_slot = int(layer_cls.condition_input)
                self.class_bias = tf.Variable(
                    tf.zeros([self.num_classes, self._first_layer_slot + n_layers,
                              layer_cls.condition_width(hidden_dim)]),
                    name="class_bias")

    def _check_inputs(self, images: tf.Tensor, labels) -> None:
        if images.shape.rank != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{self.name} was built for images [B, {', '.join(map(str, self.image_shape))}]"
                f", got shape {images.shape.as_list()}")
        if labels is not None and self.num_classes == 0:
            raise ValueError("labels were given to an unconditional model: set "
                             "model.num_classes > 0 to train a class-conditional model")
        if labels is None and self.num_classes > 0:
            raise ValueError(f"this model is class-conditional (num_classes="
                             f"{self.num_classes}): pass labels [B] with class ids")

    @tf.Module.with_name_scope
    def __call__(self, images: tf.Tensor, labels: Optional[tf.Tensor] = None) -> tf.Tensor:
        """images ``[B, H, W, C]`` float in [0, 1], labels ``[B]`` int
        → logits ``[B, H, W, C, 256]``."""
        images = tf.convert_to_tensor(images)
        self._check_inputs(images, labels)
        return self._forward(images, labels)

    def _forward(self, images: tf.Tensor, labels: Optional[tf.Tensor]) -> tf.Tensor:
        """The network on ``[B, H, W, C]`` → logits ``[B, H, W, C, 256]``.

        In a position step (``position_logits``) the same code runs on the pixel ``[B, C]``
        and every layer yields only the colour group being sampled: ``[B, 2h/C]`` in the
        stream and the logits ``[B, 256]`` of that colour at the end.
        """
        x = tf.cast(self.preprocess(images), self.compute_dtype)
        state, conditions = self._initial_state(x, labels, position_group)
        for layer, condition in zip(self.pixel_layers, conditions):
            state = layer(state, condition)
        features = self._layer_cls.features(state)  # [B, H, W, 2h]
        y = self.output_hidden(tf.nn.relu(features))  # [B, H, W, out_dim]
        y = tf.cast(self.output_logits(tf.nn.relu(y)), tf.float32)  # [B, H, W, C*256]
        if in_position_step():
            return y  # [B, 256]: the logits of the colour being sampled
        shape = tf.shape(y)
        # [..., C*256] → [..., C, 256]: channel groups are contiguous per colour.
        return tf.reshape(y, tf.concat([shape[:-1], [self.n_colors, N_LEVELS]], axis=0))

    def _initial_state(self, x: tf.Tensor, labels: Optional[tf.Tensor], group):
        """The input layer on preprocessed images ``x`` → (the first pixel layer's state,
        each pixel layer's class vector or None). ``group(values [B, D], n_colors)`` picks
        what a layer sees of a per-image vector (its colour group in a position step)."""
        conditions = [None] * len(self.pixel_layers)
        features = self.input_conv(x)  # [B, H, W, 2h] (the gated type: both stacks)
        if self.num_classes > 0:
            bias = tf.cast(tf.gather(self.class_bias, tf.cast(labels, tf.int32)),
                           self.compute_dtype)  # [B, slots, width]
            first = self._first_layer_slot
            if first:
                features += per_image(group(bias[:, 0], self.n_colors), features)
            conditions = [group(bias[:, first + i], self.n_colors)
                          for i in range(len(self.pixel_layers))]
        return self._layer_cls.initial_state(features), conditions

    @staticmethod
    def preprocess(images: tf.Tensor) -> tf.Tensor:
        """[0, 1] → [-1, 1]: what the layers in ``image_convs`` receive."""
        return tf.cast(images, tf.float32) * 2.0 - 1.0

    @property
    def image_convs(self) -> List[MaskedConv2D]:
        """The masked convolutions whose input is the (preprocessed) image itself."""
        return [m for m in (self.input_conv, *self.input_conv.submodules)
                if isinstance(m, MaskedConv2D)]

    @property
    def supports_fast_sampling(self) -> bool:
        """Whether every pixel layer can be evaluated at one position from caches (and,
        for row-wise layers, a state updated once per row)."""
        return bool(self._layer_cls.position_wise or self._layer_cls.row_wise)

    # -- row states, for the fast sampler of row-wise pixel layers ----------------------
    def initial_row_state(self, batch: tf.Tensor) -> list:
        """The row states of every pixel layer for row 0: a list with one tuple per layer
        (empty when the layers are position-wise and need none)."""
        if not self._layer_cls.row_wise:
            return []
        width = self.image_shape[1]
        return [layer.initial_row_state(batch, width, self.compute_dtype)
                for layer in self.pixel_layers]

    def row_update(self, row_state: list, images: tf.Tensor, row: tf.Tensor,
                   labels: Optional[tf.Tensor] = None) -> list:
        """Row states for row ``row + 1``, once row ``row`` of ``images`` ``[N, H, W, C]``
        (in [0, 1]) is final: the network runs on that one row, all columns, from the
        row states of row ``row``. Only the rows up to ``row`` are read."""
        if not self._layer_cls.row_wise:
            return []
        kh = self.input_conv.kernel_size[0]
        x = tf.cast(self.preprocess(images), self.compute_dtype)
        x = tf.pad(x, [[0, 0], [kh // 2, 0], [0, 0], [0, 0]])  # zero rows above the image
        n, _, width, channels = x.shape
        # Image rows row-kh//2 .. row → the input convolution's features at row `row`.
        window = tf.slice(x, tf.stack([0, row, 0, 0]), [-1, kh // 2 + 1, width, channels])
        state, conditions = self._initial_state(window, labels, lambda values, _: values)
        # [N, kh//2+1, W, ·] → the last row [N, 1, W, ·] (rows above were only context).
        state = tf.nest.map_structure(lambda t: t[:, -1:], state)
        new_states = []
        for layer, layer_rows, condition in zip(self.pixel_layers, row_state, conditions):
            layer_state, state = layer.row_update(layer_rows, state, condition)
            new_states.append(layer_state)
        return new_states

    def row_inputs(self, row_state: list) -> dict:
        """``row_state`` keyed by layer, as ``PositionCaches.step(..., rows=)`` takes it."""
        return {id(layer): rows for layer, rows in zip(self.pixel_layers, row_state)}

    def row_outputs(self, step) -> list:
        """The row states after a position step (layers may record the current row)."""
        if not self._layer_cls.row_wise:
            return []
        return [step.rows[id(layer)] for layer in self.pixel_layers]

    @property
    def masked_convs(self) -> List[MaskedConv2D]:
        """Every MaskedConv2D of the model, in a fixed order."""
        return [m for m in self.submodules if isinstance(m, MaskedConv2D)]

    def position_logits(self, pixels: tf.Tensor, labels: Optional[tf.Tensor] = None
                        ) -> tf.Tensor:
        """Logits of one sub-pixel (i, j, c): the pixel ``[B, C]`` in [0, 1] (its colours
        from c on are ignored) → ``[B, 256]``.

        Only valid inside ``layers.position_step(step)`` (the fast sampler), which says
        which sub-pixel and holds the caches of the earlier positions.
        """
        if not in_position_step():
            raise ValueError("position_logits runs inside layers.position_step; use "
                             "model(images) for whole images")
        return self._forward(pixels, labels if self.num_classes > 0 else None)


def build_model(model_config, image_shape: Sequence[int],
                compute_dtype: tf.DType = tf.float32) -> PixelRNN:
    """Builds a model from ``model_config`` (a ``ModelConfig``) and creates its variables.

    Returns a ``tf.Module``: ``model(images, labels=None)`` with images ``[B, H, W, C]`` in
    [0, 1] returns float32 logits ``[B, H, W, C, 256]``. ``compute_dtype`` (bfloat16 or
    float16 for mixed precision) is the dtype of the layers' arithmetic.
    """
    model = PixelRNN(image_shape, layer_type=model_config.type,
                     hidden_dim=model_config.hidden_dim, out_dim=model_config.out_dim,
                     n_layers=model_config.n_layers, kernel_size=model_config.kernel_size,
                     input_kernel_size=model_config.input_kernel_size,
                     num_classes=model_config.num_classes, compute_dtype=compute_dtype,
                     name="pixel_rnn")
    images = tf.zeros([1, *model.image_shape])
    labels = tf.zeros([1], tf.int32) if model.num_classes > 0 else None
    model(images, labels)  # creates every variable now, eagerly
    return model


def count_parameters(model: tf.Module) -> int:
    return int(sum(v.shape.num_elements() for v in model.trainable_variables))
