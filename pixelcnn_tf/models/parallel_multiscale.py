"""The Parallel Multiscale PixelCNN (Reed et al. 2017, "Parallel Multiscale Autoregressive
Density Estimation"): ``model.type: parallel_multiscale``.

Every other type draws one pixel (or colour) after another: H·W·C sequential steps. This
one draws whole groups of pixels in one network pass, O(log N) passes for N pixels.

The factorization. An image x of height ``base_size``·2^K is seen at K + 1 resolutions,
each the one above sub-sampled (not averaged): x_K = x and x_l = x[::2^(K-l), ::2^(K-l)].
The base image x_0 is modelled by any raster-order type of the project (``model.base``,
sampled with that type's own cached sampler). Going from x_l to x_(l+1) (twice the
side), the pixels of x_(l+1) fall into four groups by their position in each 2x2 block:

    G0 G1        G0 (0, 0) is x_l itself, already known;
    G2 G3        G1 (0, 1), G2 (1, 0) and G3 (1, 1) are drawn in that order.

    p(x) = p_base(x_0) · Π_l Π_(g=1..3) Π_(pixels of G_g) p(pixel | x_l, G_1 .. G_(g-1))

The pixels of one group are independent given the groups before them, so a group is
drawn in one pass; inside a pixel the colours are still R, then G given R, then B
(categorical output: a colour-masked head, one cheap pass per colour), or drawn jointly
(logistic mixture: the whole pixel from one set of parameters). The likelihood is exact:
every sub-pixel of x is scored once, by the base model or by the network of its group
(``ParallelMultiscaleDistribution``), and bits/dim divide by N·H·W·C as for every type.

The network of group g at doubling l (``GroupNetwork``, one per (l, g), weights not
shared): the known groups G0..G(g-1) of x_(l+1), stacked as channels at the resolution of
x_l (``pixel_blocks``: a space-to-depth of x_(l+1)), go through an unmasked KxK input
convolution, a per-class vector (class-conditional models), ``n_layers`` residual blocks
(ReLU, KxK conv, ReLU, KxK conv, added) and a 1x1 head to the parameters of G_g's pixels.
Nothing masks the body: it sees only what is known by construction (the slice of known
groups), and the head's colour masks (mask A on the group's own pixel, mask B on the
features) make colour c see only colours < c of its pixel.

What follows the paper and what differs: the base image modelled autoregressively, the
2x2 groups of sub-sampled pixels with the low-resolution image as the first, a separate
ResNet-style convolutional network per group and scale conditioned on everything drawn
so far, class conditioning. We leave out any dependence between the pixels of one group
(so a group is exactly one pass), and we use the project's output distributions (a
categorical per sub-pixel with R < G < B, or the discretized logistic mixture) at any bit
depth. See docs/model_types.md.

Drawing and coding (``walk_groups``, used by sampling.py and codec.py): the base image
with the base type's own loop, then per doubling and group one pass of
``GroupNetwork.features`` and one ``head`` per colour group: O(K·3·C) passes in all
(K = log2 of the image side over the base's). With ``full_pass`` (the naive sampler)
the group's network runs whole (``GroupNetwork.__call__``) for each of these passes
instead; the images are the same.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from pixelcnn_tf.likelihood import Distribution, make_distribution
from pixelcnn_tf.models.base import check_image_shape, check_inputs, unit_images
from pixelcnn_tf.models.multiscale import place_on_grid
from pixelcnn_tf.nn.layers import Conv2D, MaskedConv2D, run_block

type_name = "parallel_multiscale"
GROUPS = 3  # drawn groups per doubling: (0, 1), (1, 0), (1, 1) of each 2x2 block


def build(model_config, image_shape: Sequence[int], compute_dtype: tf.DType = tf.float32,
          seed: int = 0, n_levels: int = 256, base=None) -> "ParallelMultiscalePixelCNN":
    """The model of ``model_config``: ``hidden_dim`` h channels and ``n_layers`` residual
    blocks of KxK (``kernel_size``) convolutions per group network, over ``base``, the
    base model that ``build_model`` built from ``model.base`` for images
    ``base_shape(model_config, image_shape)``."""
    m = model_config
    return ParallelMultiscalePixelCNN(image_shape, base, hidden_dim=m.hidden_dim,
                                      n_layers=m.n_layers, kernel_size=m.kernel_size,
                                      output=m.output, num_mixtures=m.num_mixtures,
                                      num_classes=m.num_classes, compute_dtype=compute_dtype,
                                      n_levels=n_levels, name=type_name)


def base_shape(model_config, image_shape: Sequence[int]) -> tuple:
    """The base image's shape ``(base_size, W / 2^K, C)`` for images of height
    ``base_size``·2^K (the config checked that they fit: ``parallel_base_shape``)."""
    height, width, channels = (int(d) for d in image_shape)
    doublings = (height // model_config.base_size).bit_length() - 1
    return (height >> doublings, width >> doublings, channels)


def pixel_blocks(images: tf.Tensor) -> tf.Tensor:
    """``[B, 2r, 2s, C]`` → ``[B, r, s, 4, C]``: the 2x2 block of every position, its
    groups in the order G0 (0, 0), G1 (0, 1), G2 (1, 0), G3 (1, 1)."""
    shape = tf.shape(images)
    channels = images.shape[-1]
    blocks = tf.nn.space_to_depth(images, 2)  # channel (2·di + dj)·C + c
    return tf.reshape(blocks, [shape[0], shape[1] // 2, shape[2] // 2, 4, channels])


def from_blocks(blocks: tf.Tensor) -> tf.Tensor:
    """The inverse of ``pixel_blocks``: ``[B, r, s, 4, C]`` → ``[B, 2r, 2s, C]``."""
    shape = tf.shape(blocks)
    flat = tf.reshape(blocks, [shape[0], shape[1], shape[2], 4 * blocks.shape[-1]])
    return tf.nn.depth_to_space(flat, 2)


class GroupNetwork(tf.Module):
    """p(G_g of x_(l+1) | x_l, G_1 .. G_(g-1)) for every position of x_l at once.

    ``features(known, labels)``: the known groups ``[B, r, s, g, C]`` in [0, 1] → features
    ``[B, r, s, h]`` (the body: one pass per group). ``head(features, pixel)``: with the
    group's own pixels ``[B, r, s, C]`` in [0, 1] (only colours before each output's colour
    are read; none for the mixture) → the distribution's parameters of the group's pixels
    (float32 ``[B, r, s, C, L]`` or ``[B, r, s, P]``).
    """

    def __init__(self, group: int, distribution: Distribution, hidden_dim: int,
                 n_layers: int, kernel_size: int, num_classes: int,
                 compute_dtype: tf.DType, name: Optional[str] = None):
        super().__init__(name=name)
        self.group, self.distribution = int(group), distribution
        self.compute_dtype = compute_dtype
        h, k = int(hidden_dim), int(kernel_size)
        same = (k // 2,) * 4
        groups = distribution.groups  # colour groups of the head: C (categorical) or 1
        head_width = groups * h
        with self.name_scope:
            self.input_conv = Conv2D(h, (k, k), same, init_scale=2.0, name="input_conv")
            self.class_vectors = (tf.Variable(tf.zeros([num_classes, h]), name="class_vectors")
                                  if num_classes else None)
            self.blocks = [(Conv2D(h, (k, k), same, init_scale=2.0, name=f"block{b}_a"),
                            Conv2D(h, (k, k), same, init_scale=0.1, name=f"block{b}_b"))
                           for b in range(int(n_layers))]
            self.to_head = Conv2D(head_width, (1, 1), init_scale=2.0, name="to_head")
            # Colour c of the group's pixel reads colours < c of it (mask A): categorical
            # RGB only (the mixture predicts the pixel jointly; one colour reads nothing).
            self.colour_input = (MaskedConv2D(head_width, 1, "A", groups, name="colour_input")
                                 if groups > 1 else None)
            self.output = MaskedConv2D(distribution.num_params, 1, "B", groups,
                                       init_scale=1.0, name="output")

    def features(self, known: tf.Tensor, labels: Optional[tf.Tensor],
                 recompute: bool = False) -> tf.Tensor:
        shape = tf.shape(known)
        known = tf.reshape(known, [shape[0], shape[1], shape[2],
                                   known.shape[-2] * known.shape[-1]])
        x = tf.cast(known * 2.0 - 1.0, self.compute_dtype)  # [0, 1] → [-1, 1]
        x = self.input_conv(x)
        if self.class_vectors is not None:
            x += tf.cast(tf.gather(self.class_vectors, labels), x.dtype)[:, None, None, :]
        for first, second in self.blocks:
            x = run_block(lambda x: x + second(tf.nn.relu(first(tf.nn.relu(x)))), x,
                          recompute=recompute)
        return x

    def head(self, features: tf.Tensor, pixel: tf.Tensor) -> tf.Tensor:
        y = self.to_head(tf.nn.relu(features))
        if self.colour_input is not None:
            y += self.colour_input(tf.cast(pixel * 2.0 - 1.0, y.dtype))
        params = self.output(tf.nn.relu(y))
        return self.distribution.to_output(tf.cast(params, tf.float32))

    def __call__(self, blocks: tf.Tensor, labels: Optional[tf.Tensor],
                 recompute: bool = False) -> tf.Tensor:
        """``blocks`` ``[B, r, s, 4, C]`` in [0, 1] (``pixel_blocks`` of x_(l+1)) → the
        parameters of group g's pixels (``recompute``: see ``nn.layers.run_block``)."""
        g = self.group
        return self.head(self.features(blocks[..., :g, :], labels, recompute),
                         blocks[..., g, :])


class ParallelMultiscaleDistribution(Distribution):
    """The likelihood of the factorization: parameters are (the base model's, the
    ``GroupNetwork`` outputs in drawing order: doubling l, then group 1, 2, 3); the NLL of
    a pixel comes from the base model for the pixels of x_0 and from its group's network
    for every other pixel."""

    def __init__(self, base: Distribution, group: Distribution, doublings: int):
        super().__init__(group.n_colors, group.n_levels)
        self.base, self.group, self.doublings = base, group, int(doublings)
        self.name, self.groups = group.name, group.groups
        self.num_params, self.noise_width = group.num_params, group.noise_width

    def nll_per_pixel(self, params, images):
        """``[B, H, W]``: pixel (i, j) holds the NLL of its sub-pixels under the
        conditional that draws them."""
        base_params, group_params = params
        images = tf.convert_to_tensor(images)
        k = self.doublings
        nll = self.base.nll_per_pixel(base_params, images[:, ::2 ** k, ::2 ** k])
        for level in range(k):
            step = 2 ** (k - 1 - level)
            blocks = pixel_blocks(images[:, ::step, ::step])  # [B, r, s, 4, C]
            maps = [nll] + [self.group.nll_per_pixel(group_params[GROUPS * level + g - 1],
                                                     blocks[..., g, :])
                            for g in range(1, GROUPS + 1)]
            nll = from_blocks(tf.stack(maps, axis=-1)[..., None])[..., 0]  # [B, 2r, 2s]
        return nll


class ParallelMultiscalePixelCNN(tf.Module):
    """The model (see the module docstring): ``model(images, labels)`` with images
    ``[B, H, W, C]`` in [0, 1] → (the base model's parameters on x_0, a tuple of the
    3·K group networks' parameters), scored by ``model.distribution``.

    ``base``: a built raster-order model of the base image ``[H / 2^K, W / 2^K, C]``
    (same output, bit depth and classes). ``networks[l][g - 1]`` is group g's network at
    doubling l.
    """

    def __init__(self, image_shape: Sequence[int], base, hidden_dim: int = 64,
                 n_layers: int = 4, kernel_size: int = 3, output: str = "categorical",
                 num_mixtures: int = 10, num_classes: int = 0,
                 compute_dtype: tf.DType = tf.float32, n_levels: int = 256,
                 name: Optional[str] = None):
        super().__init__(name=name)
        self.image_shape = check_image_shape(image_shape)
        height, width, channels = self.image_shape
        base_height = base.image_shape[0]
        self.doublings = (height // base_height).bit_length() - 1
        if (base_height << self.doublings != height or self.doublings < 1
                or tuple(base.image_shape) != (base_height, width >> self.doublings, channels)
                or width % (1 << self.doublings)):
            raise ValueError(f"a base image {tuple(base.image_shape)} does not fit images "
                             f"{self.image_shape}: H and W must be 2^K times the base's, K >= 1")
        self.layer_type = type_name
        self.num_classes = int(num_classes)
        self.compute_dtype = tf.as_dtype(compute_dtype)
        group = make_distribution(output, channels, num_mixtures, n_levels)
        with self.name_scope:
            self.base = base
            self.networks: List[List[GroupNetwork]] = [
                [GroupNetwork(g, group, hidden_dim, n_layers, kernel_size, self.num_classes,
                              self.compute_dtype, name=f"level{level}_group{g}")
                 for g in range(1, GROUPS + 1)]
                for level in range(self.doublings)]
        self.distribution = ParallelMultiscaleDistribution(base.distribution, group,
                                                           self.doublings)

    @tf.Module.with_name_scope
    def __call__(self, images: tf.Tensor, labels: Optional[tf.Tensor] = None,
                 training: bool = False, recompute: bool = False):
        images = tf.convert_to_tensor(images)
        check_inputs(self, images, labels)
        base_params = self.base(self.level_image(images, 0), labels, training=training,
                                recompute=recompute)
        group_params = []
        for level, networks in enumerate(self.networks):
            blocks = pixel_blocks(self.level_image(images, level + 1))
            group_params += [network(blocks, labels, recompute) for network in networks]
        return base_params, tuple(group_params)

    def draw_order(self) -> np.ndarray:
        """int ``[H, W, C]``: the pass that draws each sub-pixel. Sub-pixels with the same
        number are drawn together, independent given every sub-pixel with a smaller one.
        The base image's come first, in its raster order (one pass per sub-pixel for the
        categorical, per pixel for the mixture); then one pass per doubling, group and
        colour group."""
        height, width, channels = self.image_shape
        groups = self.distribution.groups
        colour_group = np.arange(channels) // (channels // groups)  # [C]
        f = 2 ** self.doublings
        order = np.zeros(self.image_shape, np.int64)
        base_pixels = np.arange((height // f) * (width // f)).reshape(height // f, width // f)
        order[::f, ::f] = base_pixels[..., None] * groups + colour_group
        passes = base_pixels.size * groups
        for level in range(self.doublings):
            step = 2 ** (self.doublings - 1 - level)
            for g in range(1, GROUPS + 1):
                di, dj = divmod(g, 2)
                order[di * step::2 * step, dj * step::2 * step] = passes + colour_group
                passes += groups
        return order

    def level_image(self, images: tf.Tensor, level: int) -> tf.Tensor:
        """x_level = images[:, ::2^(K - level), ::2^(K - level)] (x_0: the base image)."""
        step = 2 ** (self.doublings - level)
        return images[:, ::step, ::step]


def group_first_subpixels(image_shape: Sequence[int], step: int, group: int) -> tf.Tensor:
    """int32 ``[r·s]``: the raster index in x of the first sub-pixel of every pixel of
    group ``group`` (position (di, dj) = divmod(group, 2) in each 2x2 block) of
    x[::step, ::step], positions in row-major order."""
    height, width, channels = image_shape
    di, dj = divmod(group, 2)
    rows = (2 * np.arange(height // (2 * step)) + di) * step
    cols = (2 * np.arange(width // (2 * step)) + dj) * step
    return tf.constant(((rows[:, None] * width + cols[None, :]) * channels).reshape(-1),
                       tf.int32)


def walk_groups(model: ParallelMultiscalePixelCNN, images: tf.Tensor,
                labels: Optional[tf.Tensor], fill: Callable, full_pass: bool = False
                ) -> tf.Tensor:
    """Visits every pass after the base image in drawing order (call it inside a
    ``tf.function``; ``images``: int32 levels ``[N, H, W, C]`` whose base image is
    already drawn) and returns the final images.

    For doubling l = 0..K-1, group g = 1, 2, 3 and colour group c of the distribution
    (C for the categorical, 1 for the mixture): the parameters of colour group c of
    every pixel of the group, ``[N, r, s, ...]`` (the body of g's network once per group,
    its head once per colour group; with ``full_pass`` the network's plain call each
    time, the naive sampler's reference), then ``fill(params, pixels, first, c)``
    returns the group's pixels ``[N, r, s, C]`` with colour group c written (the sampler
    draws them, the codec codes them); ``first`` ``[r·s]``: their first sub-pixels'
    raster indices.
    """
    k, n_levels = model.doublings, model.distribution.n_levels
    for level, networks in enumerate(model.networks):
        step = 2 ** (k - 1 - level)  # x_(l+1) = x[::step, ::step]
        for network in networks:
            g = network.group
            first = group_first_subpixels(model.image_shape, step, g)
            blocks = pixel_blocks(images[:, ::step, ::step])  # int32 [N, r, s, 4, C]
            if not full_pass:
                features = network.features(unit_images(blocks[..., :g, :], n_levels), labels)
            for c in range(model.distribution.groups):
                if full_pass:  # the network's plain call on everything drawn so far
                    params = network(unit_images(blocks, n_levels), labels)
                else:
                    params = network.head(features, unit_images(blocks[..., g, :], n_levels))
                pixels = fill(params, blocks[..., g, :], first, c)
                blocks = tf.concat([blocks[..., :g, :], pixels[..., None, :],
                                    blocks[..., g + 1:, :]], axis=-2)
            images = place_on_grid(from_blocks(blocks), images, step)  # the group, done
    return images


def group_rows(distribution: Distribution, params: tf.Tensor, c) -> tf.Tensor:
    """The parameters ``[N, r, s, ...]`` of a group's pixels → those of colour group ``c``
    with one row per (image, position), image-major: ``[N·r·s, ·]``, what
    ``Distribution.draw`` and ``subpixel_logits`` take for one step."""
    rows = tf.reshape(params, tf.concat([[-1, 1, 1], tf.shape(params)[3:]], 0))
    return distribution.at(rows, 0, 0, c)
