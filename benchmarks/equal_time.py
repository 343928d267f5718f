"""Held-out bits/dim of several model settings after the same training time, in one run.

  python benchmarks/equal_time.py --budget-s 300 --dataset mnist5k \
      --run plain=configs/quickstart_gated_pixelcnn.yml \
      --run dilated=configs/quickstart_gated_pixelcnn.yml \
      --set dilated:model.dilations=[1,2,4,8,16]

Each ``--run NAME=CONFIG`` trains that config (plus the ``--set NAME:KEY=VALUE``
overrides for it) for ``--budget-s`` seconds of optimizer steps on the same training
images, in its own process, one run after the other; then scores the held-out images
(exact bits/dim: summed NLL / (N·H·W·C·ln 2)) and times the fast sampler on
``--n-samples`` images (the median of three calls after a tracing call). The first run is
the baseline of the ratio column. Data: mnist5k (28x28x1; 4,500 trained on, 500 held out)
or ``cifar`` (``../shared/data/cifar10-4660.npz``: 4,160 real CIFAR-10 training images
trained on, 500 held out). Name the CPU next to the figures.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10-4660.npz")
HELD_OUT = 500
DATASETS = {
    "mnist5k": ["data.dataset=mnist5k"],
    "cifar": ["data.dataset=npz", f"data.path={CIFAR}"],
}


def train_for_budget(config_path: str, overrides, budget: float, n_samples: int,
                     samples_png: str = "") -> dict:
    """Trains ``config_path`` + ``overrides`` for ``budget`` seconds of steps (the first,
    tracing step outside the budget), then scores the held-out split and times the fast
    sampler (its last samples drawn as a grid into ``samples_png`` when given; with
    ``n_samples`` 0 nothing is sampled and the sampling figures are nan). Returns the
    figures as a dict."""
    sys.path.insert(0, ROOT)
    from pixelcnn_tf import cli
    cli.import_tensorflow_quietly()
    from pixelcnn_tf import data as data_lib
    from pixelcnn_tf import generate_images
    from pixelcnn_tf.config import load_config
    from pixelcnn_tf.models import count_parameters
    from pixelcnn_tf.trainer import Trainer
    cfg = load_config(config_path, list(overrides) + [f"data.validation_size={HELD_OUT}"])
    train = data_lib.load_split(cfg.data, "train")
    held_out = data_lib.load_split(cfg.data, "validation")
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(cfg, workdir, train.image_shape)
        trainer.initialize_from_data(train)  # model.weight_norm only; outside the budget
        batches = iter(data_lib.train_pipeline(train, cfg.data.batch_size,
                                               cfg.data.shuffle_buffer, cfg.train.seed))
        trainer.train_step(*next(batches))  # trace outside the budget
        steps, start = 1, time.perf_counter()
        while time.perf_counter() - start < budget:
            trainer.train_step(*next(batches))
            steps += 1
        # Stop the input pipeline: its prefetching threads would compete with the scoring
        # and the timed sampling for the CPU.
        del batches
        gc.collect()
        with trainer.inference_weights():  # the moving averages with train.ema_decay > 0
            result = trainer.evaluate(data_lib.eval_pipeline(held_out, 100))
            first_s, repeats = float("nan"), [float("nan")] * 3  # n_samples 0: not sampled
            if n_samples:
                h, w, c = train.image_shape
                t = time.perf_counter()
                generate_images(trainer.model, (h, w), n_samples, c, seed=0,
                                method="fast")  # trace
                first_s = time.perf_counter() - t
                for k, seed in enumerate((1, 2, 3)):  # the median of three calls
                    t = time.perf_counter()
                    samples = generate_images(trainer.model, (h, w), n_samples, c, seed=seed,
                                              method="fast")
                    repeats[k] = time.perf_counter() - t
                print(f"sampling {n_samples} images took "
                      f"{', '.join(f'{r:.3f}' for r in repeats)} s", file=sys.stderr)
        if samples_png and n_samples:
            from pixelcnn_tf.viz import save_grid
            save_grid(samples, samples_png, title=f"{os.path.basename(samples_png)[:-4]}: "
                      f"{result.bits_per_dim:.4f} bits/dim")
    return {"bits_per_dim": result.bits_per_dim, "steps": steps,
            "batch": cfg.data.batch_size, "parameters": count_parameters(trainer.model),
            "sample_s": sorted(repeats)[1], "first_sample_s": first_s}


def run_child(script: str, args: list, what: str, env=None) -> dict:
    """Runs ``script`` (a benchmark's own path) with ``args`` in a fresh process and
    returns the JSON object it prints last; stops with its stderr when it fails."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    out = subprocess.run([sys.executable, script, *args], env=env, capture_output=True,
                         text=True)
    if out.returncode < 0:  # e.g. SIGKILL from the kernel's out-of-memory killer
        raise SystemExit(f"{what} was killed by signal {-out.returncode} (9: most likely "
                         f"out of memory; see dmesg)\n{out.stderr[-3000:]}")
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(args: list) -> dict:
    """Runs this script's ``--child`` mode in a fresh process; returns its JSON result."""
    return run_child(os.path.abspath(__file__), ["--child", *args], f"run {args}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="training seconds per run")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist5k")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=CONFIG",
                        help="a run: its name and config file (repeat; the first is the "
                             "baseline)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME:KEY=VALUE",
                        help="a config override for the run NAME, e.g. "
                             "dilated:model.dilations=[1,2,4,8,16]")
    parser.add_argument("--n-samples", type=int, default=16,
                        help="images sampled (and timed) per run; 0: none")
    parser.add_argument("--samples-dir", default="",
                        help="save each run's samples as DIR/<dataset>_<name>.png")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--samples-png", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_for_budget(args.config, args.set, args.budget_s,
                                          args.n_samples, args.samples_png)))
        return
    runs = [r.split("=", 1) for r in args.run]
    if not runs or any(len(r) != 2 for r in runs):
        parser.error("give at least one --run NAME=CONFIG")
    names = {name for name, _ in runs}
    overrides = {name: list(DATASETS[args.dataset]) for name in names}
    for item in args.set:
        name, _, override = item.partition(":")
        if name not in names or not override:
            parser.error(f"--set {item}: expected NAME:KEY=VALUE with NAME one of "
                         f"{', '.join(sorted(names))}")
        overrides[name].append(override)
    results = []
    if args.samples_dir:
        os.makedirs(args.samples_dir, exist_ok=True)
    for name, config in runs:
        png = (os.path.join(args.samples_dir, f"{args.dataset}_{name}.png")
               if args.samples_dir else "")
        result = child(["--config", config, "--budget-s", str(args.budget_s),
                        "--n-samples", str(args.n_samples), f"--samples-png={png}",
                        *(f"--set={o}" for o in overrides[name])])
        results.append((name, config, result))
        print(f"{name}: {result['bits_per_dim']:.4f} bits/dim after {result['steps']} steps",
              file=sys.stderr)
    base = results[0][2]
    print(f"\n{args.dataset}: {args.budget_s:.0f} s of training each, held-out bits/dim over "
          f"{HELD_OUT} images, {args.n_samples} samples timed (fast sampler)")
    print(f"  {'run':12s} {'bits/dim':>9s} {'- base':>8s} {'parameters':>11s} {'steps':>7s} "
          f"{'batch':>5s} {'sampling s':>10s} {'/ base':>7s}  setting")
    for name, config, r in results:
        setting = " ".join([config] + overrides[name][len(DATASETS[args.dataset]):])
        print(f"  {name:12s} {r['bits_per_dim']:9.4f} {r['bits_per_dim'] - base['bits_per_dim']:+8.4f}"
              f" {r['parameters']:>11,} {r['steps']:>7,} {r['batch']:>5d} {r['sample_s']:10.3f}"
              f" {r['sample_s'] / base['sample_s']:6.2f}x  {setting}")


if __name__ == "__main__":
    main()
