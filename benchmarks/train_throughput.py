"""Training throughput (images/s) for the CIFAR-10 PixelCNN shape of config.yml.

  python benchmarks/train_throughput.py [--steps 10] [--batch-size 16]

Measured in one run, on the same random batch:
  reference  a straightforward implementation written here the way tutorials do it:
             Keras layers whose call() multiplies kernel * mask, float32, Keras Adam and a
             plain @tf.function train step;
  ours fp32  pixelcnn_tf's Trainer.train_step in float32;
  ours bf16  the same with train.mixed_precision=bfloat16 (float16 too with --float16).
Prints images/s for each and the ratios to the reference.
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
from pixelcnn_tf.masks import get_mask  # noqa: E402
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


def images_per_second(step, args, batch, steps: int, warmup: int = 3) -> float:
    def run_once():
        out = step(*args)
        return float(out[0] if isinstance(out, tuple) else out)  # waits for the step

    for _ in range(warmup):
        run_once()
    start = time.perf_counter()
    for _ in range(steps):
        run_once()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--float16", action="store_true", help="also time float16")
    args = parser.parse_args()
    cfg = load_config(os.path.join(ROOT, "config.yml"))
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (args.batch_size, 32, 32, 3)).astype(np.uint8))
    labels = tf.zeros([args.batch_size], tf.int32)
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    print(f"devices: {devices}; CIFAR-10 PixelCNN (config.yml), batch {args.batch_size}, "
          f"{args.steps} timed steps after 3 warm-up steps")

    model = reference_model(cfg)
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def reference_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(tf.cast(x, tf.float32) / 255.0)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.cast(x, tf.int32), logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    results = {"reference (Keras, kernel*mask, fp32)":
               images_per_second(reference_step, (images, labels), args.batch_size, args.steps)}
    precisions = ["none", "bfloat16"] + (["float16"] if args.float16 else [])
    for precision in precisions:
        run_cfg = load_config(os.path.join(ROOT, "config.yml"),
                              [f"train.mixed_precision={precision}"])
        with tempfile.TemporaryDirectory() as workdir:
            trainer = Trainer(run_cfg, workdir, (32, 32, 3))
            name = f"ours ({'fp32' if precision == 'none' else precision})"
            results[name] = images_per_second(trainer.train_step, (images, labels),
                                              args.batch_size, args.steps)
    base = next(iter(results.values()))
    for name, ips in results.items():
        print(f"  {name:40s} {ips:8.2f} images/s   {ips / base:5.2f}x the reference")


if __name__ == "__main__":
    main()
