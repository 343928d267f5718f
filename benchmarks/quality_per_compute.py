"""Held-out bits/dim per wall-clock budget: our pixelcnn_pp against TensorFlow
Probability's PixelCNN (``tfp.distributions.PixelCNN``), trained on the same images for
the same time in one run.

  pip install -r benchmarks/requirements.txt   # tensorflow-probability, tf-keras
  python benchmarks/quality_per_compute.py [--budget-s 600] [--datasets mnist5k,cifar]
      [--sides ours,tfp] [--ours-set KEY=VALUE ...] [--tfp-set ARG=VALUE ...]

Data: mnist5k (28x28x1, 4,500 training digits, the 500 held out by data.validation_size
scored) and ``../shared/data/cifar10-4660.npz`` (32x32x3 real CIFAR-10 training images:
4,160 trained on, 500 held out and scored). Each side trains in its own process (TFP
needs ``TF_USE_LEGACY_KERAS=1``, which would change ``tf.keras`` under our trainer) for
``--budget-s`` seconds of training steps, then is scored on the held-out images (exact
bits/dim: summed NLL / (N·H·W·C·ln 2)) and times the sampling of ``--n-samples`` images:
ours with ``method="fast"``, TFP with ``PixelCNN.sample``. It prints both, the
difference and the sampling speed-up. The two sides run one after the other on the same
machine; name the CPU next to the figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

# benchmarks/ (this script's folder): the shared data settings and train-and-score loop
from equal_time import CIFAR, HELD_OUT, ROOT, run_child, train_for_budget

# Our side: the quickstart PixelCNN++ with these changes per dataset (mnist5k: the best
# of the README's MNIST tuning tables).
OURS = {
    "mnist5k": ["data.dataset=mnist5k", "model.output=categorical", "model.weight_norm=true",
                "model.n_layers=2", "model.hidden_dim=12", "data.batch_size=8",
                "train.learning_rate=0.002", "train.lr_decay_rate=0.99995",
                "train.ema_decay=0.9997"],
    "cifar": ["data.dataset=npz", "data.batch_size=16", "model.num_mixtures=10",
              f"data.path={CIFAR}"],
}
# TFP's side: tfd.PixelCNN arguments (the reference setting of the issue: 32 filters).
TFP = dict(num_resnet=1, num_hierarchies=3, num_filters=32, num_logistic_mix=5,
           dropout_p=0.3)
TFP_BATCH = 16


def load(dataset: str):
    """(train images, held-out images), uint8 [N, H, W, C] numpy arrays, through our data
    module (the same deterministic split for both sides)."""
    sys.path.insert(0, ROOT)
    from pixelcnn_tf import data as data_lib
    from pixelcnn_tf.config import load_config
    data_settings = [o for o in OURS[dataset] if o.startswith("data.")]  # not our model's
    cfg = load_config(None, data_settings + [f"data.validation_size={HELD_OUT}"])

    def arrays(split):
        import numpy as np
        images = [x for x, _ in data_lib.load_split(cfg.data, split).dataset.as_numpy_iterator()]
        return np.stack(images)

    return arrays("train"), arrays("validation")


def run_ours(dataset: str, budget: float, n_samples: int, extra=()) -> dict:
    overrides = OURS[dataset] + list(extra)
    result = train_for_budget(os.path.join(ROOT, "configs", "quickstart_pixelcnn_pp.yml"),
                              overrides, budget, n_samples)
    return {**result, "setting": "configs/quickstart_pixelcnn_pp.yml, "
                                 + " ".join(overrides[1:])}


def run_tfp(dataset: str, budget: float, n_samples: int, extra=()) -> dict:
    import numpy as np
    import tensorflow as tf
    import tensorflow_probability as tfp
    train, held_out = load(dataset)
    shape = train.shape[1:]
    tf.random.set_seed(0)
    settings = {**TFP, **{k: type(TFP[k])(v) for k, v in (e.split("=") for e in extra)}}
    dist = tfp.distributions.PixelCNN(image_shape=shape, **settings)
    optimizer = tf.keras.optimizers.Adam(1e-3)
    dims = float(np.prod(shape))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x, training=True)) / (dims * math.log(2))
        variables = dist.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rng = np.random.default_rng(0)

    def batch():
        return tf.constant(train[rng.integers(0, len(train), TFP_BATCH)].astype(np.float32))

    step(batch())  # trace (and build the network) outside the budget
    steps, start = 1, time.perf_counter()
    while time.perf_counter() - start < budget:
        step(batch())
        steps += 1
    log_prob = tf.function(lambda x: dist.log_prob(x))
    nats = sum(-float(tf.reduce_sum(log_prob(tf.constant(held_out[i:i + 100], tf.float32))))
               for i in range(0, len(held_out), 100))
    bits = nats / (len(held_out) * dims * math.log(2))
    # TFP samples with one full network pass per pixel. Timed as ours: after a first
    # call that traces (reported too).
    # (TFP's PixelCNN takes a Python int seed: the second call repeats the first draw.)
    sample = tf.function(lambda: dist.sample(n_samples, seed=1))
    t = time.perf_counter()
    sample()
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    sample()
    sample_s = time.perf_counter() - t
    params = int(sum(np.prod(v.shape) for v in dist.trainable_variables))
    return {"bits_per_dim": bits, "steps": steps, "batch": TFP_BATCH, "parameters": params,
            "sample_s": sample_s, "first_sample_s": first_s,
            "setting": "tfd.PixelCNN(" + ", ".join(
                f"{k}={v}" for k, v in settings.items()) + ")"}


def child(side: str, dataset: str, budget: float, n_samples: int, extra=()) -> dict:
    """Runs one side in a fresh process; returns its JSON result."""
    # TFP needs tf-keras under tf.keras, which would change tf.keras under our trainer.
    env = {"TF_USE_LEGACY_KERAS": "1"} if side == "tfp" else {}
    return run_child(os.path.abspath(__file__),
                     ["--child", side, "--datasets", dataset, "--budget-s", str(budget),
                      "--n-samples", str(n_samples), *(f"--{side}-set={e}" for e in extra)],
                     f"{side} on {dataset}", env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=600.0,
                        help="training seconds per side and dataset")
    parser.add_argument("--datasets", default="mnist5k,cifar")
    parser.add_argument("--n-samples", type=int, default=16,
                        help="images sampled (and timed) per side; 0: none (ours only)")
    parser.add_argument("--sides", default="ours,tfp",
                        help="ours, tfp or both (tfp needs benchmarks/requirements.txt)")
    parser.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for our side, e.g. train.learning_rate=0.001")
    parser.add_argument("--tfp-set", action="append", default=[], metavar="ARG=VALUE",
                        help="a tfd.PixelCNN argument for TFP's side, e.g. num_filters=64")
    parser.add_argument("--child", choices=("ours", "tfp"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    extra = {"ours": args.ours_set, "tfp": args.tfp_set}
    if args.child:
        run = run_ours if args.child == "ours" else run_tfp
        print(json.dumps(run(args.datasets, args.budget_s, args.n_samples, extra[args.child])))
        return
    sides = args.sides.split(",")
    for dataset in args.datasets.split(","):
        results = {side: child(side, dataset, args.budget_s, args.n_samples, extra[side])
                   for side in sides}
        print(f"\n{dataset}: {args.budget_s:.0f} s of training each, held-out bits/dim "
              f"over {HELD_OUT} images, {args.n_samples} samples timed")
        for side, r in results.items():
            print(f"  {side:5s} {r['bits_per_dim']:.4f} bits/dim  {r['parameters']:>10,} "
                  f"parameters  {r['steps']:>6,} steps of batch {r['batch']}  sampling "
                  f"{r['sample_s']:8.2f} s (first call, tracing included: "
                  f"{r.get('first_sample_s', float('nan')):.2f} s)   [{r['setting']}]")
        if {"ours", "tfp"} <= set(results):
            ours, base = results["ours"], results["tfp"]
            print(f"  difference ours - tfp: {ours['bits_per_dim'] - base['bits_per_dim']:+.4f}"
                  f" bits/dim; sampling speed-up ours / tfp: "
                  f"{base['sample_s'] / ours['sample_s']:.1f}x")


if __name__ == "__main__":
    main()
