"""The receptive field of the last pixel of a 32x32 image, with and without dilation.

  python benchmarks/receptive_field.py [--out receptive_field.png] [--types pixelcnn,gated_pixelcnn]
      [--dilations 1,2,4,8,16]

For each type it builds an untrained model of the quickstart size on 32x32x3 images (the
quickstart config's layers and kernels; widths a multiple of 3) once with every rate 1 and
once with ``--dilations``, takes the gradient of the output at the last pixel (31, 31)
(red channel, a random projection of its 256 logits) with respect to every input pixel,
and counts the pixels with a non-zero gradient: the receptive field, measured through the
real network (not computed from the kernel sizes). Prints the counts against the 1,023
pixels before (31, 31) and the ratio dilated / plain, and draws both fields side by side.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pixelcnn_tf import cli  # noqa: E402

SIZE = 32


def field(layer_type: str, dilations) -> "np.ndarray":
    """bool [32, 32]: the input pixels the last pixel's output depends on."""
    import numpy as np
    import tensorflow as tf
    from pixelcnn_tf.config import load_config
    from pixelcnn_tf.models import build_model
    config = "quickstart.yml" if layer_type == "pixelcnn" else f"quickstart_{layer_type}.yml"
    cfg = load_config(os.path.join(ROOT, "configs", config),
                      ["model.hidden_dim=18", "model.out_dim=66",
                       f"model.dilations={list(dilations)}"])
    tf.random.set_seed(0)
    model = build_model(cfg.model, (SIZE, SIZE, 3))
    gen = np.random.default_rng(0)
    x = tf.constant(gen.uniform(size=(2, SIZE, SIZE, 3)).astype(np.float32))
    proj = tf.constant(gen.normal(size=256).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(model(x)[:, SIZE - 1, SIZE - 1, 0, :] * proj)
    return np.abs(tape.gradient(y, x).numpy()).sum(axis=(0, 3)) != 0, cfg.model.n_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default="pixelcnn,gated_pixelcnn")
    parser.add_argument("--dilations", default="1,2,4,8,16",
                        help="one rate per pixel layer (the quickstart configs have 5)")
    parser.add_argument("--out", default="receptive_field.png", help="the figure (PNG)")
    args = parser.parse_args()
    cli.import_tensorflow_quietly()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [int(r) for r in args.dilations.split(",")]
    types = args.types.split(",")
    earlier = SIZE * SIZE - 1
    fig, axes = plt.subplots(len(types), 2, figsize=(6, 3 * len(types)), squeeze=False)
    print(f"receptive field of pixel ({SIZE - 1}, {SIZE - 1}) of a {SIZE}x{SIZE}x3 image "
          f"({earlier:,} earlier pixels); dilations {rates}")
    for row, layer_type in enumerate(types):
        plain, n_layers = field(layer_type, [1] * len(rates))
        dilated, _ = field(layer_type, rates)
        if n_layers != len(rates):
            raise SystemExit(f"--dilations needs {n_layers} rates for {layer_type}")
        print(f"  {layer_type:15s} plain {plain.sum():5d} pixels ({plain.sum() / earlier:6.1%})"
              f"   dilated {dilated.sum():5d} ({dilated.sum() / earlier:6.1%})   ratio "
              f"{dilated.sum() / plain.sum():.2f}x")
        for col, (name, dep) in enumerate((("rates 1", plain), (f"rates {rates}", dilated))):
            ax = axes[row, col]
            ax.imshow(dep, cmap="Greys", vmin=0, vmax=1)
            ax.plot([SIZE - 1], [SIZE - 1], "rs", markersize=3)
            ax.set_title(f"{layer_type}, {name}\n{dep.sum()} of {earlier} pixels", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
