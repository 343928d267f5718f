"""The Keras PixelCNN example against our models on the same binarized digits, same time.

  python benchmarks/binarized_mnist.py [--budget-s 600] [--ours configs/mnist_binarized.yml]
      [--sides keras,ours,ours-keras-size]

The task of the Keras example (keras.io/examples/generative/pixelcnn, ADMoreau 2020): MNIST
binarized at 33% of the intensity range (a pixel is 1 where its value >= 0.33·256), a
sigmoid output trained with binary cross-entropy. Both sides train on the same 4,500
binarized digits (mnist5k's training split, ``data.bits=1 data.threshold=0.33``) for
``--budget-s`` seconds of optimizer steps, one after the other, each in its own process,
and are scored on the same 500 held-out binarized digits: the NLL in nats per image
(the sum over the 784 pixels; the figure binary-image papers quote). Then each draws 16
digits: the example's sampler as it is written (a Python loop over the 784 pixels, a full
``predict`` per pixel), ours with the fast cached sampler (the median of three calls after a
tracing call; the tracing time is printed too).

The "keras" side is our own Keras code of the example's model: a 7x7 mask-A convolution of
128 filters with ReLU; 5 residual blocks (1x1 conv of 128 → ReLU → 3x3 mask-B of 64 → ReLU
→ 1x1 conv of 128 → ReLU, added to the block's input); two 1x1 mask-B convolutions of 128
with ReLU; a 1x1 convolution with a sigmoid; Adam at 5e-4, batch 128. Masks multiply the
kernels inside the layer's call, as in the example. Name the CPU beside the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
BINARIZE = ["data.dataset=mnist5k", "data.bits=1", "data.threshold=0.33"]
SIDES = {  # name → config (None: the Keras example)
    "keras": None,
    "ours-keras-size": "configs/mnist_binarized_keras.yml",
    "ours": "configs/mnist_binarized.yml",
}


def binarized_digits():
    """(train [4500, 28, 28, 1], held-out [500, 28, 28, 1]) uint8 0/1, exactly what our
    side trains on and is scored on."""
    sys.path.insert(0, ROOT)
    from pixelcnn_tf import data as data_lib
    from pixelcnn_tf.config import load_config
    cfg = load_config(None, BINARIZE + ["data.validation_size=500"]).data

    def arrays(split):
        return np.stack([x for x, _ in data_lib.load_split(cfg, split).dataset.as_numpy_iterator()])

    return arrays("train"), arrays("validation")


def keras_example(budget: float, n_samples: int) -> dict:
    """Trains our Keras code of the example for ``budget`` seconds, scores the held-out
    digits, and times the example's sampling loop."""
    import tensorflow as tf
    from tensorflow import keras

    class PixelConvLayer(keras.layers.Layer):
        """A Conv2D whose kernel is multiplied by a mask A or B at every call."""

        def __init__(self, mask_type, **kwargs):
            super().__init__()
            self.mask_type = mask_type
            self.conv = keras.layers.Conv2D(**kwargs)

        def build(self, input_shape):
            self.conv.build(input_shape)
            kh, kw = self.conv.kernel.shape[:2]
            mask = np.zeros(self.conv.kernel.shape, np.float32)
            mask[:kh // 2, ...] = 1.0
            mask[kh // 2, :kw // 2, ...] = 1.0
            if self.mask_type == "B":
                mask[kh // 2, kw // 2, ...] = 1.0
            self.mask = mask  # numpy: a constant of whichever graph calls the layer

        def call(self, inputs):
            kernel = self.conv.kernel * self.mask
            y = tf.nn.conv2d(inputs, kernel, 1, self.conv.padding.upper())
            return self.conv.activation(y + self.conv.bias)

    class ResidualBlock(keras.layers.Layer):
        def __init__(self, filters):
            super().__init__()
            self.conv1 = keras.layers.Conv2D(filters, 1, activation="relu")
            self.pixel_conv = PixelConvLayer("B", filters=filters // 2, kernel_size=3,
                                             activation="relu", padding="same")
            self.conv2 = keras.layers.Conv2D(filters, 1, activation="relu")

        def call(self, inputs):
            return inputs + self.conv2(self.pixel_conv(self.conv1(inputs)))

    train, held_out = binarized_digits()
    x_train, x_held = train.astype(np.float32), held_out.astype(np.float32)
    inputs = keras.Input(shape=(28, 28, 1))
    x = PixelConvLayer("A", filters=128, kernel_size=7, activation="relu",
                       padding="same")(inputs)
    for _ in range(5):
        x = ResidualBlock(128)(x)
    for _ in range(2):
        x = PixelConvLayer("B", filters=128, kernel_size=1, activation="relu",
                           padding="valid")(x)
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", padding="valid")(x)
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.Adam(0.0005), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x_train))
    model.train_on_batch(x_train[order[:128]], x_train[order[:128]])  # trace, outside
    steps, start, at = 1, time.perf_counter(), 128
    while time.perf_counter() - start < budget:
        if at + 128 > len(order):
            order, at = rng.permutation(len(x_train)), 0
        batch = x_train[order[at:at + 128]]
        model.train_on_batch(batch, batch)
        steps, at = steps + 1, at + 128
    p = model.predict(x_held, batch_size=100, verbose=0).astype(np.float64)
    p = np.clip(p, 1e-7, 1 - 1e-7)  # as Keras's binary cross-entropy clips
    nats = -(x_held * np.log(p) + (1 - x_held) * np.log(1 - p)).sum(axis=(1, 2, 3))
    # The example's sampler, as written: a full predict per pixel.
    pixels = np.zeros((n_samples, 28, 28, 1), np.float32)
    t = time.perf_counter()
    for row in range(28):
        for col in range(28):
            probs = model.predict(pixels, verbose=0)[:, row, col, 0]
            pixels[:, row, col, 0] = np.ceil(probs - rng.uniform(size=probs.shape))
    sample_s = time.perf_counter() - t
    return {"nats_per_image": float(nats.mean()), "steps": steps, "batch": 128,
            "parameters": int(model.count_params()), "sample_s": sample_s,
            "first_sample_s": sample_s}


def ours(config: str, budget: float, n_samples: int) -> dict:
    from equal_time import train_for_budget
    result = train_for_budget(os.path.join(ROOT, config), BINARIZE, budget, n_samples)
    result["nats_per_image"] = result["bits_per_dim"] * 784 * np.log(2.0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=600.0,
                        help="training seconds per side")
    parser.add_argument("--sides", default="keras,ours",
                        help=f"comma-separated, the first is the baseline: {', '.join(SIDES)}")
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config = SIDES[args.child]
        result = (keras_example(args.budget_s, args.n_samples) if config is None
                  else ours(config, args.budget_s, args.n_samples))
        print(json.dumps(result))
        return
    from equal_time import run_child
    sides = args.sides.split(",")
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        parser.error(f"unknown side {unknown[0]!r}; known: {', '.join(SIDES)}")
    results = []
    for side in sides:
        results.append((side, run_child(os.path.abspath(__file__),
                                        ["--child", side, "--budget-s", str(args.budget_s),
                                         "--n-samples", str(args.n_samples)], side)))
        print(f"{side}: {results[-1][1]['nats_per_image']:.2f} nats/image", file=sys.stderr)
    base = results[0][1]
    print(f"\nbinarized MNIST (value >= 0.33·256), {args.budget_s:.0f} s of training each, "
          f"held-out NLL over 500 digits, {args.n_samples} digits sampled")
    print(f"  {'side':16s} {'nats/image':>10s} {'- base':>8s} {'parameters':>11s} "
          f"{'steps':>6s} {'batch':>5s} {'sampling s':>10s} {'speed-up':>9s}  setting")
    for side, r in results:
        print(f"  {side:16s} {r['nats_per_image']:10.2f} "
              f"{r['nats_per_image'] - base['nats_per_image']:+8.2f} {r['parameters']:>11,} "
              f"{r['steps']:>6,} {r['batch']:>5d} {r['sample_s']:10.3f} "
              f"{base['sample_s'] / r['sample_s']:8.1f}x  "
              f"{SIDES[side] or 'the Keras example (our Keras code)'}")


if __name__ == "__main__":
    main()
