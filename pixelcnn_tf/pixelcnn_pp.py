"""PixelCNN++ (Salimans et al. 2017, "PixelCNN++: Improving the PixelCNN with Discretized
Logistic Mixture Likelihood and Other Modifications"): ``model.type: pixelcnn_pp``.

Two streams of F filters with no blind spot, built from shifted (not masked) kernels:
  u   (down-shifted): the value at row i sees the rows above i only (2x3 kernels whose
      output row i reads input rows i-1..i, started from the image shifted down a row);
  ul  (down-right-shifted): the value at (i, j) sees the rows above and the pixels left
      of (i, j) in row i (2x2 kernels reading rows i-1..i, columns j-1..j, started from
      the image shifted down and shifted right), and reads u at every block.
Three resolutions: ``blocks_per_stage`` gated ResNet blocks per stage; stride-2 shifted
convolutions go down (H → H/2 → H/4), stride-2 transposed shifted convolutions come
back up, and every down block's output enters the matching up block (U-net style:
``nr_resnet + 1`` blocks per up stage at H/2 and H). A gated ResNet block is
x + a·σ(b) with [a | b] = conv(dropout(concat_elu(conv(concat_elu(x)) + 1x1(concat_elu(aux)))))
(+ a per-class vector), concat_elu(x) = elu([x, -x]). The output 1x1 layer predicts the
distribution of each pixel, which depends only on pixels strictly before it (tested by
Jacobian from the first step): the discretized logistic mixture of the paper
(likelihood.LogisticMixture), or for grey images optionally 256 logits
(likelihood.Categorical; a pixel is one sub-pixel, so no colour masks are needed).

Weight normalisation with data-dependent initialisation, as the paper, is
``model.weight_norm: true`` (the trainer initialises from the first training batch);
without it every kernel is a plain variable (truncated normal, stddev
sqrt(scale / fan_in), the second convolution of every block scaled down 10x). Class
conditioning is a learned vector per block and class (the paper's ``h`` projection of a
one-hot label).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from pixelcnn_tf.likelihood import make_distribution
from pixelcnn_tf.models import check_image_shape, check_inputs


def concat_elu(x: tf.Tensor) -> tf.Tensor:
    """``[..., C]`` → ``[..., 2C]``: elu of x and of -x."""
    return tf.nn.elu(tf.concat([x, -x], axis=-1))


def down_shift(x: tf.Tensor) -> tf.Tensor:
    """``[B, H, W, C]`` moved down a row (zeros on top)."""
    return tf.pad(x, [[0, 0], [1, 0], [0, 0], [0, 0]])[:, :-1]


def right_shift(x: tf.Tensor) -> tf.Tensor:
    """``[B, H, W, C]`` moved right a column (zeros on the left)."""
    return tf.pad(x, [[0, 0], [0, 0], [1, 0], [0, 0]])[:, :, :-1]


def _weights(shape, fan_in: int, init_scale: float, name: str) -> tf.Variable:
    return tf.Variable(tf.random.truncated_normal(
        shape, stddev=float(np.sqrt(init_scale / max(fan_in, 1)))), name=name)


class _Linear(tf.Module):
    """What the three linear layers share: a kernel and a bias ``[F]``, made on the first
    call, and the kernel's two parametrisations.

    Plain (``weight_norm=False``): the kernel is a variable (truncated normal, stddev
    sqrt(init_scale / fan_in)). Weight normalisation (Salimans & Kingma 2016, as in the
    PixelCNN++ paper): kernel = g · v / ‖v‖, the norm over every axis but the output
    channel's, with the variables ``direction`` v and ``scale`` g ``[F]``. Its
    data-dependent initialisation (``PixelCNNPlusPlus.initialize_from_data``) sets g and
    the bias from a batch so that every output channel starts with mean 0 and standard
    deviation ``init_scale`` on it.
    """

    out_axis = -1  # the kernel's output-channel axis

    def __init__(self, features_out: int, init_scale: float, weight_norm: bool,
                 name: Optional[str] = None):
        super().__init__(name=name)
        self.features_out = int(features_out)
        self.init_scale = float(init_scale)
        self.weight_norm = bool(weight_norm)
        self.kernel: Optional[tf.Variable] = None  # plain
        self.direction: Optional[tf.Variable] = None  # weight-normalised: v and g
        self.scale: Optional[tf.Variable] = None
        self.bias: Optional[tf.Variable] = None
        self.init_pending = False  # set by initialize_from_data for one eager call

    def _make_variables(self, shape, fan_in: int) -> None:
        if self.bias is not None:
            return
        with self.name_scope:
            if self.weight_norm:
                self.direction = tf.Variable(tf.random.truncated_normal(shape, stddev=0.05),
                                             name="direction")
                self.scale = tf.Variable(tf.ones([self.features_out]), name="scale")
            else:
                self.kernel = _weights(shape, fan_in, self.init_scale, "kernel")
            self.bias = tf.Variable(tf.zeros([self.features_out]), name="bias")

    def weights(self, dtype: tf.DType = tf.float32) -> tf.Tensor:
        """The kernel in ``dtype`` (computed in float32 from g and v when weight-normalised)."""
        if not self.weight_norm:
            return tf.cast(self.kernel, dtype)
        rank = self.direction.shape.rank
        out = self.out_axis % rank
        axes = [a for a in range(rank) if a != out]
        shape = [self.features_out if a == out else 1 for a in range(rank)]
        unit = tf.nn.l2_normalize(self.direction, axis=axes)
        return tf.cast(unit * tf.reshape(self.scale, shape), dtype)

    def _output(self, compute) -> tf.Tensor:
        """``compute()`` → the layer's output (kernel and bias applied); on the pending
        data-dependent call, first sets g and the bias from that output's moments."""
        if not self.init_pending:
            return compute()
        if not self.weight_norm:
            raise ValueError(f"{self.name}: data-dependent initialisation needs weight_norm")
        self.init_pending = False
        self.scale.assign(tf.ones_like(self.scale))
        self.bias.assign(tf.zeros_like(self.bias))
        y = compute()  # v / ‖v‖ applied, no bias
        axes = list(range(y.shape.rank - 1))
        mean, variance = tf.nn.moments(tf.cast(y, tf.float32), axes=axes)
        # A channel constant on the batch (e.g. a stream that sees only padding, as at
        # H/4 = 1 row) keeps g = init_scale instead of a huge 1/std.
        scale = self.init_scale / tf.sqrt(tf.where(variance > 1e-6, variance, 1.0))
        self.scale.assign(scale)
        self.bias.assign(-mean * scale)
        return compute()


class ShiftedConv2D(_Linear):
    """A convolution whose output at (i, j) reads input rows s·i-kh+1..s·i (never a row
    below) and columns s·j-left..s·j-left+kw-1, with zero padding: ``left = (kw-1)//2``
    for a down-shifted kernel (centred columns), ``kw - 1`` for a down-right-shifted one
    (columns up to j). Output size: ``ceil(H / s) x ceil(W / s)``. Kernel
    ``[kh, kw, C_in, F]`` (see ``_Linear``), bias ``[F]`` (zeros).
    """

    def __init__(self, features_out: int, kernel_size: Sequence[int], right_shifted: bool,
                 stride: int = 1, init_scale: float = 1.0, weight_norm: bool = False,
                 name: Optional[str] = None):
        super().__init__(features_out, init_scale, weight_norm, name=name)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        kh, kw = self.kernel_size
        self.stride = int(stride)
        # (top, left, right) zero padding.
        self.padding = (kh - 1, kw - 1, 0) if right_shifted else (kh - 1, (kw - 1) // 2,
                                                                  (kw - 1) // 2)

    def build(self, features_in: int) -> None:
        kh, kw = self.kernel_size
        self._make_variables((kh, kw, features_in, self.features_out), kh * kw * features_in)

    def pad(self, x: tf.Tensor) -> tf.Tensor:
        """``[B, H, W, C]`` → ``[B, H + top, W + left + right, C]``."""
        top, left, right = self.padding
        return tf.pad(x, [[0, 0], [top, 0], [left, right], [0, 0]])

    def valid(self, padded: tf.Tensor) -> tf.Tensor:
        """The convolution of an already padded input (VALID, the layer's stride)."""
        y = tf.nn.conv2d(padded, self.weights(padded.dtype), strides=self.stride,
                         padding="VALID")
        return tf.nn.bias_add(y, tf.cast(self.bias, padded.dtype))

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        self.build(int(x.shape[-1]))
        padded = self.pad(x)
        return self._output(lambda: self.valid(padded))


class ShiftedDeconv2D(_Linear):
    """The stride-2 transposed convolution that undoes ``ShiftedConv2D``'s down-sampling:
    ``[B, H, W, C]`` → ``[B, 2H, 2W, F]``; output row r reads input row r // 2 only, and
    output column c reads columns (c+1)//2 - 1..c//2 (down-shifted, kernel 2x3: the
    columns around c) or c // 2 (down-right-shifted, kernel 2x2). So a value that sees
    only the pixels before (2i, 2j) at half resolution reaches full-resolution pixels
    (r, c) with r >= 2i and, in row 2i, c >= 2j: causality is kept. Kernel
    ``[kh, kw, F, C_in]`` (conv2d_transpose's layout; see ``_Linear``).
    """

    out_axis = 2

    def __init__(self, features_out: int, right_shifted: bool, init_scale: float = 1.0,
                 weight_norm: bool = False, name: Optional[str] = None):
        super().__init__(features_out, init_scale, weight_norm, name=name)
        self.kernel_size = (2, 2) if right_shifted else (2, 3)
        self.crop_left = 0 if right_shifted else 1

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        kh, kw = self.kernel_size
        c_in = int(x.shape[-1])
        self._make_variables((kh, kw, self.features_out, c_in), kh * kw * c_in // 4)
        batch, height, width = tf.shape(x)[0], x.shape[1], x.shape[2]
        full = [batch, 2 * height + kh - 1, 2 * width + kw - 1, self.features_out]

        def compute():
            y = tf.nn.conv2d_transpose(x, self.weights(x.dtype), tf.stack(full), strides=2,
                                       padding="VALID")
            # [B, 2H+1, 2W+kw-1, F] → [B, 2H, 2W, F]
            y = y[:, :2 * height, self.crop_left:self.crop_left + 2 * width]
            return tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))

        return self._output(compute)


class Dense(_Linear):
    """A 1x1 convolution (network in network): ``[..., C_in]`` → ``[..., F]``."""

    def __init__(self, features_out: int, init_scale: float = 1.0, weight_norm: bool = False,
                 name: Optional[str] = None):
        super().__init__(features_out, init_scale, weight_norm, name=name)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        c_in = int(x.shape[-1])
        self._make_variables((c_in, self.features_out), c_in)

        def compute():
            y = tf.tensordot(x, self.weights(x.dtype), axes=[[-1], [0]])
            y.set_shape(x.shape[:-1].concatenate([self.features_out]))
            return y + tf.cast(self.bias, x.dtype)

        return self._output(compute)


class GatedResnet(tf.Module):
    """x + a·σ(b), [a | b] = conv2(dropout(concat_elu(conv1(concat_elu(x)) +
    aux_proj(concat_elu(aux))))) + class vector; conv1 and conv2 are shifted like the
    stream (2x3 down-shifted for u, 2x2 down-right-shifted for ul). ``x`` ``[B, H, W, F]``
    → the same."""

    def __init__(self, filters: int, right_shifted: bool, has_aux: bool, dropout: float,
                 num_classes: int, dropout_rng: Optional[tf.random.Generator] = None,
                 weight_norm: bool = False, name: Optional[str] = None):
        super().__init__(name=name)
        self._dropout_rng = dropout_rng  # (the model's; seeds each dropout mask)
        kernel = (2, 2) if right_shifted else (2, 3)
        self.filters, self.dropout = filters, float(dropout)
        with self.name_scope:
            self.conv1 = ShiftedConv2D(filters, kernel, right_shifted, weight_norm=weight_norm,
                                       name="conv1")
            self.aux_proj = (Dense(filters, weight_norm=weight_norm, name="aux") if has_aux
                             else None)
            self.conv2 = ShiftedConv2D(2 * filters, kernel, right_shifted, init_scale=0.1,
                                       weight_norm=weight_norm, name="conv2")
            self.class_vector = (tf.Variable(tf.zeros([num_classes, 2 * filters]),
                                             name="class_vector") if num_classes else None)

    def gate(self, x, c2, labels):
        """The block's output from its input ``x`` and conv2's output ``c2`` (any shape
        ``[..., F]``, ``[..., 2F]``)."""
        if self.class_vector is not None:
            vector = tf.cast(tf.gather(self.class_vector, labels), c2.dtype)  # [B, 2F]
            c2 += tf.reshape(vector, [-1] + [1] * (c2.shape.rank - 2) + [2 * self.filters])
        a, b = tf.split(c2, 2, axis=-1)
        return x + a * tf.sigmoid(b)

    def hidden(self, c1, aux, training: bool):
        """conv1's output (+ the aux projection) → conv2's input."""
        if self.aux_proj is not None:
            c1 += self.aux_proj(concat_elu(aux))
        c1 = concat_elu(c1)
        if training and self.dropout > 0:
            seed = self._dropout_rng.make_seeds(1)[:, 0]
            c1 = tf.nn.experimental.stateless_dropout(c1, rate=self.dropout, seed=seed)
        return c1

    def __call__(self, x, aux=None, labels=None, training: bool = False):
        c1 = self.hidden(self.conv1(concat_elu(x)), aux, training)
        return self.gate(x, self.conv2(c1), labels)


class PixelCNNPlusPlus(tf.Module):
    """The PixelCNN++ network: images ``[B, H, W, C]`` in [0, 1] (H, W multiples of 4)
    → the float32 parameters of ``output``: logistic-mixture parameters ``[B, H, W, P]``
    (P = 10·num_mixtures for RGB, 3·num_mixtures for grey) or, for grey images only,
    categorical logits ``[B, H, W, 1, 256]``.

    ``filters`` F (the paper: 160), ``blocks_per_stage`` (the paper: 5), ``dropout`` (the
    paper: 0.5 on CIFAR-10; only with ``training=True``). Dropout masks are stateless
    draws seeded from a generator (``seed``) that is part of the model, so it is
    checkpointed and a resumed run draws the masks the uninterrupted one would have.
    ``weight_norm``: every convolution and 1x1 layer weight-normalised (the paper's
    parametrisation; ``_Linear``), to be initialised from data with
    ``initialize_from_data`` before the first training step.
    """

    def __init__(self, image_shape: Sequence[int], filters: int = 160,
                 blocks_per_stage: int = 5, num_mixtures: int = 10, dropout: float = 0.0,
                 output: str = "logistic_mixture", num_classes: int = 0,
                 weight_norm: bool = False, compute_dtype: tf.DType = tf.float32,
                 seed: int = 0, name: Optional[str] = None):
        super().__init__(name=name)
        self.image_shape = check_image_shape(image_shape)
        height, width, n_colors = self.image_shape
        if height % 4 or width % 4:
            raise ValueError(f"pixelcnn_pp halves the image twice: height and width must be "
                             f"multiples of 4, got {height}x{width}")
        self.n_colors = n_colors
        self.compute_dtype = tf.as_dtype(compute_dtype)
        if output == "categorical" and n_colors != 1:
            raise ValueError("pixelcnn_pp predicts whole pixels: a categorical output needs "
                             f"one colour (grey images), got {n_colors}; use logistic_mixture")
        self.distribution = make_distribution(output, n_colors, num_mixtures)
        self.groups = 1
        self.layer_type = "pixelcnn_pp"
        self.num_classes = int(num_classes)
        self.filters, self.blocks_per_stage = int(filters), int(blocks_per_stage)
        f, n = self.filters, self.blocks_per_stage
        self.weight_norm = bool(weight_norm)
        wn = dict(weight_norm=self.weight_norm)

        def block(right, aux, name):
            return GatedResnet(f, right, aux, dropout, self.num_classes, self.dropout_rng,
                               name=name, **wn)

        with self.name_scope:
            self.dropout_rng = tf.random.Generator.from_seed(seed) if dropout > 0 else None
            self.u_input = ShiftedConv2D(f, (2, 3), False, name="u_input", **wn)
            self.ul_input_above = ShiftedConv2D(f, (1, 3), False, name="ul_input_above",
                                                **wn)
            self.ul_input_left = ShiftedConv2D(f, (2, 1), True, name="ul_input_left", **wn)
            # down[s]: blocks of stage s (resolution H / 2^s); up[s] likewise.
            self.down_u = [[block(False, False, f"down{s}_u{b}") for b in range(n)]
                           for s in range(3)]
            self.down_ul = [[block(True, True, f"down{s}_ul{b}") for b in range(n)]
                            for s in range(3)]
            self.downsample_u = [ShiftedConv2D(f, (2, 3), False, stride=2,
                                               name=f"downsample{s}_u", **wn)
                                 for s in range(2)]
            self.downsample_ul = [ShiftedConv2D(f, (2, 2), True, stride=2,
                                                name=f"downsample{s}_ul", **wn)
                                  for s in range(2)]
            up_blocks = [n + 1, n + 1, n]  # stages 0 (H), 1 (H/2), 2 (H/4)
            self.up_u = [[block(False, True, f"up{s}_u{b}") for b in range(m)]
                         for s, m in enumerate(up_blocks)]
            self.up_ul = [[block(True, True, f"up{s}_ul{b}") for b in range(m)]
                          for s, m in enumerate(up_blocks)]
            # upsample[s]: stage s + 1 → stage s.
            self.upsample_u = [ShiftedDeconv2D(f, False, name=f"upsample{s}_u", **wn)
                               for s in range(2)]
            self.upsample_ul = [ShiftedDeconv2D(f, True, name=f"upsample{s}_ul", **wn)
                                for s in range(2)]
            self.output_layer = Dense(self.distribution.num_params, name="output", **wn)

    def initialize_from_data(self, images: tf.Tensor, labels: Optional[tf.Tensor] = None
                             ) -> None:
        """Weight normalisation's data-dependent initialisation (Salimans & Kingma 2016):
        one eager pass over ``images`` (a training batch, ``[B, H, W, C]`` in [0, 1]) in
        which each layer, in the order the pass reaches it, sets its scale g and bias so
        that its outputs on this batch have mean 0 and standard deviation ``init_scale``
        per channel (the layers after it see the initialised outputs). Only for a
        freshly built ``weight_norm`` model: it overwrites g and every bias."""
        if not self.weight_norm:
            raise ValueError("initialize_from_data is for weight-normalised models "
                             "(weight_norm=True)")
        layers = [m for m in self.submodules if isinstance(m, _Linear)]
        for layer in layers:
            layer.init_pending = True
        try:
            self(images, labels, training=False)
        finally:
            missed = [layer.name for layer in layers if layer.init_pending]
            for layer in layers:
                layer.init_pending = False
        if missed:
            raise RuntimeError(f"initialize_from_data: the pass did not reach {missed}")

    @staticmethod
    def preprocess(images: tf.Tensor) -> tf.Tensor:
        """[0, 1] → [-1, 1] with a channel of ones (so the first layers can tell the
        zero padding from the image): ``[B, H, W, C]`` → ``[B, H, W, C + 1]``."""
        x = tf.cast(images, tf.float32) * 2.0 - 1.0
        return tf.concat([x, tf.ones_like(x[..., :1])], axis=-1)

    def input_streams(self, x: tf.Tensor):
        """Preprocessed images → (u, ul) ``[B, H, W, F]`` each."""
        u = down_shift(self.u_input(x))
        ul = down_shift(self.ul_input_above(x)) + right_shift(self.ul_input_left(x))
        return u, ul

    @tf.Module.with_name_scope
    def __call__(self, images: tf.Tensor, labels: Optional[tf.Tensor] = None,
                 training: bool = False) -> tf.Tensor:
        images = tf.convert_to_tensor(images)
        check_inputs(self, images, labels)
        labels = None if labels is None else tf.cast(labels, tf.int32)
        x = tf.cast(self.preprocess(images), self.compute_dtype)
        u, ul = self.input_streams(x)
        skips_u: List[tf.Tensor] = [u]
        skips_ul: List[tf.Tensor] = [ul]
        for s in range(3):
            if s > 0:
                u = self.downsample_u[s - 1](u)
                ul = self.downsample_ul[s - 1](ul)
                skips_u.append(u)
                skips_ul.append(ul)
            for block_u, block_ul in zip(self.down_u[s], self.down_ul[s]):
                u = block_u(u, None, labels, training)
                ul = block_ul(ul, u, labels, training)
                skips_u.append(u)
                skips_ul.append(ul)
        u, ul = skips_u.pop(), skips_ul.pop()
        for s in (2, 1, 0):
            if s < 2:
                u = self.upsample_u[s](u)
                ul = self.upsample_ul[s](ul)
            for block_u, block_ul in zip(self.up_u[s], self.up_ul[s]):
                u = block_u(u, skips_u.pop(), labels, training)
                ul = block_ul(ul, tf.concat([u, skips_ul.pop()], axis=-1), labels, training)
        params = self.output_layer(tf.nn.elu(ul))  # [B, H, W, P]
        return self.distribution.to_output(tf.cast(params, tf.float32))
