"""Lossless compression of held-out images: the model's codec against standard codecs.

  pip install -r benchmarks/requirements.txt   # imagecodecs: PNG, WebP, JPEG XL
  python benchmarks/compression.py [--datasets mnist5k,cifar]
      [--workdir-mnist5k DIR] [--workdir-cifar DIR] [--mnist5k-set K=V ...] [--cifar-set K=V ...]
      [--keep DIR] [--codecs png,webp,jxl | none]

For each dataset a model is trained with train.py (or an existing run is used with
``--workdir-<dataset>``; ``--keep DIR`` keeps the runs it trains as DIR/<dataset>), then
the images it was *not* trained on (its config's validation split: the 500 held-out
mnist5k digits; 500 of the 4,660 real CIFAR-10 images in
``../shared/data/cifar10-4660.npz``, the model trained on the other 4,160) are compressed:

  model      one file from ``pixelcnn_tf.codec.encode`` (header included), decoded and
             compared image for image; its bits/dim against the model's own (full pass)
  PNG        zlib level 9; WebP lossless, level 100, method 6 (grey images as RGB: WebP
             has no grey mode); JPEG XL lossless, effort 9 (all through imagecodecs).
             Each image its own file (what storing the images means), and all images
             tiled into one picture (no per-file overhead), each decoded and compared.

It prints bits/dim (8 · bytes / (N·H·W·C)) for every codec, the ratio to the model's
file, and encode/decode images/s. Name the CPU next to the figures.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10-4660.npz")
HELD_OUT = 500
# How each dataset's model is trained when no workdir is given (about 5 minutes each on
# a 2-core CPU): the quickstart PixelCNN for the digits, the quickstart PixelCNN++ with
# 10 mixtures for CIFAR-10.
TRAIN = {
    "mnist5k": ("configs/quickstart.yml", ["train.steps=3000"]),
    "cifar": ("configs/quickstart_pixelcnn_pp.yml",
              ["data.dataset=npz", f"data.path={CIFAR}", f"data.validation_size={HELD_OUT}",
               "data.batch_size=16", "model.num_mixtures=10", "train.steps=2000"]),
}


def train(dataset: str, workdir: str, extra) -> None:
    config, overrides = TRAIN[dataset]
    args = [sys.executable, os.path.join(ROOT, "train.py"), "--config",
            os.path.join(ROOT, config), "--workdir", workdir]
    for override in [*overrides, *extra]:
        args += ["--set", override]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode != 0:
        raise SystemExit(f"training {dataset} failed:\n{done.stderr[-3000:]}")
    print(f"  trained {config} {' '.join(overrides + list(extra))} in "
          f"{time.perf_counter() - started:.0f} s", flush=True)


def standard_codecs(chosen) -> dict:
    """name → (encode(uint8 [H, W, C]) → bytes, decode(bytes) → array), for the ``chosen``
    keys of png, webp, jxl."""
    if not chosen:
        return {}
    import imagecodecs

    def grey_as_2d(image):  # PNG and JPEG XL take grey images as [H, W]
        return image[..., 0] if image.shape[-1] == 1 else image

    def as_rgb(image):  # WebP codes RGB(A) only
        return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image

    every = {
        "png": (lambda im: imagecodecs.png_encode(grey_as_2d(im), level=9),
                imagecodecs.png_decode),
        "webp": (lambda im: imagecodecs.webp_encode(as_rgb(im), level=100, lossless=True,
                                                    method=6),
                 imagecodecs.webp_decode),
        "jxl": (lambda im: imagecodecs.jpegxl_encode(grey_as_2d(im), lossless=True,
                                                     effort=9),
                imagecodecs.jpegxl_decode),
    }
    return {NAMES[key]: every[key] for key in chosen}


NAMES = {"png": "PNG (level 9)", "webp": "WebP lossless", "jxl": "JPEG XL lossless"}


def tile(images: np.ndarray) -> np.ndarray:
    """[N, H, W, C] → one picture [rows·H, cols·W, C] (zero images pad the last row)."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    padded = np.zeros((rows * cols, h, w, c), np.uint8)
    padded[:n] = images
    # [rows·cols, H, W, C] → [rows, H, cols, W, C] → [rows·H, cols·W, C]
    return padded.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
        rows * h, cols * w, c)


def same(decoded, image) -> bool:
    decoded = np.asarray(decoded)
    if decoded.ndim == 3 and image.shape[-1] == 1:
        decoded = decoded[..., :1]  # WebP gives grey back as RGB
    return np.array_equal(decoded.reshape(image.shape), image)


def measure_standard(images: np.ndarray, chosen) -> list:
    """Rows (name, bits/dim, encode images/s, decode images/s) per codec, per-image files
    and one tiled picture; every image checked after decoding."""
    rows = []
    dims = images.size
    for name, (encode, decode) in standard_codecs(chosen).items():
        t = time.perf_counter()
        files = [encode(im) for im in images]
        enc_s = time.perf_counter() - t
        t = time.perf_counter()
        decoded = [decode(f) for f in files]
        dec_s = time.perf_counter() - t
        assert all(same(d, im) for d, im in zip(decoded, images)), f"{name} is not lossless"
        rows.append((f"{name}, a file per image", 8 * sum(map(len, files)) / dims,
                     len(images) / enc_s, len(images) / dec_s))
        picture = tile(images)
        blob = encode(picture)
        assert same(decode(blob), picture), f"{name} is not lossless"
        rows.append((f"{name}, one tiled picture", 8 * len(blob) / dims, None, None))
    return rows


def measure_model(workdir: str, batch_size: int) -> dict:
    from pixelcnn_tf import cli
    cli.import_tensorflow_quietly()
    from pixelcnn_tf import codec
    from pixelcnn_tf import data as data_lib
    from pixelcnn_tf.models import count_parameters
    from pixelcnn_tf.run import load_for_inference

    run = load_for_inference(workdir)
    split = data_lib.load_split(run.config.data, "validation")
    pairs = list(split.dataset.as_numpy_iterator())
    images = np.stack([x for x, _ in pairs])
    labels = np.array([y for _, y in pairs], np.int32) if run.conditional else None
    with run.inference_weights():
        model_bpd = run.evaluate(data_lib.eval_pipeline(split, 100)).bits_per_dim
        codec.decode(run.model, codec.encode(run.model, images[:2], None if labels is None
                                             else labels[:2]))  # trace outside the timing
        t = time.perf_counter()
        encoded = codec.encode_with_stats(run.model, images, labels, batch_size=batch_size)
        enc_s = time.perf_counter() - t
        t = time.perf_counter()
        decoded = codec.decode(run.model, encoded.data)
        dec_s = time.perf_counter() - t
    assert np.array_equal(decoded, images), "the model codec is not lossless"
    return {"images": images, "model_bpd": model_bpd, "file_bpd": 8 * len(encoded.data)
            / images.size, "payload_bpd": 8 * encoded.payload_bytes / images.size,
            "header": len(encoded.data) - encoded.payload_bytes, "enc": len(images) / enc_s,
            "dec": len(images) / dec_s, "type": run.config.model.type,
            "parameters": count_parameters(run.model), "step": run.step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="mnist5k,cifar")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="images the model codec codes together")
    for name in TRAIN:
        parser.add_argument(f"--workdir-{name}", default=None,
                            help=f"a trained {name} run (default: train one)")
        parser.add_argument(f"--{name}-set", action="append", default=[], metavar="K=V",
                            help=f"a training override for {name}, e.g. train.steps=500")
    parser.add_argument("--codecs", default="png,webp,jxl",
                        help="standard codecs to compare with (png, webp, jxl; none: only "
                             "the model codec, without imagecodecs)")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep the runs this script trains as DIR/<dataset>")
    args = parser.parse_args()
    chosen = [] if args.codecs == "none" else args.codecs.split(",")
    unknown = sorted(set(chosen) - set(NAMES))
    if unknown:
        parser.error(f"unknown codecs {unknown}; choose from {', '.join(NAMES)} or none")
    for dataset in args.datasets.split(","):
        print(f"\n{dataset}:", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            workdir = getattr(args, f"workdir_{dataset}")
            if workdir is None:
                workdir = os.path.join(args.keep or scratch, dataset if args.keep else "run")
                train(dataset, workdir, getattr(args, f"{dataset}_set"))
            ours = measure_model(workdir, args.batch_size)
        images = ours["images"]
        n, h, w, c = images.shape
        print(f"  {n} held-out {h}x{w}x{c} images; model: {ours['type']}, "
              f"{ours['parameters']:,} parameters, step {ours['step']}")
        print(f"  {'codec':38s} {'bits/dim':>9s} {'÷ model file':>13s} {'encode img/s':>13s} "
              f"{'decode img/s':>13s}")
        rows = [("model codec (one file, header incl.)", ours["file_bpd"], ours["enc"],
                 ours["dec"])] + measure_standard(images, chosen)
        for name, bpd, enc, dec in rows:
            speed = (f"{enc:13.1f} {dec:13.1f}" if enc is not None else f"{'':13s} {'':13s}")
            print(f"  {name:38s} {bpd:9.4f} {bpd / ours['file_bpd']:13.3f} {speed}")
        print(f"  the model's own bits/dim (full pass): {ours['model_bpd']:.4f}; the file: "
              f"{ours['file_bpd']:.4f} ({100 * (ours['file_bpd'] / ours['model_bpd'] - 1):+.3f}"
              f"%; coded payload {ours['payload_bpd']:.4f}, "
              f"{100 * (ours['payload_bpd'] / ours['model_bpd'] - 1):+.3f}%, header "
              f"{ours['header']} bytes)")
        if len(rows) > 1:
            best = min(rows[1:], key=lambda r: r[1])
            print(f"  best standard codec: {best[0]} at {best[1]:.4f} bits/dim; the model "
                  f"codec is {'smaller' if ours['file_bpd'] < best[1] else 'NOT smaller'} "
                  f"by {100 * (1 - ours['file_bpd'] / best[1]):.1f}%", flush=True)


if __name__ == "__main__":
    main()
