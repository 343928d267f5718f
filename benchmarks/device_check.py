"""The prepared device check: one short script to run when a GPU is lent to you.

  python benchmarks/device_check.py [--budget-s 420]          # a GPU: the real sizes
  python benchmarks/device_check.py --tiny                    # any machine: tiny sizes

Prints the device's name, then, for configs/cifar10_pixelcnn_pp.yml and config.yml (the
CIFAR-10 PixelCNN):
  train     images/s at batch 16 and 64, float32 and bfloat16, with and without the
            XLA-compiled step (train.jit_compile), and the peak GPU memory of each
            (TensorFlow's memory stats; "n/a" on a CPU), the most important first;
  sample    fast and naive sampling of 16 and 256 images (benchmarks/sampling.py's
            bench: the naive sampler timed over its last steps and scaled);
  projected the time to 500,000 training steps at each batch's best setting.
Measurements start in order of importance (``plan``) until --budget-s is spent (420 s: the
GPU check ends in under 8 minutes; the first always runs); what did not start is listed as
skipped. On a CPU, or
with --tiny, the same measurements run on tiny models (hidden_dim 4, one block per stage,
batch 2 and 4, 2 and 4 images of 8x8) with a 75 s budget, so the check ends in about 2
minutes (on a 2-core CPU, XLA's compilation of even a tiny PixelCNN++ step takes most of
a minute, so only the first items fit); tests/test_benchmarks.py runs that.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pixelcnn_tf import cli  # noqa: E402

cli.import_tensorflow_quietly()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pixelcnn_tf.config import load_config  # noqa: E402
from pixelcnn_tf.devices import cpu_description  # noqa: E402
from pixelcnn_tf.trainer import Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import sampling  # noqa: E402  (benchmarks/sampling.py)
import train_throughput  # noqa: E402  (benchmarks/train_throughput.py)

CONFIGS = ("configs/cifar10_pixelcnn_pp.yml", "config.yml")
TOTAL_STEPS = 500_000
TINY = {"configs/cifar10_pixelcnn_pp.yml": ["model.hidden_dim=4", "model.n_layers=1",
                                            "model.num_mixtures=2"],
        "config.yml": ["model.hidden_dim=3", "model.out_dim=6", "model.n_layers=1"]}


def device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"CPU only: {cpu_description()}"
    details = tf.config.experimental.get_device_details(gpus[0])
    return (f"{len(gpus)} GPU(s): {details.get('device_name', gpus[0].name)}, compute "
            f"capability {details.get('compute_capability')}")


def train_rate(config: str, overrides, batch: int, shape, steps: int) -> tuple:
    """(images/s over ``steps`` steps after two warm-up steps, peak GPU bytes or None)."""
    cfg = load_config(os.path.join(ROOT, config), [*overrides, f"data.batch_size={batch}"])
    gpu = bool(tf.config.list_physical_devices("GPU"))
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch, *shape)).astype(np.uint8))
    labels = tf.zeros([batch], tf.int32)
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(cfg, workdir, shape)
        if gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        rate = train_throughput.time_interleaved(  # 2 warm-up steps: tracing, compiling
            {"step": trainer.train_step}, (images, labels), batch, rounds=1,
            steps_per_round=steps, warmup=2)["step"]
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpu else None
    del trainer
    gc.collect()
    return rate, peak


def plan(batches, counts):
    """The measurements in order of importance, as (kind, config, setting): training at
    the larger batch, the most likely fastest settings first, for both configs; then
    sampling the fewer images; then the rest."""
    settings = (("bfloat16", "true"), ("none", "true"), ("none", "false"),
                ("bfloat16", "false"))
    first = [("train", c, (batches[-1], *settings[0])) for c in CONFIGS]
    first += [("sample", c, counts[0]) for c in CONFIGS]
    rest = [("train", c, (batches[-1], *s)) for s in settings[1:] for c in CONFIGS]
    rest += [("sample", c, counts[-1]) for c in CONFIGS]
    rest += [("train", c, (batches[0], *s)) for s in settings for c in CONFIGS]
    return first + rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds after which no new measurement starts (default: "
                             "420 on a GPU, 75 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny models (the CPU default)")
    args = parser.parse_args()
    began = time.perf_counter()
    gpu = bool(tf.config.list_physical_devices("GPU"))
    tiny = args.tiny or not gpu
    if args.budget_s is None:
        args.budget_s = 75.0 if tiny else 420.0
    batches, counts = ((2, 4), (2, 4)) if tiny else ((16, 64), (16, 256))
    shape = (8, 8, 3) if tiny else (32, 32, 3)
    steps = 2 if tiny else 10
    print(f"device: {device_name()}")
    print(f"sizes: {'tiny (hidden_dim 4, one block, 8x8)' if tiny else 'as configured'}, "
          f"images {shape}, budget {args.budget_s:.0f} s", flush=True)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - began)

    skipped = []
    best = {}
    peak_flops = sampling.matmul_flops_per_second(512 if tiny else 4096)
    for number, (kind, config, setting) in enumerate(plan(batches, counts)):
        overrides = TINY[config] if tiny else []
        spent = number > 0 and left() <= 0  # (the first measurement always runs)
        if kind == "sample":
            name = f"sampling {setting} images of {config}"
            if spent:
                skipped.append(name)
                continue
            sampling.bench(f"sample {config}", os.path.join(ROOT, config), overrides, shape,
                           setting, naive_steps=10**9 if tiny else 24, peak=peak_flops)
            continue
        batch, precision, jit = setting
        name = (f"{config} batch {batch} {'fp32' if precision == 'none' else precision}"
                f"{' compiled' if jit == 'true' else ''}")
        if spent:
            skipped.append(name)
            continue
        rate, peak = train_rate(config, [*overrides, f"train.mixed_precision={precision}",
                                         f"train.jit_compile={jit}"], batch, shape, steps)
        memory = f"{peak / 2**30:.2f} GiB" if peak is not None else "n/a"
        print(f"train {name}: {rate:9.1f} images/s, peak GPU memory {memory}", flush=True)
        if rate > best.get((config, batch), (0.0, ""))[0]:
            best[(config, batch)] = (rate, name)
    print()
    for (config, batch), (rate, name) in sorted(best.items()):
        hours = TOTAL_STEPS * batch / rate / 3600
        print(f"projected: {TOTAL_STEPS:,} steps of {config} at batch {batch}: {hours:.1f} h "
              f"(best: {name}, {rate:.1f} images/s)")
    for name in skipped:
        print(f"skipped (budget spent): {name}")
    print(f"device check took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
