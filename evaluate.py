"""Exact bits/dim of a trained run over a whole split, and samples.

  python evaluate.py --workdir runs/quick [--split validation|test|all] [--set k=v ...]
  python evaluate.py --workdir runs/quick --set data.dataset=npz --set data.path=F.npz
  python evaluate.py --workdir runs/quick --samples 16 --out samples.png
  python evaluate.py --workdir runs/quick --completions 4 --completion-out c.png
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

from pixelcnn_tf import cli


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a run directory made by train.py")
    parser.add_argument("--split", default=None,
                        help="train, validation or test (npz: all); default validation "
                             "(npz: all)")
    parser.add_argument("--samples", type=int, default=0, metavar="N",
                        help="also draw N samples (written to --out)")
    parser.add_argument("--out", default=None,
                        help="PNG path for --samples (default: WORKDIR/samples/eval.png)")
    parser.add_argument("--completions", type=int, default=0, metavar="K",
                        help="also write a completion figure: the top half of "
                             "--completion-images images of the split, K completions each")
    parser.add_argument("--completion-images", type=int, default=4, metavar="N")
    parser.add_argument("--completion-out", default=None,
                        help="PNG path (default: WORKDIR/samples/completions.png)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip bits/dim (samples and completions only)")
    cli.add_config_args(parser)
    args = parser.parse_args(argv)
    if args.no_eval and not (args.samples or args.completions):
        parser.error("--no-eval leaves nothing to do: add --samples N or --completions K")
    cli.import_tensorflow_quietly()

    from pixelcnn_tf.config import load_config
    from pixelcnn_tf.trainer import CONFIG_FILE, Trainer, read_model_info

    info = read_model_info(args.workdir)
    # Exact bits/dim: float32 arithmetic on the (float32) weights, whatever precision the
    # run trained in; a later --set train.mixed_precision=bfloat16 trades that for speed.
    overrides = ["train.mixed_precision=none", *args.overrides]
    config = load_config(os.path.join(args.workdir, CONFIG_FILE), overrides)
    image_shape = tuple(info["image_shape"])
    trainer = Trainer(config, args.workdir, image_shape)
    if not trainer.restore():
        raise FileNotFoundError(f"{args.workdir} has no checkpoint; train first")
    with trainer.inference_weights():  # the moving averages when the run keeps them
        return _evaluate(args, config, trainer, image_shape)


def _evaluate(args, config, trainer, image_shape) -> int:
    from pixelcnn_tf import data as data_lib
    from pixelcnn_tf import viz
    from pixelcnn_tf.config import ConfigError
    from pixelcnn_tf.sampling import complete_images

    split = None
    split_name = args.split or data_lib.default_eval_split(config.data)
    if not args.no_eval or args.completions:
        split = data_lib.load_split(config.data, split_name)
        if split.image_shape != image_shape:
            raise ConfigError(f"{config.data.dataset} {split_name} images are "
                              f"{list(split.image_shape)} but the model was trained on "
                              f"{list(image_shape)}")
    if not args.no_eval:
        result = trainer.evaluate(data_lib.eval_pipeline(split, config.data.eval_batch_size))
        name = config.data.dataset
        if name == "npz":
            name = f"npz_{os.path.splitext(os.path.basename(config.data.path))[0]}"
        record = {**result.as_dict(), "dataset": config.data.dataset, "path": config.data.path,
                  "split": split_name, "step": trainer.step,
                  "mixed_precision": config.train.mixed_precision}
        out_json = os.path.join(args.workdir, f"eval_{name}_{split_name}.json")
        with open(out_json, "w") as f:
            json.dump(record, f, indent=2)
        precision = config.train.mixed_precision
        arithmetic = "" if precision == "none" else f", {precision} arithmetic"
        print(f"{config.data.dataset} {split_name}: {result.bits_per_dim:.4f} bits/dim over "
              f"{result.num_images} images (step {trainer.step}{arithmetic}); written to "
              f"{out_json}")

    if args.samples:
        out = args.out or os.path.join(args.workdir, "samples", "eval.png")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        images = trainer.sample(args.samples)
        viz.save_grid(images, out, title=f"{args.samples} samples, step {trainer.step}")
        print(f"wrote {args.samples} samples to {out}")

    if args.completions:
        out = args.completion_out or os.path.join(args.workdir, "samples", "completions.png")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        s = config.sample
        picked = split.dataset.shuffle(split.num_examples, seed=s.seed)  # across classes
        originals, labels = next(iter(picked.batch(args.completion_images)))
        rows = image_shape[0] // 2
        completions = complete_images(
            trainer.model, originals.numpy(), rows, args.completions, seed=s.seed,
            temperature=s.temperature, method=s.method,
            labels=labels.numpy() if trainer.conditional else None)
        fig = viz.completion_figure(originals.numpy(), completions, rows,
                                    title=f"original | top {rows} rows given | "
                                          f"{args.completions} completions")
        with open(out, "wb") as f:
            f.write(viz.figure_to_png(fig))
        print(f"wrote completions of {len(originals)} images to {out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
