"""Training throughput (images/s) on 32x32x3 batches, for config.yml's CIFAR-10 PixelCNN
or any config (--config).

  python benchmarks/train_throughput.py [--rounds 5] [--steps 3] [--batch-size 16] [--float16]
  python benchmarks/train_throughput.py --config configs/cifar10_pixelcnn_pp.yml --batch-size 64

Measured in one run, on the same random batch:
  reference  (model.type pixelcnn only) a straightforward implementation written here the
             way tutorials do it: Keras layers whose call() multiplies kernel * mask,
             float32, Keras Adam and a plain @tf.function train step;
  ours fp32  pixelcnn_tf's Trainer.train_step in float32;
  ours bf16  the same with train.mixed_precision=bfloat16 (float16 too with --float16);
  compiled   with --jit-compile, each of those again with train.jit_compile=true (the
             whole step compiled by XLA); the plain ones with train.jit_compile=false.
Prints the median images/s of each over interleaved rounds and the ratios to the baseline:
the reference where there is one, else ours in float32.
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
from tensorflow import keras  # noqa: E402

from pixelcnn_tf.config import load_config  # noqa: E402
from pixelcnn_tf.devices import cpu_description  # noqa: E402
from pixelcnn_tf.nn.masks import get_mask  # noqa: E402
from pixelcnn_tf.models import count_parameters  # noqa: E402
from pixelcnn_tf.trainer import Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RefMaskedConv(keras.layers.Layer):
    """Tutorial-style masked convolution: kernel * mask in call()."""

    def __init__(self, filters, kernel_size, mask_type, n_colors=3):
        super().__init__()
        self.filters, self.kernel_size = filters, kernel_size
        self.mask_type, self.n_colors = mask_type, n_colors

    def build(self, input_shape):
        cin = int(input_shape[-1])
        k = self.kernel_size
        self.kernel = self.add_weight(shape=(k, k, cin, self.filters),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros")
        self.mask = get_mask(k, cin, self.filters, self.mask_type, self.n_colors)  # numpy

    def call(self, x):
        return tf.nn.conv2d(x, self.kernel * self.mask, 1, "SAME") + self.bias


class RefResidualBlock(keras.layers.Layer):
    def __init__(self, h):
        super().__init__()
        self.a = RefMaskedConv(h, 1, "B")
        self.b = RefMaskedConv(h, 3, "B")
        self.c = RefMaskedConv(2 * h, 1, "B")

    def call(self, x):
        y = self.a(tf.nn.relu(x))
        y = self.b(tf.nn.relu(y))
        return x + self.c(tf.nn.relu(y))


def reference_model(cfg):
    m = cfg.model
    inputs = keras.Input((32, 32, 3))
    x = RefMaskedConv(2 * m.hidden_dim, m.input_kernel_size, "A")(inputs)
    for _ in range(m.n_layers):
        x = RefResidualBlock(m.hidden_dim)(x)
    x = RefMaskedConv(m.out_dim, 1, "B")(keras.layers.ReLU()(x))
    x = RefMaskedConv(3 * 256, 1, "B")(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Reshape((32, 32, 3, 256))(x))


REFERENCE = "reference (Keras, kernel*mask, fp32)"


def reference_step(cfg):
    """The tutorial-style model's train step (a tf.function)."""
    model = reference_model(cfg)
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(tf.cast(x, tf.float32) / 255.0)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.cast(x, tf.int32), logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss
    return step


def wait(out) -> None:
    float(out[0] if isinstance(out, tuple) else out)  # blocks until the step has run


def time_interleaved(steps: dict, args, batch: int, rounds: int, steps_per_round: int,
                     warmup: int = 3) -> dict:
    """Median images/s of each step function over ``rounds`` rounds; every round times each
    function in turn, so a slow spell of a shared machine hits all of them alike."""
    for step in steps.values():
        for _ in range(warmup):
            wait(step(*args))
    rates = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(steps_per_round):
                out = step(*args)
            wait(out)
            rates[name].append(steps_per_round * batch / (time.perf_counter() - start))
    return {name: float(np.median(r)) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds; each times every implementation in turn")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--float16", action="store_true", help="also time float16")
    parser.add_argument("--jit-compile", action="store_true",
                        help="also time every precision with the XLA-compiled step")
    parser.add_argument("--precisions", default="none,bfloat16",
                        help="train.mixed_precision values to time (float16: --float16)")
    parser.add_argument("--config", default=os.path.join(ROOT, "config.yml"),
                        help="the model to time (default: config.yml's CIFAR-10 PixelCNN)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as train.py's --set (repeatable)")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (args.batch_size, 32, 32, 3)).astype(np.uint8))
    labels = tf.zeros([args.batch_size], tf.int32)
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    print(f"devices: {devices}; {cpu_description()}")
    print(f"{cfg.model.type} ({os.path.relpath(args.config, ROOT)}"
          + "".join(f" --set {o}" for o in args.set) + f"), 32x32x3, batch {args.batch_size}, "
          f"median of {args.rounds} rounds of {args.steps} steps after 3 warm-up steps")

    steps = {}
    if cfg.model.type == "pixelcnn":
        steps[REFERENCE] = reference_step(cfg)
    precisions = args.precisions.split(",") + (["float16"] if args.float16 else [])
    compiled = ("false", "true") if args.jit_compile else ("false",)
    with tempfile.TemporaryDirectory() as workdir:
        for precision in precisions:
            for jit in compiled:
                run_cfg = load_config(args.config, [*args.set, f"train.jit_compile={jit}",
                                                    f"train.mixed_precision={precision}"])
                trainer = Trainer(run_cfg, os.path.join(workdir, precision + jit),
                                  (32, 32, 3))
                name = (f"ours ({'fp32' if precision == 'none' else precision}"
                        f"{', compiled' if jit == 'true' else ''})")
                steps[name] = trainer.train_step
        print(f"parameters: {count_parameters(trainer.model):,}")  # (every one's model)
        results = time_interleaved(steps, (images, labels), args.batch_size, args.rounds,
                                   args.steps)
    base_name = REFERENCE if REFERENCE in results else next(iter(results))
    base = results[base_name]
    label = "the reference" if base_name == REFERENCE else base_name
    for name, ips in results.items():
        print(f"  {name:40s} {ips:8.2f} images/s   {ips / base:5.2f}x {label}")


if __name__ == "__main__":
    main()
