"""Sampling from a trained model in graph mode.

``generate_images`` runs a ``tf.function`` whose ``tf.while_loop`` visits the model's
steps in raster order: every sub-pixel (R < G < B inside a pixel) for the categorical
output, every pixel for the logistic mixture (which predicts the whole pixel). A step
draws its sub-pixels of every image with ``model.distribution.draw`` (the distribution
owns drawing as it owns scoring: likelihood.py) and writes them with
``tf.tensor_scatter_nd_update``. Every sub-pixel, the first one included, is drawn from
the model. Draws are stateless: sub-pixel ``k`` uses noise hashed from ``(seed, k)``
(``uniform_noise``), so the same seed gives the same images, whichever method computed
the parameters and wherever it ran.

Methods:
  naive  runs the whole network on the whole image for every step.
  fast   the incremental evaluation of models/base.py (``walk``; Ramachandran et al.
         2017, "Fast Generation for Convolutional Autoregressive Models"): every layer is evaluated
         only at the current position from caches of earlier steps, and layers whose
         dependence on the rows above goes through a row state update it once per
         completed row. Exact: the same images as naive. Models without an incremental
         evaluation fall back to naive, with a logged note.
"""
from __future__ import annotations

import logging
import random
import weakref
from typing import NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from pixelcnn_tf.models.base import has_steps, step_position, unit_images, walk
from pixelcnn_tf.models.multiscale import MultiScalePixelRNN, place_on_grid
from pixelcnn_tf.models.parallel_multiscale import (ParallelMultiscalePixelCNN, group_rows,
                                                    walk_groups)
from pixelcnn_tf.nn.layers import Position
from pixelcnn_tf.config import SAMPLE_METHODS

METHODS = SAMPLE_METHODS

log = logging.getLogger(__name__)
_SAMPLERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _hash32(x: tf.Tensor) -> tf.Tensor:
    """A bijective 32-bit integer hash with full avalanche ("lowbias32", C. Wellons)."""
    def shift_xor(x, bits):
        return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(bits, tf.uint32)))
    x = shift_xor(x, 16) * tf.constant(0x7FEB352D, tf.uint32)
    x = shift_xor(x, 15) * tf.constant(0x846CA68B, tf.uint32)
    return shift_xor(x, 16)


SEED_RANGE = (0, 2**63)  # seeds are int64 at every interface; negative ones are refused


def check_seed(seed) -> int:
    """``seed`` as an int in ``0 .. 2**63 - 1``, or a ValueError that says the range."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not SEED_RANGE[0] <= int(seed) < SEED_RANGE[1]:
        raise ValueError(f"seed must be in 0..2**63-1 (an int64), got {seed}")
    return int(seed)


def unit_interval(bits: tf.Tensor) -> tf.Tensor:
    """uint32 hash outputs → float32 in the open interval (0, 1).

    The top 23 bits m give (m + 0.5) / 2^23 = (2m + 1) / 2^24: every value is exactly
    representable in float32, the smallest is 2^-24 and the largest 1 - 2^-24, so neither
    0 nor 1 can occur. (With 24 bits the largest, (2^24 - 0.5) / 2^24, rounds to 1.0 in
    float32, and the Gumbel noise -log(-log 1) = +inf would pick a value whatever its
    probability.)
    """
    mantissa = tf.cast(tf.bitwise.right_shift(bits, tf.constant(9, tf.uint32)), tf.float32)
    return (mantissa + 0.5) * (1.0 / 2**23)


def uniform_noise(seed: tf.Tensor, k: tf.Tensor, n: tf.Tensor, width: int = 256
                  ) -> tf.Tensor:
    """Counter-based uniform noise in (0, 1), ``[n, width]`` float32, for sub-pixel ``k``
    (``[..., n, width]`` for sub-pixels ``k`` of shape ``[...]``, each as its own call).

    Element ``(b, v)`` hashes (seed, k, b, v), v < width <= 256 (a narrower call gives the
    first columns of the full one). All 64 bits of the seed count: for a given
    ``k`` the two 32-bit keys are a bijection of (low word, high word), so two different
    seeds never share their keys. TensorFlow's stateless random ops give different numbers
    when compiled with XLA than in graph mode, which would make the XLA-compiled fast
    sampler and the naive sampler disagree for the same seed; these integer hashes give the
    same bits under XLA, in graph mode and on every device.
    """
    seed = tf.cast(seed, tf.int64)
    lo = tf.cast(tf.bitwise.bitwise_and(seed, tf.constant(0xFFFFFFFF, tf.int64)), tf.uint32)
    hi = tf.cast(tf.bitwise.right_shift(seed, tf.constant(32, tf.int64)), tf.uint32)
    key1 = _hash32(tf.bitwise.bitwise_xor(lo, _hash32(tf.cast(k, tf.uint32))))
    key2 = _hash32(tf.bitwise.bitwise_xor(hi, _hash32(key1)))
    index = tf.range(n)[:, None] * 256 + tf.range(width)[None, :]  # (b, v) → b·256 + v
    key1, key2 = key1[..., None, None], key2[..., None, None]  # [..., 1, 1]
    bits = _hash32(tf.bitwise.bitwise_xor(_hash32(tf.cast(index, tf.uint32)), key1))
    bits = _hash32(tf.bitwise.bitwise_xor(bits, key2))
    return unit_interval(bits)  # [..., n, width]


class Stage(NamedTuple):
    """How the image a loop draws relates to the image being sampled (multi-scale models
    draw in two stages; one-scale models in one, ``Stage()``).

    ``scale`` s: the loop draws x[::s, ::s]; sub-pixel indices (for ``start`` and the
    noise) are those of x, so the small image's pixel (a, b) uses the noise of pixel
    (s·a, s·b) of x. ``keep_grid`` f > 0: pixels (f·a, f·b) are given (the small image
    drawn before) and kept, like sub-pixels before ``start``.
    """
    scale: int = 1
    keep_grid: int = 0


def _pixel_index(pos: Position, width: int, channels: int, stage: Stage) -> tf.Tensor:
    """Raster index, in the sampled image, of the first sub-pixel of pixel (i, j) of a
    stage's image (``width`` wide)."""
    s = stage.scale
    return ((pos.i * s) * (width * s) + pos.j * s) * channels


def _on_kept_grid(pos: Position, stage: Stage):
    """Whether pixel (i, j) is on the stage's kept grid (False when there is none)."""
    if not stage.keep_grid:
        return tf.constant(False)
    return tf.equal(pos.i % stage.keep_grid, 0) & tf.equal(pos.j % stage.keep_grid, 0)


def _draw_step(distribution, params: tf.Tensor, images: tf.Tensor, pos: Position,
               start: tf.Tensor, seed, temperature, greedy: tf.Tensor,
               stage: Stage = Stage()) -> tf.Tensor:
    """Draws the sub-pixels of one step from the step's parameters ``[N, ·]`` with the
    distribution's own ``draw`` and writes them into ``images`` ``[N, H, W, C]`` (int32);
    sub-pixels before ``start`` (and the ``stage``'s kept grid) keep their values. Noise:
    row (seed, k) of ``uniform_noise`` for the step's first sub-pixel k."""
    _, width, channels = images.shape[1:]
    k0 = _pixel_index(pos, width, channels, stage)  # the pixel's first sub-pixel
    kept = (k0 + tf.range(channels) < start) | _on_kept_grid(pos, stage)  # [C]
    noise = uniform_noise(seed, k0 + pos.c, tf.shape(params)[0], distribution.noise_width)
    pixel = distribution.draw(params, images[:, pos.i, pos.j, :], pos.c, kept, noise,
                              temperature, greedy)
    return write_pixel(images, pos.i, pos.j, pixel)


def write_pixel(images: tf.Tensor, i, j, pixel: tf.Tensor) -> tf.Tensor:
    """images ``[N, H, W, C]`` with pixel (i, j) of every image set to ``pixel`` ``[N, C]``."""
    n = tf.shape(images)[0]
    indices = tf.stack([tf.range(n), tf.fill([n], i), tf.fill([n], j)], axis=1)  # [N, 3]
    return tf.tensor_scatter_nd_update(images, indices, pixel)


def _naive_loop(model_ref, conditional: bool, stage: Stage = Stage()):
    """``(images, start, seed, temperature, greedy, labels, context=None) → images``: a
    full pass per step (``context``: the small image, for a multi-scale conditional
    network)."""
    model = model_ref()
    height, width, _ = model.image_shape
    distribution = model.distribution
    groups = distribution.groups

    def sample(images, start, seed, temperature, greedy, labels, context=None):
        model = model_ref()  # traced while the caller holds the model
        extra = {} if context is None else {"context": context}

        def body(k, images):
            pos = step_position(k, width, groups)
            inputs = unit_images(images, distribution.n_levels)  # [N, H, W, C] in [0, 1]
            params = model(inputs, labels if conditional else None, **extra)
            params = distribution.at(params, pos.i, pos.j, pos.c)
            return k + 1, _draw_step(distribution, params, images, pos, start, seed,
                                     temperature, greedy, stage)

        # A small image's sub-pixel indices are not those of `start`: draw from its start.
        first = _first_step(start, images.shape[-1], groups) if stage.scale == 1 else 0
        _, images = tf.while_loop(lambda k, _: k < height * width * groups, body,
                                  [first, images])
        return images

    return sample


def _first_step(start: tf.Tensor, channels: int, groups: int) -> tf.Tensor:
    """The step holding sub-pixel ``start`` (steps before it draw nothing)."""
    return start // (channels // groups)


def _fast_loop(model_ref, conditional: bool, stage: Stage = Stage()):
    """``(images, start, seed, temperature, greedy, labels, context=None) → images``: one
    position (and colour group) of every layer per step, through ``walk``.

    Steps before ``start`` are run too (to fill the caches) but keep their values.
    """
    distribution = model_ref().distribution

    def sample(images, start, seed, temperature, greedy, labels, context=None):
        def draw(params, images, pos):
            return _draw_step(distribution, params, images, pos, start, seed, temperature,
                              greedy, stage)
        return walk(model_ref(),  # traced while the caller holds the model
                                images, labels if conditional else None, draw, context)

    return sample


def _multiscale_loop(model_ref, method: str, conditional: bool):
    """A ``MultiScalePixelRNN``: the small image x[::f, ::f] with its network,
    then the rest of x with the conditional network given the small image (kept), both
    with ``method``'s loop. Sub-pixels before ``start`` are kept in both stages (the small
    image's own: the small network sees nothing else)."""
    model = model_ref()
    f, n_levels = model.factor, model.distribution.n_levels
    loop = _fast_loop if method == "fast" else _naive_loop
    small_loop = loop(weakref.ref(model.small), conditional, Stage(scale=f))
    large_loop = loop(weakref.ref(model.large), conditional, Stage(keep_grid=f))

    def sample(images, start, seed, temperature, greedy, labels):
        small = small_loop(images[:, ::f, ::f], start, seed, temperature, greedy, labels)
        images = place_on_grid(small, images, f)
        context = unit_images(small, n_levels)
        return large_loop(images, start, seed, temperature, greedy, labels, context)

    return sample


def _parallel_loop(model_ref, method: str, conditional: bool):
    """A ``ParallelMultiscalePixelCNN``: the base image x[::2^K, ::2^K] with the base
    model's ``method`` loop, then every group of pixels at once (``walk_groups``: one
    network pass per group and colour group; "naive" runs the group's whole network for
    each).
    Every sub-pixel is drawn with its own noise (that of its raster index in x), so both
    methods give the same images. Sub-pixels before ``start`` keep their values."""
    model = model_ref()
    f, distribution = 2 ** model.doublings, model.distribution.group
    loop = _fast_loop if method == "fast" and has_steps(model.base) else _naive_loop
    # XLA fuses the base's many small per-position steps (as for every fast sampler); the
    # group passes are a few whole-image convolutions each and run in graph mode (XLA
    # compiling them too made the first call of an 8x8 test model 34 s instead of 22 s).
    base_loop = tf.function(loop(weakref.ref(model.base), conditional, Stage(scale=f)),
                            jit_compile=method == "fast", autograph=False)

    def sample(images, start, seed, temperature, greedy, labels):
        model = model_ref()  # traced while the caller holds the model
        base = base_loop(images[:, ::f, ::f], start, seed, temperature, greedy, labels)

        def draw(params, pixels, first, c):
            return _draw_group(distribution, params, pixels, first, c, start, seed,
                               temperature, greedy)

        return walk_groups(model, place_on_grid(base, images, f),
                           labels if conditional else None, draw, full_pass=method == "naive")

    return sample


# Positions of a group drawn in one piece, at most (times the noise width): a piece's
# noise for 16 images of the 256-level categorical is 16·512·256 floats (8 MiB), which
# the allocator reuses; the 64 MiB of a 128x128 grey image's last groups in one piece
# was mapped afresh for each op, and drew much slower (docs/results/parallel_multiscale.md).
GROUP_PIECE = 2**17


def _draw_group(distribution, params: tf.Tensor, pixels: tf.Tensor, first: tf.Tensor, c: int,
                start: tf.Tensor, seed, temperature, greedy) -> tf.Tensor:
    """Colour group ``c`` of every pixel of a group drawn at once: ``params`` ``[N, r, s,
    ...]`` the distribution's parameters of the pixels ``[N, r, s, C]`` (int32), ``first``
    ``[r·s]`` their first sub-pixels' raster indices (in pieces of positions, the same
    draws: each sub-pixel's noise is its own)."""
    shape, channels = tf.shape(pixels), pixels.shape[-1]
    n, positions = shape[0], first.shape[0]
    params = tf.reshape(params, tf.concat([[n, 1, positions], tf.shape(params)[3:]], 0))
    pixels = tf.reshape(pixels, [n, 1, positions, channels])
    size = max(1, GROUP_PIECE // distribution.noise_width)
    drawn = [_draw_positions(distribution, params[:, :, i:i + size], pixels[:, :, i:i + size],
                             first[i:i + size], c, start, seed, temperature, greedy)
             for i in range(0, positions, size)]
    return tf.reshape(tf.concat(drawn, axis=2), shape)


def _draw_positions(distribution, params: tf.Tensor, pixels: tf.Tensor, first: tf.Tensor,
                    c: int, start: tf.Tensor, seed, temperature, greedy) -> tf.Tensor:
    """``_draw_group`` for the positions ``first`` ``[P]``, ``params`` ``[N, 1, P, ...]``,
    ``pixels`` ``[N, 1, P, C]``: each (image, position) becomes a row of
    ``distribution.draw`` with its own noise and kept sub-pixels."""
    shape, channels = tf.shape(pixels), pixels.shape[-1]
    n = shape[0]
    kept = first[:, None] + tf.range(channels)[None, :] < start  # [P, C]
    noise = uniform_noise(seed, first + c, n, distribution.noise_width)  # [P, N, width]
    noise = tf.reshape(tf.transpose(noise, [1, 0, 2]), [-1, distribution.noise_width])
    drawn = distribution.draw(group_rows(distribution, params, c),
                              tf.reshape(pixels, [-1, channels]), c, tf.tile(kept, [n, 1]),
                              noise, temperature, greedy)
    return tf.reshape(drawn, shape)


def fast_sampling(model) -> bool:
    """Whether ``model`` has a fast sampler: a cached step-by-step evaluation, or the
    group-parallel loop of the Parallel Multiscale PixelCNN."""
    return isinstance(model, ParallelMultiscalePixelCNN) or has_steps(model)


def get_sampler(model, method: str, conditional: bool):
    """The cached ``tf.function`` ``(images int32 [N, H, W, C], start, seed int64,
    temperature, greedy bool, labels int32 [N]) → uint8 images`` for ``model`` (one per
    method and conditioning)."""
    if method == "fast" and not fast_sampling(model):
        log.warning("model type %r cannot be sampled with cached positions; using the "
                    "naive sampler", getattr(model, "layer_type", type(model).__name__))
        method = "naive"
    per_model = _SAMPLERS.setdefault(model, {})
    key = (method, conditional)
    if key not in per_model:
        height, width, channels = model.image_shape
        # The loops hold the model weakly, so the cache entry (whose key is the model)
        # goes away with the model.
        if isinstance(model, ParallelMultiscalePixelCNN):
            loop = _parallel_loop(weakref.ref(model), method, conditional)
        elif isinstance(model, MultiScalePixelRNN):
            loop = _multiscale_loop(weakref.ref(model), method, conditional)
        else:
            loop = (_fast_loop if method == "fast" else _naive_loop)(weakref.ref(model),
                                                                     conditional)
        per_model[key] = tf.function(
            lambda *args: tf.cast(loop(*args), tf.uint8),
            # XLA fuses the fast loop's many small per-position ops (about 5x faster on
            # CPU); the naive loop is dominated by full convolutions and stays in graph mode.
            jit_compile=method == "fast" and not isinstance(model, ParallelMultiscalePixelCNN),
            # The loops are written with tf.while_loop and tf.cond; converting every
            # function the model calls with AutoGraph only costs tracing time.
            autograph=False,
            input_signature=[
                tf.TensorSpec([None, height, width, channels], tf.int32),  # images
                tf.TensorSpec([], tf.int32),  # first sub-pixel to draw
                tf.TensorSpec([], tf.int64),  # seed
                tf.TensorSpec([], tf.float32),  # temperature
                tf.TensorSpec([], tf.bool),  # greedy
                tf.TensorSpec([None], tf.int32),  # labels
            ])
    return per_model[key]


def start_index(start: Optional[Sequence[int]], image_shape: Sequence[int]) -> int:
    """(row, col, channel) → index of that sub-pixel in raster order."""
    height, width, channels = image_shape
    if start is None:
        return 0
    if len(start) != 3:
        raise ValueError(f"start must be (row, col, channel), got {start!r}")
    row, col, channel = (int(s) for s in start)
    if not (0 <= row < height and 0 <= col < width and 0 <= channel < channels):
        raise ValueError(f"start={tuple(start)} is outside images of shape "
                         f"{tuple(image_shape)}")
    return (row * width + col) * channels + channel


def generate_images(model, img_dims: Sequence[int], n_images: int, n_channels: int, *,
                    seed: Optional[int] = None, temperature: float = 1.0,
                    greedy: bool = False, method: str = "naive", labels=None,
                    init_images=None, start: Optional[Sequence[int]] = None) -> np.ndarray:
    """Draws ``n_images`` images from ``model``.

    Args:
      model: a model from ``build_model`` (has ``image_shape``).
      img_dims: (height, width); must match the model.
      n_images: how many images to draw (one batch).
      n_channels: 1 or 3; must match the model.
      seed: int in 0..2**63-1; the same seed gives the same images (every bit of it
        counts). None draws a random seed.
      temperature: divides the logits (>0); < 1 sharpens, > 1 flattens.
      greedy: take the most likely value instead of sampling.
      method: "naive" (a full forward pass per sub-pixel) or "fast" (cached: one
        position per sub-pixel; identical results).
      labels: class ids ``[n_images]`` (or one int) for class-conditional models.
      init_images: uint8 levels ``[n_images, H, W, C]`` (0..2^bits - 1: intensities
        0..255 for 8-bit models); sub-pixels before ``start`` are kept.
      start: (row, col, channel) of the first sub-pixel to sample (default (0, 0, 0)).

    Returns:
      uint8 numpy array ``[n_images, H, W, C]`` of levels 0..2^bits - 1
      (``data.to_intensities`` shows them on 0..255).
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; allowed: {', '.join(METHODS)}")
    image_shape = tuple(model.image_shape)
    if tuple(int(d) for d in img_dims) != image_shape[:2]:
        raise ValueError(f"img_dims={tuple(img_dims)} does not match the model's image size "
                         f"{image_shape[:2]}")
    if int(n_channels) != image_shape[2]:
        raise ValueError(f"n_channels={n_channels} does not match the model's "
                         f"{image_shape[2]} channels")
    if int(n_images) < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    shape = (int(n_images), *image_shape)
    k0 = start_index(start, image_shape)
    if init_images is None:
        if k0 > 0:
            raise ValueError("start needs init_images: the sub-pixels before it are kept")
        images = np.zeros(shape, np.int32)
    else:
        images = np.asarray(init_images)
        if images.shape != shape:
            raise ValueError(f"init_images must have shape {shape}, got {images.shape}")
        top = model.distribution.n_levels - 1
        if images.min() < 0 or images.max() > top:
            raise ValueError(f"init_images must hold the model's levels 0..{top}")
        images = images.astype(np.int32)
    conditional = getattr(model, "num_classes", 0) > 0
    if conditional:
        if labels is None:
            raise ValueError("this model is class-conditional: pass labels=[class ids]")
        labels = np.broadcast_to(np.asarray(labels, np.int32), [shape[0]])
        if labels.min() < 0 or labels.max() >= model.num_classes:
            raise ValueError(f"labels must be in 0..{model.num_classes - 1}")
    elif labels is not None:
        raise ValueError("labels were given but the model is not class-conditional")
    else:
        labels = np.zeros([shape[0]], np.int32)
    seed = random.SystemRandom().randrange(2**63) if seed is None else check_seed(seed)
    sampler = get_sampler(model, method, conditional)
    out = sampler(tf.constant(images), tf.constant(k0, tf.int32),
                  tf.constant(seed, tf.int64), tf.constant(temperature, tf.float32),
                  tf.constant(bool(greedy)), tf.constant(labels))
    return out.numpy()


def complete_images(model, images, rows: int, n_completions: int = 1, **kwargs) -> np.ndarray:
    """Keeps the top ``rows`` rows of each image and samples the rest.

    Args:
      images: uint8 ``[N, H, W, C]``.
      rows: how many rows are given (0 < rows < H).
      n_completions: completions per image.
      **kwargs: passed to ``generate_images`` (seed, temperature, method, labels, ...);
        ``labels`` are per image ``[N]``.

    Returns:
      uint8 ``[N, n_completions, H, W, C]``.
    """
    images = np.asarray(images)
    height = model.image_shape[0]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(model.image_shape):
        raise ValueError(f"images must be [N, {', '.join(map(str, model.image_shape))}], "
                         f"got {images.shape}")
    if not 0 < rows < height:
        raise ValueError(f"rows must be between 1 and {height - 1}, got {rows}")
    n = len(images)
    repeated = np.repeat(images, n_completions, axis=0)  # [N·K, H, W, C], image-major
    labels = kwargs.pop("labels", None)
    if labels is not None:
        labels = np.repeat(np.broadcast_to(np.asarray(labels), [n]), n_completions)
    out = generate_images(model, model.image_shape[:2], n * n_completions,
                          model.image_shape[2], init_images=repeated, start=(rows, 0, 0),
                          labels=labels, **kwargs)
    return out.reshape(n, n_completions, *model.image_shape)  # [N·K, ...] → [N, K, ...]
