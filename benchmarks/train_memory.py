"""Peak memory of a training step, with and without train.recompute, and the largest batch
that fits a given memory.

  python benchmarks/train_memory.py [--configs configs/cifar10_pixelcnn_pp.yml,config.yml]
                                    [--batch-sizes 16,64] [--fits 16,24,40,80]

Each measurement runs in a fresh process (a process's peak memory only grows): it builds
the config's Trainer for 32x32x3 images, then takes two training steps on a random batch.
On a GPU the figure is TensorFlow's peak GPU memory of the steps
(``tf.config.experimental.get_memory_info``); on a CPU it is the process's peak resident
memory (``ru_maxrss``), and the step's own share, the peak minus the resident memory just
before the first step (activations, gradients and temporaries; the weights, Adam's
moments and TensorFlow itself came before). The ratio is recompute's peak / the plain
step's, in the same run. From the two batch sizes of the plain and the recomputed step it
fits peak = fixed + per-image · batch and prints the largest batch that fits each of
--fits GiB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GIB = 2.0**30


def resident_bytes() -> int:
    """The process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(config: str, batch: int, overrides) -> dict:
    """Two training steps of ``config`` at ``batch`` in this process: peak bytes."""
    from pixelcnn_tf import cli
    cli.import_tensorflow_quietly()
    import tempfile

    import numpy as np
    import tensorflow as tf

    from pixelcnn_tf.config import load_config
    from pixelcnn_tf.trainer import Trainer

    cfg = load_config(config, [*overrides, f"data.batch_size={batch}"])
    gpu = bool(tf.config.list_physical_devices("GPU"))
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch, 32, 32, 3)).astype(np.uint8))
    labels = tf.zeros([batch], tf.int32)
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(cfg, workdir, (32, 32, 3))
        if gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        before = resident_bytes()
        for _ in range(2):
            float(trainer.train_step(images, labels)[0])
        if gpu:
            peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
            return {"device": "GPU", "peak": peak, "step": peak}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"device": "CPU", "peak": peak, "step": peak - before}


def measure_in_child(config: str, batch: int, overrides) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--one", config, str(batch),
               *[f"--set={o}" for o in overrides]]
    # Buffers over 64 KiB straight from mmap and back to the system when freed, so that
    # the peak resident memory follows the live tensors, not the heap's high-water mark.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{config} at batch {batch} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def largest_batch(points, gigabytes: float) -> int:
    """From two (batch, peak bytes) points: the largest batch whose linear peak fits."""
    (b1, p1), (b2, p2) = points
    per_image = max((p2 - p1) / (b2 - b1), 1.0)  # (tiny models: within the noise)
    fixed = p1 - per_image * b1
    return max(0, int((gigabytes * GIB - fixed) // per_image))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="configs/cifar10_pixelcnn_pp.yml,config.yml")
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--fits", default="16,24,40,80", help="GiB for the fit table")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (repeatable)")
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.set)))
        return
    from pixelcnn_tf.devices import cpu_description
    print(cpu_description())
    batches = [int(b) for b in args.batch_sizes.split(",")]
    for config in args.configs.split(","):
        path = config if os.path.isabs(config) else os.path.join(ROOT, config)
        points = {}
        for batch in batches:
            row = {}
            for recompute in ("false", "true"):
                row[recompute] = measure_in_child(path, batch, [*args.set,
                                                               f"train.recompute={recompute}"])
                points.setdefault(recompute, []).append((batch, row[recompute]["peak"]))
            plain, saved = row["false"], row["true"]
            print(f"{config} batch {batch} ({plain['device']}): peak {plain['peak'] / GIB:.2f} "
                  f"GiB plain, {saved['peak'] / GIB:.2f} GiB recompute "
                  f"({saved['peak'] / plain['peak']:.2f}x); the step's own: "
                  f"{plain['step'] / GIB:.2f} → {saved['step'] / GIB:.2f} GiB "
                  f"({saved['step'] / plain['step']:.2f}x)", flush=True)
        if len(batches) >= 2:
            for recompute, pts in points.items():
                fits = ", ".join(f"{g} GiB: {largest_batch(pts[:2], float(g))}"
                                 for g in args.fits.split(","))
                print(f"  largest batch (recompute={recompute}, linear in the batch from "
                      f"{batches[0]} and {batches[1]}): {fits}")


if __name__ == "__main__":
    main()
