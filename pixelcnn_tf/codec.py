"""Lossless image compression with a trained model.

A model's bits/dim is a code length: an entropy coder driven by the model's conditional
distributions turns every sub-pixel into -log2 p(value) bits. ``encode`` and ``decode``
do that with the range coder of ``constriction`` (a maintained entropy-coding library:
exact arithmetic on integer frequencies, streams that a decoder reads back bit for bit).

Images are coded as the model's levels 0..2^bits - 1 (``data.bits``); compress.py
quantizes 8-bit files to them and decompress.py writes them back as intensities
(``data.to_intensities``), so a file of images already at the run's bit depth round-trips
byte for byte.

Exact decoding. The decoder can learn sub-pixel k only after decoding the ones before
it, so it must run the model one step at a time (the fast sampler's incremental
evaluation). A full pass would give the encoder the same distributions only up to the
last bits of float32, and one differing quantized frequency breaks decoding. So both
sides run the *same* computation: ``walk`` (models/base.py) in one ``tf.function`` on the same
batches (the batch size is in the file), starting from zero images into which each step
writes its coded values. The encoder's ``fill`` supplies the true values and the
decoder's the decoded ones; everything the network reads is identical, bit for bit, and
so are the logits. Each sub-pixel's logits ``[N, L]`` go to numpy
(``tf.numpy_function``), which turns them into integer frequencies (``quantize``: every
value at least 1, sum 2^24) that the coder uses.

What this guarantees: a file decodes on the machine and software (TensorFlow build, CPU
kind) it was written with. Another CPU kind may choose other kernels and change the last
bits of the logits; a file therefore carries a digest of the original images, and a
decode that does not reproduce them is an error, never wrong images without notice.

The file's layout, and the checks of a file before any model loads, are in container.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from typing import Optional, Sequence

import constriction
import numpy as np
import tensorflow as tf

from pixelcnn_tf.container import TOTAL, CodecError, Header, pack, read_header
from pixelcnn_tf.models.base import has_steps, walk
from pixelcnn_tf.models.multiscale import MultiScalePixelRNN, place_on_grid
from pixelcnn_tf.models.parallel_multiscale import (ParallelMultiscalePixelCNN, group_rows,
                                                    walk_groups)
from pixelcnn_tf.sampling import write_pixel

DEFAULT_BATCH_SIZE = 64


# -- probabilities → integer frequencies -----------------------------------------------------
def quantize(logits: np.ndarray) -> np.ndarray:
    """Logits ``[N, L]`` (any scale; normalised here) → int64 frequencies ``[N, L]``,
    every one >= 1, each row summing to exactly 2^24.

    p = softmax(logits) in float64; each value gets 1 + floor(p · (2^24 - L)) and the
    most probable value takes the remainder (at most L). The cost over -log2 p is at most
    L / 2^24 of probability mass per sub-pixel (about 2e-5 bits for L = 256). A pure
    function of the logits' bits: both sides compute it from identical logits.
    """
    logits = np.asarray(logits, np.float64)
    if not np.all(np.isfinite(logits)):
        raise CodecError("the model produced non-finite logits; the checkpoint is damaged "
                         "or diverged: retrain or restore a good checkpoint")
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    freqs = np.floor(p * (TOTAL - p.shape[1])).astype(np.int64) + 1  # sum <= 2^24
    rows = np.arange(len(freqs))
    freqs[rows, np.argmax(freqs, axis=1)] += TOTAL - freqs.sum(axis=1)
    return freqs


def code_length_bits(freqs: np.ndarray, values: np.ndarray) -> float:
    """The ideal code length in bits of ``values`` ``[N]`` under ``freqs`` ``[N, L]``."""
    return float(-np.log2(freqs[np.arange(len(values)), values] / TOTAL).sum())


# constriction's Categorical quantizes float probabilities "leakily": 1 + its share of the
# remaining 2^24 - L. Given exactly f - 1 (integers summing to 2^24 - L) it reproduces
# the frequencies f (tests/test_codec.py checks the code lengths). One model family serves
# every sub-pixel; its probabilities come with each call.
CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


def _coder_probabilities(freqs: np.ndarray) -> np.ndarray:
    return (freqs - 1).astype(np.float64)


# -- the model's identity --------------------------------------------------------------------
def fingerprint(model) -> bytes:
    """16 bytes identifying what decoding depends on: the model class and layer type,
    image shape, classes, output distribution, compute dtype, dilation rates (when any
    is not 1) and every weight's bytes."""
    h = hashlib.sha256()
    distribution = model.distribution
    architecture = {
        "class": type(model).__name__, "layer_type": getattr(model, "layer_type", ""),
        "image_shape": list(model.image_shape), "num_classes": int(model.num_classes),
        "output": distribution.name, "num_params": int(distribution.num_params),
        "compute_dtype": str(tf.as_dtype(model.compute_dtype).name),
    }
    dilations = getattr(model, "dilations", ())
    if any(d != 1 for d in dilations):  # (undilated models keep their old fingerprint)
        architecture["dilations"] = list(dilations)
    if distribution.n_levels != 256:  # (8-bit models keep their old fingerprint)
        architecture["n_levels"] = int(distribution.n_levels)
    h.update(json.dumps(architecture, sort_keys=True).encode())
    for v in model.trainable_variables:
        value = np.ascontiguousarray(v.numpy())
        h.update(f"{v.name}|{value.dtype.str}|{value.shape}".encode())
        h.update(value.tobytes())
    return h.digest()[:16]


def image_digest(images: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(images, np.uint8).tobytes()).digest()[:16]


# -- the coding loop -------------------------------------------------------------------------
class _Coder:
    """The Python side of one encode or decode: the range coder and the images."""

    def __init__(self, encoder=None, decoder=None, truth: Optional[np.ndarray] = None,
                 budget: Optional[float] = None, bits: float = 0.0):
        self.encoder, self.decoder = encoder, decoder
        self.truth = truth  # [N, H·W·C] int32 (encoding), else None
        self.bits = bits  # ideal code length of what was coded so far
        # Decoding: the payload's size in bits (+ the coder's 64). The values decoded so
        # far cost at least their ideal code length, so once that passes the budget the
        # payload has run out: a damaged or forged file, stopped at that sub-pixel.
        self.budget = budget
        self.error: Optional[Exception] = None

    def __call__(self, logits: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Sub-pixel ``k`` of every image in the batch: its logits ``[N, L]`` → values."""
        try:
            freqs = quantize(logits)
            probabilities = _coder_probabilities(freqs)
            if self.decoder is not None:
                values = np.asarray(self.decoder.decode(CATEGORICAL, probabilities), np.int32)
                self.bits += code_length_bits(freqs, values)
                if self.bits > self.budget:
                    raise CodecError("the payload runs out before the images it claims: "
                                     "the file is damaged; compress the images again")
                return values
            values = np.ascontiguousarray(self.truth[:, int(k)])
            self.encoder.encode(values, CATEGORICAL, probabilities)
            self.bits += code_length_bits(freqs, values)
            return values
        except Exception as e:  # surfaces after the loop, with its own message
            self.error = e
            raise


class _CodingLoop:
    """The ``tf.function`` (images int32 ``[N, H, W, C]``, labels ``[N]``) → images that
    visits every step of ``model`` in its drawing order (``walk``; for a parallel
    multiscale model its base image with ``walk``, then ``walk_groups``) and hands each
    sub-pixel's logits to ``self.coder``, the sub-pixels of a group position by position."""

    def __init__(self, model):
        self.coder: Optional[_Coder] = None
        self.conditional = model.num_classes > 0
        model_ref = weakref.ref(model)
        height, width, channels = model.image_shape
        parallel = isinstance(model, ParallelMultiscalePixelCNN)
        f = 2 ** model.doublings if parallel else 1  # the raster steps' image is x[::f, ::f]
        distribution = model.distribution.group if parallel else model.distribution
        colours_per_step = channels // distribution.groups

        def code(logits, first):
            """logits ``[N·P, L]`` (image-major rows of P positions), ``first`` ``[P]``
            their sub-pixels' raster indices → the values ``[N·P]``, coded position by
            position."""
            per_position = logits.reshape(-1, len(first), logits.shape[-1])  # [N, P, L]
            return np.stack([self.coder(per_position[:, p], k) for p, k in enumerate(first)],
                            axis=1).reshape(-1).astype(np.int32)

        def code_colours(step_params, pixel, c, first):
            """``pixel`` int32 ``[N·P, C]`` with the colours of colour group ``c`` coded."""
            for g in range(colours_per_step):  # the colours of this step, in order
                # The categorical's step codes its colour group c (a tensor inside the
                # loop); the mixture's (one group: c = 0) every colour of the pixel.
                colour = g if distribution.groups == 1 else c
                logits = distribution.subpixel_logits(step_params, pixel, colour)  # [N·P, L]
                values = tf.numpy_function(code, [logits, first + colour], tf.int32,
                                           stateful=True)
                values = tf.ensure_shape(values, [None])
                pixel = tf.where(tf.equal(tf.range(channels), colour)[None], values[:, None],
                                 pixel)
            return pixel

        def fill(params, images, pos):  # a raster step
            first = ((pos.i * f) * width + pos.j * f) * channels  # the pixel's, in x
            pixel = code_colours(params, images[:, pos.i, pos.j, :], pos.c, first[None])
            return write_pixel(images, pos.i, pos.j, pixel)

        def fill_group(params, pixels, first, c):  # every pixel of a group at once
            rows = code_colours(group_rows(distribution, params, c),
                                tf.reshape(pixels, [-1, channels]), c, first)
            return tf.reshape(rows, tf.shape(pixels))

        def run(images, labels):
            model, labels = model_ref(), labels if self.conditional else None
            if not parallel:
                return walk(model, images, labels, fill)
            base = walk(model.base, images[:, ::f, ::f], labels, fill)
            return walk_groups(model, place_on_grid(base, images, f), labels, fill_group)

        self.run = tf.function(run, autograph=False, input_signature=[
            tf.TensorSpec([None, height, width, channels], tf.int32),
            tf.TensorSpec([None], tf.int32)])


_LOOPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _loop(model) -> _CodingLoop:
    if isinstance(model, MultiScalePixelRNN):
        raise CodecError("multi-scale models (model.multiscale) cannot code images yet: "
                         "compress with a one-scale model")
    if not (has_steps(model) or isinstance(model, ParallelMultiscalePixelCNN)
            and has_steps(model.base)):
        raise CodecError(f"model type {getattr(model, 'layer_type', type(model).__name__)!r} "
                         f"has no incremental evaluation, which decoding needs")
    if model not in _LOOPS:
        _LOOPS[model] = _CodingLoop(model)
    return _LOOPS[model]


def _run(model, coder: _Coder, count: int, labels: Optional[np.ndarray]) -> np.ndarray:
    loop = _loop(model)
    loop.coder = coder
    shape = (count, *model.image_shape)
    labels = np.zeros([count], np.int32) if labels is None else labels.astype(np.int32)
    try:
        out = loop.run(tf.zeros(shape, tf.int32), tf.constant(labels))
    except (tf.errors.OpError, CodecError) as e:
        cause = coder.error or e
        if isinstance(cause, CodecError):
            raise cause from None
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:160]
        raise CodecError(f"entropy coding failed ({reason})") from None
    finally:
        loop.coder = None
    return out.numpy()


def _check_labels(model, labels, count: int) -> Optional[np.ndarray]:
    if labels is None:
        if model.num_classes > 0:
            raise CodecError(f"the model is class-conditional (model.num_classes="
                             f"{model.num_classes}): give each image's label")
        return None
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != count or not np.issubdtype(labels.dtype, np.integer):
        raise CodecError(f"labels must be {count} integers, got shape {np.shape(labels)}")
    top = model.num_classes - 1 if model.num_classes > 0 else 2**31 - 1
    if len(labels) and (labels.min() < 0 or labels.max() > top):
        raise CodecError(f"labels must be class ids 0..{top}, got "
                         f"{labels.min()}..{labels.max()}")
    return labels.astype(np.int32)


def _batches(count: int, batch_size: int):
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


@dataclasses.dataclass
class Encoded:
    """What ``encode_with_stats`` returns: the file and its ideal code length."""
    data: bytes
    ideal_bits: float  # Σ -log2 (frequency / 2^24) over every sub-pixel
    payload_bytes: int


def encode_with_stats(model, images, labels=None, *, names: Optional[Sequence[str]] = None,
                      batch_size: int = DEFAULT_BATCH_SIZE) -> Encoded:
    """``encode``, also returning the ideal code length and the payload size."""
    images = np.asarray(images)
    shape = tuple(model.image_shape)
    if images.ndim == 3 and shape[2] == 1:
        images = images[..., None]  # [N, H, W] → [N, H, W, 1]
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise CodecError(f"images must be uint8 [N, {', '.join(map(str, shape))}] for this "
                         f"model, got shape {images.shape}")
    top = model.distribution.n_levels - 1
    if images.dtype != np.uint8:
        raise CodecError(f"images must be uint8 levels 0..{top}, got dtype {images.dtype}")
    if images.size and images.max() > top:
        raise CodecError(f"images hold values up to {images.max()} but this model codes "
                         f"{model.distribution.bits}-bit levels 0..{top}: quantize them first "
                         f"(pixelcnn_tf.data.quantize; compress.py does it)")
    count = len(images)
    if count < 1 or count >= 2**32:
        raise CodecError(f"give between 1 and 2^32 - 1 images, got {count}")
    if not 1 <= int(batch_size) < 2**16:
        raise CodecError(f"batch_size must be in 1..65535, got {batch_size}")
    if names is not None and len(names) != count:
        raise CodecError(f"names must be {count} strings, got {len(names)}")
    labels = _check_labels(model, labels, count)
    encoder = constriction.stream.queue.RangeEncoder()
    bits = 0.0
    for part in _batches(count, int(batch_size)):
        truth = images[part].reshape(part.stop - part.start, -1).astype(np.int32)
        coder = _Coder(encoder=encoder, truth=truth)  # [n, H·W·C]
        _run(model, coder, len(truth), None if labels is None else labels[part])
        bits += coder.bits
    payload = encoder.get_compressed()
    header = Header(shape, count, int(batch_size), model.distribution.bits, fingerprint(model),
                    image_digest(images), labels,
                    None if names is None else [str(n) for n in names], payload)
    return Encoded(pack(header), bits, 4 * len(payload))


def encode(model, images, labels=None, *, names: Optional[Sequence[str]] = None,
           batch_size: int = DEFAULT_BATCH_SIZE) -> bytes:
    """Compresses uint8 ``images`` ``[N, H, W, C]`` (the model's image shape) losslessly.

    Args:
      model: a model from ``build_model`` with trained weights (the same weights must
        decode: the file holds their fingerprint).
      images: uint8 levels ``[N, H, W, C]`` (0..2^bits - 1 for the model's bit depth).
      labels: class ids ``[N]``: required by class-conditional models; stored in the file
        (returned by ``read_header``) whenever given.
      names: optional file names ``[N]``, stored in the file.
      batch_size: images coded together (stored; the decoder uses the same batches).

    Returns:
      The compressed file's bytes (``read_header`` describes them; ``decode`` inverts).
    """
    return encode_with_stats(model, images, labels, names=names, batch_size=batch_size).data


def check_model(model, header: Header, what: str = "the data") -> None:
    """Raises CodecError unless ``model`` is the one that wrote ``header``'s file."""
    if tuple(header.image_shape) != tuple(model.image_shape):
        raise CodecError(f"{what} holds {'x'.join(map(str, header.image_shape))} images but "
                         f"this model takes {'x'.join(map(str, model.image_shape))}; "
                         f"decompress with the run that compressed it")
    if header.bits != model.distribution.bits:
        raise CodecError(f"{what} holds {header.bits}-bit images but this model codes "
                         f"{model.distribution.bits}-bit ones (data.bits); decompress with the run "
                         f"that compressed it")
    if header.fingerprint != fingerprint(model):
        raise CodecError(f"{what} was compressed with another model (fingerprint "
                         f"{header.fingerprint.hex()}, this model's is "
                         f"{fingerprint(model).hex()}); decompress with the run and "
                         f"checkpoint that compressed it")


def decode(model, data: bytes, what: str = "the data") -> np.ndarray:
    """Decompresses ``data`` written by ``encode`` with the same model → uint8 levels
    ``[N, H, W, C]`` in the order encoded. Raises CodecError for foreign, damaged or
    truncated data, another model, or a decode that does not reproduce the images."""
    header = read_header(data, what)
    check_model(model, header, what)
    decoder = constriction.stream.queue.RangeDecoder(header.payload)
    out = np.zeros((header.count, *header.image_shape), np.uint8)
    budget, bits = 32.0 * len(header.payload) + 64, 0.0
    for part in _batches(header.count, header.batch_size):
        coder = _Coder(decoder=decoder, budget=budget, bits=bits)
        labels = None if header.labels is None else header.labels[part]
        out[part] = _run(model, coder, part.stop - part.start, labels)
        bits = coder.bits
    if image_digest(out) != header.digest:
        raise CodecError(f"decoding {what} did not reproduce the compressed images (their "
                         f"digest differs): it must run on the machine type and "
                         f"TensorFlow version that compressed it")
    return out
