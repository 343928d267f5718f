"""Peak training memory of a config, next to a baseline config, measured in one run.

  python benchmarks/attention_memory.py [--config configs/cifar10_pixelsnail.yml]
      [--baseline configs/cifar10_gated_pixelcnn.yml] [--batch-size 16] [--steps 2]
      [--set KEY=VALUE ...]

Each config runs in its own fresh process: build the model and the Trainer (float32),
read the resident memory (VmRSS), run ``--steps`` training steps of Trainer.train_step on
a random batch of 32x32x3 images, read the process's peak resident memory (VmHWM). The
training memory is the peak minus the memory before the first step (the optimizer's
slots, the activations kept for the gradient, the gradients). Printed next to it: the
attention weights a pixelsnail model keeps per step, computed
(``attention_matrix_bytes``: batch · heads · colour groups · L · L float32 values per
layer, L = H·W), and the ratio to the baseline's training memory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equal_time import run_child  # noqa: E402

SHAPE = (32, 32, 3)


def status_mib(key: str) -> float:
    """A ``/proc/self/status`` memory line (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} is not in /proc/self/status (Linux only)")


def attention_matrix_bytes(model_config, batch: int, shape=SHAPE) -> int:
    """The float32 attention weights of one training batch over every pixelsnail layer:
    ``[B, heads, G, L, L]`` per layer (0 for other types)."""
    if model_config.type != "pixelsnail":
        return 0
    length = shape[0] * shape[1]
    groups = shape[2] if model_config.output == "categorical" else 1
    return 4 * batch * model_config.num_heads * groups * length * length * model_config.n_layers


def measure(config_path: str, batch: int, steps: int, overrides=()) -> dict:
    sys.path.insert(0, ROOT)
    from pixelcnn_tf import cli
    cli.import_tensorflow_quietly()
    import numpy as np
    import tensorflow as tf
    from pixelcnn_tf.config import load_config
    from pixelcnn_tf.models import count_parameters
    from pixelcnn_tf.trainer import Trainer
    cfg = load_config(config_path, [*overrides, f"data.batch_size={batch}"])
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch, *SHAPE)).astype(np.uint8))
    labels = tf.zeros([batch], tf.int32)
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(cfg, workdir, SHAPE)
        before = status_mib("VmRSS")
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step(images, labels)
            times.append(time.perf_counter() - start)
        peak = status_mib("VmHWM")
    return {"config": os.path.relpath(config_path, ROOT), "type": cfg.model.type,
            "parameters": count_parameters(trainer.model), "batch": batch,
            "before_mib": before, "peak_mib": peak, "training_mib": peak - before,
            "attention_mib": attention_matrix_bytes(cfg.model, batch) / 2**20,
            "step_s": times[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(ROOT, "configs",
                                                         "cifar10_pixelsnail.yml"))
    parser.add_argument("--baseline", default=os.path.join(ROOT, "configs",
                                                           "cifar10_gated_pixelcnn.yml"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2,
                        help="training steps (the first also traces)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both configs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.config, args.batch_size, args.steps, args.set)))
        return
    overrides = [arg for o in args.set for arg in ("--set", o)]
    rows = [run_child(os.path.abspath(__file__),
                      ["--child", "--config", path, "--batch-size", str(args.batch_size),
                       "--steps", str(args.steps), *overrides], path)
            for path in (args.baseline, args.config)]
    base = rows[0]["training_mib"]
    print(f"training memory at batch {args.batch_size}, 32x32x3, float32 (peak resident "
          f"memory of a fresh process minus its memory before the first step):")
    for row in rows:
        print(f"  {row['config']} ({row['type']}, {row['parameters']:,} parameters): "
              f"{row['training_mib']:,.0f} MiB (peak {row['peak_mib']:,.0f} MiB), "
              f"{row['training_mib'] / base:.2f}x the baseline; attention weights "
              f"computed: {row['attention_mib']:,.0f} MiB; last step {row['step_s']:.1f} s")


if __name__ == "__main__":
    main()
