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
(likelihood.LogisticMixture), or for grey images optionally 2^bits logits
(likelihood.Categorical; a pixel is one sub-pixel, so no colour masks are needed).

Weight normalisation with data-dependent initialisation, as the paper, is
``model.weight_norm: true`` (the trainer initialises from the first training batch);
without it every kernel is a plain variable (truncated normal, stddev
sqrt(scale / fan_in), the second convolution of every block scaled down 10x). Class
conditioning is a learned vector per block and class (the paper's ``h`` projection of a
one-hot label).
"""
from __future__ import annotations

from __future__ import annotations

from typing import List, Optional, Sequence

import tensorflow as tf

from pixelcnn_tf.likelihood import make_distribution
from pixelcnn_tf.models.base import Position, check_image_shape, check_inputs
from pixelcnn_tf.nn.layers import run_block, shift_down
from pixelcnn_tf.nn.shifted import (Dense, ShiftedConv2D, ShiftedDeconv2D, TwoRowStep, _Linear,
                                    call, concat_elu, right_shift)

type_name = "pixelcnn_pp"


def build(model_config, image_shape: Sequence[int], compute_dtype: tf.DType = tf.float32,
          seed: int = 0, n_levels: int = 256) -> "PixelCNNPlusPlus":
    """The PixelCNN++ of ``model_config``: ``hidden_dim`` h gives F = 2h filters,
    ``n_layers`` the blocks per stage."""
    m = model_config
    return PixelCNNPlusPlus(image_shape, filters=2 * m.hidden_dim, blocks_per_stage=m.n_layers,
                            output=m.output, num_mixtures=m.num_mixtures, dropout=m.dropout,
                            num_classes=m.num_classes, weight_norm=m.weight_norm,
                            compute_dtype=compute_dtype, seed=seed, n_levels=n_levels,
                            name="pixelcnn_pp")


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

    def dropout_seed(self, training: bool) -> Optional[tf.Tensor]:
        """The seed ``[2]`` of one call's dropout mask, drawn from the model's generator
        (None: no dropout). Drawn outside the block so that a recomputed block
        (``train.recompute``) draws the same mask again."""
        if training and self.dropout > 0:
            return self._dropout_rng.make_seeds(1)[:, 0]
        return None

    def hidden(self, c1, aux, seed: Optional[tf.Tensor] = None, apply=call):
        """conv1's output (+ the aux projection) → conv2's input, with dropout when a
        ``seed`` is given. ``apply(layer, x)`` applies a linear layer (``call``, or its
        data-dependent initialisation)."""
        if self.aux_proj is not None:
            # One tensor, or a list of them (the up pass's [u, skip]) joined here, inside
            # the block, so that a recomputed block does not keep the joined copy.
            aux = tf.concat(tf.nest.flatten(aux), axis=-1)
            c1 += apply(self.aux_proj, concat_elu(aux))
        c1 = concat_elu(c1)
        if seed is not None:
            c1 = tf.nn.experimental.stateless_dropout(c1, rate=self.dropout, seed=seed)
        return c1

    def __call__(self, x, aux=None, labels=None, seed: Optional[tf.Tensor] = None,
                 apply=call):
        c1 = self.hidden(apply(self.conv1, concat_elu(x)), aux, seed, apply)
        return self.gate(x, apply(self.conv2, c1), labels)


class PixelCNNPlusPlus(tf.Module):
    """The PixelCNN++ network: images ``[B, H, W, C]`` in [0, 1] (H, W multiples of 4)
    → the float32 parameters of ``output``: logistic-mixture parameters ``[B, H, W, P]``
    (P = 10·num_mixtures for RGB, 3·num_mixtures for grey) or, for grey images only,
    categorical logits ``[B, H, W, 1, L]``.

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
                 seed: int = 0, n_levels: int = 256, name: Optional[str] = None):
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
        self.distribution = make_distribution(output, n_colors, num_mixtures, n_levels)
        self.groups = 1
        self.layer_type = type_name
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
        done = set()

        def initialize_once(layer, x):  # the first call of each layer in the pass
            if id(layer) in done:
                return layer(x)
            done.add(id(layer))
            return layer.initialize_from(x)

        images = tf.convert_to_tensor(images)
        check_inputs(self, images, labels)
        self.forward(images, labels, False, initialize_once)
        missed = [m.name for m in self.submodules if isinstance(m, _Linear) and id(m) not in done]
        if missed:
            raise RuntimeError(f"initialize_from_data: the pass did not reach {missed}")

    @staticmethod
    def preprocess(images: tf.Tensor) -> tf.Tensor:
        """[0, 1] → [-1, 1] with a channel of ones (so the first layers can tell the
        zero padding from the image): ``[B, H, W, C]`` → ``[B, H, W, C + 1]``."""
        x = tf.cast(images, tf.float32) * 2.0 - 1.0
        return tf.concat([x, tf.ones_like(x[..., :1])], axis=-1)

    def input_streams(self, x: tf.Tensor, apply=call):
        """Preprocessed images → (u, ul) ``[B, H, W, F]`` each."""
        u = shift_down(apply(self.u_input, x))
        ul = (shift_down(apply(self.ul_input_above, x))
              + right_shift(apply(self.ul_input_left, x)))
        return u, ul

    @tf.Module.with_name_scope
    def __call__(self, images: tf.Tensor, labels: Optional[tf.Tensor] = None,
                 training: bool = False, recompute: bool = False) -> tf.Tensor:
        """``recompute``: each gated ResNet block's activations are recomputed in the
        backward pass instead of kept (``nn.layers.run_block``)."""
        images = tf.convert_to_tensor(images)
        check_inputs(self, images, labels)
        return self.forward(images, labels, training, call, recompute)

    def forward(self, images: tf.Tensor, labels: Optional[tf.Tensor], training: bool,
                apply, recompute: bool = False) -> tf.Tensor:
        """The full pass; ``apply(layer, x)`` applies each linear layer (``call``)."""
        labels = None if labels is None else tf.cast(labels, tf.int32)

        def run(block, x, aux):
            return run_block(lambda x, aux, labels, seed: block(x, aux, labels, seed, apply),
                             x, aux, labels, block.dropout_seed(training),
                             recompute=recompute)

        x = tf.cast(self.preprocess(images), self.compute_dtype)
        u, ul = self.input_streams(x, apply)
        skips_u: List[tf.Tensor] = [u]
        skips_ul: List[tf.Tensor] = [ul]
        for s in range(3):
            if s > 0:
                u = apply(self.downsample_u[s - 1], u)
                ul = apply(self.downsample_ul[s - 1], ul)
                skips_u.append(u)
                skips_ul.append(ul)
            for block_u, block_ul in zip(self.down_u[s], self.down_ul[s]):
                u = run(block_u, u, None)
                ul = run(block_ul, ul, u)
                skips_u.append(u)
                skips_ul.append(ul)
        u, ul = skips_u.pop(), skips_ul.pop()
        for s in (2, 1, 0):
            if s < 2:
                u = apply(self.upsample_u[s], u)
                ul = apply(self.upsample_ul[s], ul)
            for block_u, block_ul in zip(self.up_u[s], self.up_ul[s]):
                u = run(block_u, u, skips_u.pop())
                ul = run(block_ul, ul, [u, skips_ul.pop()])
        params = apply(self.output_layer, tf.nn.elu(ul))  # [B, H, W, P]
        return self.distribution.to_output(tf.cast(params, tf.float32))

    def has_steps(self) -> bool:
        return True

    def stepper(self, dtype: Optional[tf.DType] = None) -> "PixelCNNPPStepper":
        """This model evaluated pixel by pixel (see models/base.py), in ``dtype``."""
        return PixelCNNPPStepper(self, dtype)


# -- step by step --------------------------------------------------------------------------
class _BlockStep:
    """A ``pixelcnn_pp.GatedResnet`` a row (u stream) or a position (ul stream) at a time,
    through the block's own ``hidden`` and ``gate``. Cache: (conv1's, conv2's)."""

    def __init__(self, block, width: int, dtype):
        self.block = block
        self.conv1 = TwoRowStep(block.conv1, width, dtype)
        self.conv2 = TwoRowStep(block.conv2, width, dtype)

    def initial(self, batch):
        return self.conv1.initial(batch), self.conv2.initial(batch)

    def row(self, cache, x_row, aux_row, labels, r):
        c1_cache, c2_cache = cache
        c1_cache = self.conv1.write_row(c1_cache, concat_elu(x_row), r)
        hidden = self.block.hidden(self.conv1.row(c1_cache, r), aux_row)
        c2_cache = self.conv2.write_row(c2_cache, hidden, r)
        return (c1_cache, c2_cache), self.block.gate(x_row, self.conv2.row(c2_cache, r), labels)

    def at(self, cache, x, aux, labels, i, j):
        c1_cache, c2_cache = cache
        c1_cache = self.conv1.write(c1_cache, concat_elu(x), i, j)
        hidden = self.block.hidden(self.conv1.at(c1_cache, i, j), aux)
        c2_cache = self.conv2.write(c2_cache, hidden, i, j)
        return (c1_cache, c2_cache), self.block.gate(x, self.conv2.at(c2_cache, i, j), labels)


class PixelCNNPPStepper:
    """A ``pixelcnn_pp.PixelCNNPlusPlus`` evaluated pixel by pixel, caching per
    resolution (Ramachandran et al. 2017 did this for PixelCNN++).

    Stage s (resolution H/2^s) advances only when its inputs are complete: its u-stream
    row i (which sees image rows < 2^s·i) at the first step of full-resolution row 2^s·i;
    its ul-stream position (i, j) (which sees the pixels before (2^s·i, 2^s·j)) at the step
    of pixel (2^s·i, 2^s·j). Down blocks feed the up blocks of the same stage within that
    step; up-sampled values are read from per-stage maps of the finished up-stage
    outputs (full-resolution (r, c) reads (r//2, c//2)). Every step ends with the
    mixture parameters of pixel (i, j), ``[N, P]``. The image is read from ``images``
    itself (the input layers run on the two rows above), so ``record`` has nothing to do.
    """

    row_wise = False  # the u streams advance inside ``step`` (at the first pixel of a row)

    def __init__(self, model, dtype: Optional[tf.DType] = None):
        self.model = model
        self.dtype = tf.as_dtype(dtype or model.compute_dtype)
        self.groups = 1
        height, width, _ = model.image_shape
        self.widths = [width // 2 ** s for s in range(3)]
        self.heights = [height // 2 ** s for s in range(3)]
        d = self.dtype

        def blocks_at(stage_blocks, s):
            return [_BlockStep(b, self.widths[s], d) for b in stage_blocks]

        self.down_u = [blocks_at(model.down_u[s], s) for s in range(3)]
        self.down_ul = [blocks_at(model.down_ul[s], s) for s in range(3)]
        self.up_u = [blocks_at(model.up_u[s], s) for s in range(3)]
        self.up_ul = [blocks_at(model.up_ul[s], s) for s in range(3)]
        self.downsample_u = [TwoRowStep(c, self.widths[s], d)
                             for s, c in enumerate(model.downsample_u)]
        self.downsample_ul = [TwoRowStep(c, self.widths[s], d)
                              for s, c in enumerate(model.downsample_ul)]

    def initial(self, batch) -> dict:
        f, d = self.model.filters, self.dtype

        def caches(steps):
            return [s.initial(batch) for s in steps]

        def rows(s, count):  # per-block output rows of stage s, for the ul blocks' aux
            return [tf.zeros(tf.stack([batch, self.widths[s], f]), d) for _ in range(count)]

        def stage_map(s):
            return tf.zeros(tf.stack([batch, self.heights[s], self.widths[s], f]), d)

        return {
            "down_u": [caches(self.down_u[s]) for s in range(3)],
            "down_ul": [caches(self.down_ul[s]) for s in range(3)],
            "up_u": [caches(self.up_u[s]) for s in range(3)],
            "up_ul": [caches(self.up_ul[s]) for s in range(3)],
            "downsample_u": caches(self.downsample_u),
            "downsample_ul": caches(self.downsample_ul),
            "down_u_rows": [rows(s, len(self.down_u[s])) for s in range(3)],
            "up_u_rows": [rows(s, len(self.up_u[s])) for s in range(3)],
            # Finished up-stage outputs of stages 1 and 2 (index s - 1), read up-sampled.
            "u_up_map": [stage_map(s) for s in (1, 2)],
            "ul_up_map": [stage_map(s) for s in (1, 2)],
        }

    def _two_rows(self, images, top):
        """Image rows ``top`` and ``top + 1`` of ``images`` ``[N, H, W, C]`` (in [0, 1]),
        preprocessed: ``[N, 2, W, C + 1]``, with rows above the image (``top`` < 0) zero,
        as the full pass's padding."""
        rows = top + tf.range(2)
        window = tf.gather(images, tf.maximum(rows, 0), axis=1)  # [N, 2, W, C]
        x = tf.cast(self.model.preprocess(window), self.dtype)
        return tf.where((rows >= 0)[None, :, None, None], x, tf.zeros_like(x))

    # The u streams, a row at a time.
    def _u_rows(self, cache: dict, images, r, labels) -> dict:
        """At the first pixel of row r: the u streams of every stage due at row r."""
        # u = down_shift(u_input(x)): row r is u_input's row r - 1, which reads image rows
        # r-2..r-1 (row 1 of that window); row 0 is the zero row shifted in.
        window = self._two_rows(images, r - 2)
        u = self.model.u_input(window)[:, 1:2] * tf.cast(r > 0, self.dtype)  # [N, 1, W, F]
        return self._u_stage(dict(cache), 0, u, r, labels)

    def _u_stage(self, cache, s, u, row, labels):
        """Row ``row`` of stage s (down blocks from ``u``, the deeper stages when due, the
        up blocks)."""
        skips = [u]
        down_caches, down_rows = list(cache["down_u"][s]), list(cache["down_u_rows"][s])
        for b, step in enumerate(self.down_u[s]):
            down_caches[b], u = step.row(down_caches[b], u, None, labels, row)
            down_rows[b] = u[:, 0]
            skips.append(u)
        cache["down_u"] = _replace(cache["down_u"], s, down_caches)
        cache["down_u_rows"] = _replace(cache["down_u_rows"], s, down_rows)
        if s < 2:
            conv = self.downsample_u[s]
            cache["downsample_u"] = _replace(cache["downsample_u"], s, conv.write_row(
                cache["downsample_u"][s], u, row))

            def deeper(cache):
                cache = dict(cache)
                below = conv.row(cache["downsample_u"][s], row // 2)
                return self._u_stage(cache, s + 1, below, row // 2, labels)

            cache = tf.cond(tf.equal(row % 2, 0), lambda: deeper(cache), lambda: cache)
            # Up-sampled from stage s + 1: row `row` reads its row row // 2.
            above = cache["u_up_map"][s][:, row // 2][:, None]  # [N, 1, W_{s+1}, F]
            u = tf.gather(self.model.upsample_u[s](above), row % 2, axis=1)[:, None]
        else:
            u = skips.pop()
        up_caches, up_rows = list(cache["up_u"][s]), list(cache["up_u_rows"][s])
        for b, step in enumerate(self.up_u[s]):
            up_caches[b], u = step.row(up_caches[b], u, skips.pop(), labels, row)
            up_rows[b] = u[:, 0]
        cache["up_u"] = _replace(cache["up_u"], s, up_caches)
        cache["up_u_rows"] = _replace(cache["up_u_rows"], s, up_rows)
        if s > 0:
            cache["u_up_map"] = _replace(cache["u_up_map"], s - 1, _set_row(
                cache["u_up_map"][s - 1], u[:, 0], row))
        return cache

    # The ul streams, a position at a time.
    def _ul_stage(self, cache, s, ul, i, j, labels):
        """Position (i, j) of stage s; returns (cache, the up blocks' output ``[N, F]``)."""
        skips = [ul]
        down_caches = list(cache["down_ul"][s])
        for b, step in enumerate(self.down_ul[s]):
            aux = tf.gather(cache["down_u_rows"][s][b], j, axis=1)  # [N, F]
            down_caches[b], ul = step.at(down_caches[b], ul, aux, labels, i, j)
            skips.append(ul)
        cache = dict(cache, down_ul=_replace(cache["down_ul"], s, down_caches))
        if s < 2:
            conv = self.downsample_ul[s]
            cache["downsample_ul"] = _replace(cache["downsample_ul"], s, conv.write(
                cache["downsample_ul"][s], ul, i, j))

            def deeper(cache):
                below = conv.at(cache["downsample_ul"][s], i // 2, j // 2)
                cache, out = self._ul_stage(dict(cache), s + 1, below, i // 2, j // 2, labels)
                return dict(cache, ul_up_map=_replace(cache["ul_up_map"], s, _set_pixel(
                    cache["ul_up_map"][s], out, i // 2, j // 2)))

            due = tf.equal(i % 2, 0) & tf.equal(j % 2, 0)
            cache = tf.cond(due, lambda: deeper(cache), lambda: cache)
            # Up-sampled from stage s + 1: (i, j) reads (i // 2, j // 2), kernel tap
            # (i % 2, j % 2).
            above = cache["ul_up_map"][s][:, i // 2, j // 2][:, None, None]  # [N,1,1,F]
            taps = self.model.upsample_ul[s](above)  # [N, 2, 2, F]
            ul = tf.gather(tf.gather(taps, i % 2, axis=1), j % 2, axis=1)  # [N, F]
        else:
            ul = skips.pop()
        up_caches = list(cache["up_ul"][s])
        for b, step in enumerate(self.up_ul[s]):
            aux = tf.concat([tf.gather(cache["up_u_rows"][s][b], j, axis=1), skips.pop()], -1)
            up_caches[b], ul = step.at(up_caches[b], ul, aux, labels, i, j)
        return dict(cache, up_ul=_replace(cache["up_ul"], s, up_caches)), ul

    def conditions(self, labels: Optional[tf.Tensor] = None, context=None):
        """The class ids (int32 ``[N]``) or None; PixelCNN++ takes no context images."""
        if context is not None:
            raise ValueError("pixelcnn_pp takes no context images")
        return None if labels is None else tf.cast(labels, tf.int32)

    def step(self, cache: dict, images: tf.Tensor, pos: Position,
             labels: Optional[tf.Tensor] = None):
        """→ (cache, the distribution parameters of pixel (i, j) ``[N, P]`` float32: the
        mixture's, or the L logits of a grey pixel).
        ``labels``: from ``self.conditions``."""
        model = self.model
        i, j = pos.i, pos.j
        cache = tf.cond(tf.equal(j, 0), lambda: self._u_rows(cache, images, i, labels),
                        lambda: cache)
        # ul = down_shift(above(x)) + right_shift(left(x)) at (i, j): above's output at
        # (i-1, j) (image row i-1) and left's at (i, j-1) (image rows i-1..i), computed on
        # image rows i-1..i; the shifted-in zero row and column count as zeros.
        window = self._two_rows(images, i - 1)
        above = tf.gather(model.ul_input_above(window)[:, 0], j, axis=1)  # [N, F]
        left = tf.gather(model.ul_input_left(window)[:, 1], tf.maximum(j - 1, 0), axis=1)
        ul = above * tf.cast(i > 0, self.dtype) + left * tf.cast(j > 0, self.dtype)
        cache, ul = self._ul_stage(cache, 0, ul, i, j, labels)
        params = model.output_layer(tf.nn.elu(ul))
        return cache, tf.cast(params, tf.float32)

    def record(self, cache: dict, images: tf.Tensor, pos: Position) -> dict:
        return cache  # the image is read from ``images`` at every step

    def finish_row(self, cache: dict, images: tf.Tensor, row, conditions) -> dict:
        return cache  # the u streams advance in ``step``


def _replace(items: list, index: int, value) -> list:
    """A copy of ``items`` with ``items[index] = value``."""
    items = list(items)
    items[index] = value
    return items


def _set_row(stage_map: tf.Tensor, row_values: tf.Tensor, row) -> tf.Tensor:
    """``stage_map`` ``[N, H, W, F]`` with row ``row`` set to ``row_values`` ``[N, W, F]``."""
    here = tf.equal(tf.range(stage_map.shape[1]), row)[None, :, None, None]
    return tf.where(here, row_values[:, None], stage_map)


def _set_pixel(stage_map: tf.Tensor, values: tf.Tensor, i, j) -> tf.Tensor:
    """``stage_map`` ``[N, H, W, F]`` with (i, j) set to ``values`` ``[N, F]``."""
    n = tf.shape(values)[0]
    where = tf.stack([tf.range(n), tf.fill([n], i), tf.fill([n], j)], axis=1)
    return tf.tensor_scatter_nd_update(stage_map, where, values)

