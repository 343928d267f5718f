"""How long a training run takes to start: tracing the training step and its first call
(TensorFlow's graph optimisation), with our Adam (``trainer.Adam``: one fused
``ResourceApplyAdam`` per variable) against Keras's Adam (about forty ops per variable).

  python benchmarks/train_startup.py [--config configs/quickstart_pixelcnn_pp.yml]
                                     [--set KEY=VALUE ...] [--batch-size 8] [--rounds 2]

Each measurement runs in a fresh process (a process traces a function once), the two
optimizers alternating for ``--rounds`` rounds; it builds the config's Trainer for its
data's image shape, then times ``train_step.get_concrete_function()`` (tracing) and the
first call on a random batch (graph optimisation and the step itself), and counts the
step's graph nodes. Prints each side's median and ours / Keras's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def measure(config: str, overrides, batch: int, optimizer: str) -> dict:
    """Seconds to trace and to run the first training step, in this process."""
    from pixelcnn_tf import cli
    cli.import_tensorflow_quietly()
    import numpy as np
    import tensorflow as tf
    from pixelcnn_tf import trainer as trainer_lib
    from pixelcnn_tf.config import load_config
    from pixelcnn_tf.data import load_split
    if optimizer == "keras":  # the Trainer builds whatever trainer.Adam names
        trainer_lib.Adam = tf.keras.optimizers.Adam
    cfg = load_config(config, list(overrides))
    shape = load_split(cfg.data, "train").image_shape  # the config's data, before timing
    trainer = trainer_lib.Trainer(cfg, tempfile.mkdtemp(), shape)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 2 ** cfg.data.bits, (batch, *shape)).astype(np.uint8))
    labels = tf.zeros([batch], tf.int32)
    start = time.perf_counter()
    graph = trainer.train_step.get_concrete_function().graph
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    float(trainer.train_step(images, labels)[0])
    first_s = time.perf_counter() - start
    nodes = len(graph.get_operations()) + sum(
        len(f.graph.get_operations()) for f in graph._functions.values()
        if hasattr(f, "graph"))
    return {"trace_s": trace_s, "first_s": first_s, "nodes": nodes,
            "variables": len(trainer.model.trainable_variables)}


def measure_in_child(config: str, overrides, batch: int, optimizer: str) -> dict:
    from equal_time import run_child  # (benchmarks/ is on the path when run as a script)
    return run_child(os.path.abspath(__file__),
                     ["--child", optimizer, "--config", config, "--batch-size", str(batch),
                      *(a for o in overrides for a in ("--set", o))], f"{optimizer}'s side")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join("configs",
                                                         "quickstart_pixelcnn_pp.yml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="a config override (repeatable)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=("ours", "keras"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.config, args.overrides, args.batch_size, args.child)))
        return
    runs = {"keras": [], "ours": []}
    for _ in range(args.rounds):
        for side in runs:
            runs[side].append(measure_in_child(args.config, args.overrides,
                                               args.batch_size, side))
    setting = " ".join([args.config, *(f"--set {o}" for o in args.overrides)])
    print(f"{setting}, batch {args.batch_size}: "
          f"{runs['ours'][0]['variables']} trainable variables; medians of "
          f"{args.rounds} fresh processes each")
    totals = {}
    for side, name in (("keras", "Keras's Adam"), ("ours", "trainer.Adam (fused)")):
        trace = statistics.median(r["trace_s"] for r in runs[side])
        first = statistics.median(r["first_s"] for r in runs[side])
        totals[side] = trace + first
        print(f"  {name:22s} trace {trace:7.2f} s  first step {first:7.2f} s  "
              f"start-up {trace + first:7.2f} s  {runs[side][0]['nodes']:>7,} graph nodes  "
              f"{totals[side] / totals['keras']:.2f}x Keras's")


if __name__ == "__main__":
    main()
