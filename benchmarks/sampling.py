"""Naive vs fast (cached) sampling speed, and the FLOP floor.

  python benchmarks/sampling.py [--n-images 16] [--naive-steps 24] [--types pixelcnn,...]
  python benchmarks/sampling.py --types gated_pixelcnn,pixelsnail --step-cost-sizes 8,16,32,64
  python benchmarks/sampling.py --types pixelcnn_pp --sizes cifar10 --precisions none,bfloat16
  python benchmarks/sampling.py --types parallel_multiscale,gated_pixelcnn,pixelcnn_pp \
      --growth-sizes 32,64,128

For the quickstart model (28x28x1) and the CIFAR-10 model (32x32x3) of each type it
times, after a warm-up, the generation of --n-images images with method="fast" (every
step) and method="naive". A step is a sub-pixel (categorical output: H·W·C steps) or a
pixel (logistic mixture, pixelcnn_pp: H·W steps). The naive sampler costs the same full
forward pass for every step, so for the big model it is timed over its last --naive-steps
steps (completion from a start near the end) and scaled to all of them; the quickstart
model is timed over every step. It prints images/s for both, the speed-up, and (for the
PixelRNN container's types) the floor: the model's FLOPs per image (every masked
convolution evaluated once at every position, counting the kernel rows a position can
see) at the machine's measured matmul throughput. --sizes picks the quickstart or the
CIFAR-10 model alone, --precisions times each in other layer dtypes too (as
train.mixed_precision). --growth-sizes times the fast sampler of similar-size models
(``GROWTH``) at growing image sizes: how each type's time grows per doubling of the side
(the parallel multiscale type draws a group of pixels per pass, the others a pixel).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pixelcnn_tf import cli  # noqa: E402

cli.import_tensorflow_quietly()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pixelcnn_tf import build_model, generate_images, load_config  # noqa: E402
from pixelcnn_tf.nn.attention import CausalSelfAttention  # noqa: E402
from pixelcnn_tf.nn.layers import Conv2D, MaskedConv2D  # noqa: E402
from pixelcnn_tf.models import count_parameters  # noqa: E402
from pixelcnn_tf.devices import compute_dtype  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def matmul_flops_per_second(size: int = 2048, repeats: int = 10) -> float:
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    step = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    step(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        step(a, b).numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def flops_per_image(model) -> float:
    """Per position: 2·(kh//2+1)·kw·C_in·C_out for each masked conv (the rows it can
    see) and 2·kh·kw·C_in·C_out for each unmasked one (vertical stacks, state-to-state
    convolutions); over H·W positions; plus each causal attention's products with the
    earlier positions' keys and values."""
    h, w, _ = model.image_shape
    if not hasattr(model, "pixel_layers"):
        return 0.0  # counted for the PixelRNN container's layers only
    per_position = 0
    for conv in (m for m in model.submodules if isinstance(m, MaskedConv2D)):
        kh, kw = conv.kernel_size
        per_position += 2 * (kh // 2 + 1) * kw * conv.kernel.shape[2] * conv.features_out
    for conv in model.submodules:
        if isinstance(conv, Conv2D):
            kh, kw, c_in, c_out = conv.kernel.shape
            per_position += 2 * kh * kw * c_in * c_out
    # Causal attention: each query (position, colour group) meets the keys and values of
    # the positions before it (and its pixel's groups): 2·2·heads·dim per pair.
    attention = 0
    for att in (m for m in model.submodules if isinstance(m, CausalSelfAttention)):
        pairs = att.n_colors * (h * w) * (h * w + 1) // 2
        attention += 4 * att.num_heads * att.attention_dim * pairs
    return float(per_position * h * w + attention)


def timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up: tracing and first run
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench(name: str, config_path: str, overrides, image_shape, n: int, naive_steps: int,
          peak: float, precision: str = "none") -> None:
    tf.random.set_seed(0)
    model = build_model(load_config(config_path, overrides).model, image_shape,
                        compute_dtype(precision))
    h, w, c = image_shape
    groups = model.distribution.groups  # steps per pixel: C (categorical) or 1 (mixture)
    total = h * w * groups  # network evaluations of the naive sampler
    fast_s = timed(lambda: generate_images(model, (h, w), n, c, seed=0, method="fast"))
    if naive_steps >= total:
        naive_s = timed(lambda: generate_images(model, (h, w), n, c, seed=0, method="naive"))
        naive_note = f"all {total} steps"
    else:
        init = np.zeros([n, h, w, c], np.uint8)
        k0 = (total - naive_steps) * (c // groups)  # the first sub-pixel of the timed steps
        start = (k0 // (w * c), (k0 // c) % w, k0 % c)
        part = timed(lambda: generate_images(model, (h, w), n, c, seed=0, method="naive",
                                             init_images=init, start=start))
        naive_s = part * total / naive_steps
        naive_note = f"timed over {naive_steps} of {total} steps, scaled"
    flops = flops_per_image(model)
    print(f"\n{name}: images {image_shape}, {count_parameters(model):,} parameters, "
          + ("" if precision == "none" else f"{precision} layers, ")
          + (f"{flops / 1e9:.3f} GFLOP per image, " if flops else "") + f"{n} images")
    print(f"  naive: {naive_s:9.2f} s  {n / naive_s:9.3f} images/s  ({naive_note})")
    print(f"  fast:  {fast_s:9.2f} s  {n / fast_s:9.3f} images/s")
    print(f"  speed-up fast / naive: {naive_s / fast_s:.1f}x")
    if flops:
        floor_s = flops * n / peak
        print(f"  FLOP floor: {floor_s:.3f} s; fast is {fast_s / floor_s:.1f}x the floor")


def quickstart_config(layer_type: str) -> str:
    """configs/quickstart[_TYPE].yml (the pixelcnn one has no suffix)."""
    suffix = "" if layer_type == "pixelcnn" else f"_{layer_type}"
    return os.path.join(ROOT, "configs", f"quickstart{suffix}.yml")


def step_cost(types, sizes, n: int) -> None:
    """Fast-sampler time per step against the image size (HxH, grey) for each type's
    quickstart config: a constant for convolutional layers, growing with H·W for attention
    (each step reads the whole key/value cache)."""
    print(f"\nfast sampler, {n} images, ms per step (= per pixel) by image size:")
    print("  type          " + "".join(f"{f'{h}x{h}':>10}" for h in sizes)
          + f"   {sizes[-1]}² / {sizes[0]}²")
    for layer_type in types:
        cfg = load_config(quickstart_config(layer_type))
        per_step = []
        for h in sizes:
            tf.random.set_seed(0)
            model = build_model(cfg.model, (h, h, 1))
            seconds = timed(lambda: generate_images(model, (h, h), n, 1, seed=0,
                                                    method="fast"))
            per_step.append(1000 * seconds / (h * h))
        print(f"  {layer_type:<14}" + "".join(f"{t:10.3f}" for t in per_step)
              + f"   {per_step[-1] / per_step[0]:.1f}x")


# Quickstart-size models of similar parameter counts (about 0.5M) for the growth table;
# RGB images use every type's logistic mixture (PixelCNN++ has no RGB categorical).
GROWTH = {
    "parallel_multiscale": ("quickstart_parallel_multiscale.yml", ["model.base_size=4"]),
    "gated_pixelcnn": ("quickstart_gated_pixelcnn.yml", ["model.hidden_dim=36"]),
    "pixelcnn_pp": ("quickstart_pixelcnn_pp.yml", []),
}


def growth(types, sizes, channels_list, n: int) -> None:
    """The fast sampler's time for ``n`` HxH images at each size, per type, with its
    growth per doubling of the side and each type's time over the first type's."""
    for channels in channels_list:
        rows = {}
        for layer_type in types:
            config, overrides = GROWTH[layer_type]
            if channels == 3:
                overrides = overrides + ["model.output=logistic_mixture"]
            cfg = load_config(os.path.join(ROOT, "configs", config), overrides)
            times = []
            for h in sizes:
                tf.random.set_seed(0)
                model = build_model(cfg.model, (h, h, channels))
                params = count_parameters(model)
                times.append(timed(lambda: generate_images(model, (h, h), n, channels,
                                                           seed=0, method="fast")))
                print(f"  {layer_type} {h}x{h}x{channels}: {times[-1]:.3f} s", flush=True)
            rows[layer_type] = (params, times)
        print(f"\nfast sampler, {n} images of {channels} channel(s), seconds by size "
              f"(growth per doubling of the side; x: time over {types[0]}'s):")
        print("  type                  params" + "".join(f"{f'{h}x{h}':>22}" for h in sizes))
        first = rows[types[0]][1]
        for layer_type, (params, times) in rows.items():
            cells = [f"{times[0]:9.3f} s{'':6}{times[0] / first[0]:5.1f}x"]
            cells += [f"{t:9.3f} s ({t / p:4.1f}x) {t / f:5.1f}x"
                      for p, t, f in zip(times, times[1:], first[1:])]
            print(f"  {layer_type:<20}{params:>8,}" + "".join(f"{c:>22}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--naive-steps", type=int, default=24,
                        help="sub-pixels timed for the big model's naive sampler")
    parser.add_argument("--types", default="pixelcnn",
                        help="comma-separated model types: each is timed with "
                             "configs/quickstart[_TYPE].yml and its CIFAR-10 config "
                             "(config.yml or configs/cifar10_TYPE.yml)")
    parser.add_argument("--sizes", default="quickstart,cifar10",
                        help="which configs of each type: quickstart (28x28x1), cifar10 "
                             "(32x32x3), or both")
    parser.add_argument("--precisions", default="none",
                        help="comma-separated layer dtypes to time each model in, as "
                             "train.mixed_precision: none (float32), bfloat16, float16")
    parser.add_argument("--step-cost-sizes", default="",
                        help="comma-separated image sizes H (HxH grey): time the fast "
                             "sampler per step at each, for --types, and stop")
    parser.add_argument("--growth-sizes", default="",
                        help="comma-separated image sizes H: time the fast sampler of "
                             "--types at HxH (grey, then RGB) and stop, e.g. 32,64,128 "
                             "with --types parallel_multiscale,gated_pixelcnn,pixelcnn_pp")
    parser.add_argument("--channels", default="1,3",
                        help="colour counts for --growth-sizes")
    args = parser.parse_args()
    if args.growth_sizes:
        growth(args.types.split(","), [int(h) for h in args.growth_sizes.split(",")],
               [int(c) for c in args.channels.split(",")], args.n_images)
        return
    if args.step_cost_sizes:
        step_cost(args.types.split(","), [int(h) for h in args.step_cost_sizes.split(",")],
                  args.n_images)
        return
    sizes = args.sizes.split(",")
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    peak = matmul_flops_per_second()
    print(f"devices: {devices}; matmul throughput {peak / 1e9:.1f} GFLOP/s (2048x2048 fp32)")
    for layer_type in args.types.split(","):
        quick = quickstart_config(layer_type)
        cifar = (os.path.join(ROOT, "config.yml") if layer_type == "pixelcnn"
                 else os.path.join(ROOT, "configs", f"cifar10_{layer_type}.yml"))
        for precision in args.precisions.split(","):
            if "quickstart" in sizes:
                bench(f"quickstart {layer_type} ({os.path.relpath(quick, ROOT)})", quick, [],
                      (28, 28, 1), args.n_images, naive_steps=10**9, peak=peak,
                      precision=precision)
            if "cifar10" in sizes:
                bench(f"CIFAR-10 {layer_type} ({os.path.relpath(cifar, ROOT)})", cifar, [],
                      (32, 32, 3), args.n_images, naive_steps=args.naive_steps, peak=peak,
                      precision=precision)


if __name__ == "__main__":
    main()
