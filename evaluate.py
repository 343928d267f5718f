"""Exact bits/dim of a trained run over a whole split, and samples.

  python evaluate.py --workdir runs/quick [--split validation|test|train|all] [--set k=v ...]
  python evaluate.py --workdir runs/quick --set data.path=F.npz      (npz: all images)
  python evaluate.py --workdir runs/quick --samples 16 [--seed 7]    (no evaluation)
  python evaluate.py --workdir runs/quick --completions 4

Samples and completions alone do not evaluate (add --eval to do both); figures go to
WORKDIR/samples/ unless --out / --completion-out say otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from pixelcnn_tf import cli


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a run directory made by train.py")
    parser.add_argument("--split", default=None,
                        help="validation, test or train (npz files: all); default "
                             "validation (npz files: all)")
    parser.add_argument("--samples", type=int, default=0, metavar="N",
                        help="draw N samples (written to --out)")
    parser.add_argument("--out", default=None,
                        help="PNG path for --samples (default: WORKDIR/samples/eval.png)")
    parser.add_argument("--completions", type=int, default=0, metavar="K",
                        help="write a completion figure: the top half of "
                             "--completion-images images of the split, K completions each")
    parser.add_argument("--completion-images", type=int, default=4, metavar="N",
                        help="how many images of the split --completions completes "
                             "(default: %(default)s)")
    parser.add_argument("--completion-out", default=None,
                        help="PNG path (default: WORKDIR/samples/completions.png)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of samples and completions (default: sample.seed)")
    parser.add_argument("--eval", dest="evaluate", action="store_true", default=None,
                        help="also compute bits/dim when drawing samples or completions")
    parser.add_argument("--no-eval", dest="evaluate", action="store_false",
                        help="skip bits/dim (samples and completions only)")
    cli.add_config_args(parser)
    args = parser.parse_args(argv)
    _check_args(args)
    cli.import_tensorflow_quietly()

    from pixelcnn_tf.run import load_for_inference

    # Exact bits/dim: float32 arithmetic, whatever precision the run trained in.
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"sample.seed={args.seed}")
    run = load_for_inference(args.workdir, overrides)
    if run.restored.skipped:
        print(f"{args.workdir}: {run.restored.describe()}")
    with run.inference_weights():  # the moving averages when the run keeps them
        return _evaluate(args, run.config, run)


def _check_args(args) -> None:
    """Bad option values: one line and exit 2 (ConfigError), before TensorFlow loads."""
    from pixelcnn_tf.config import MAX_SAMPLES
    from pixelcnn_tf.errors import ConfigError
    if not 0 <= args.samples <= MAX_SAMPLES:
        raise ConfigError(f"--samples {args.samples}: give a number of images from 1 to "
                          f"{MAX_SAMPLES}")
    if args.completions < 0 or args.completions * args.completion_images > MAX_SAMPLES:
        raise ConfigError(f"--completions {args.completions}: give a number of completions "
                          f"per image >= 1, at most {MAX_SAMPLES} images in all")
    if not 1 <= args.completion_images <= MAX_SAMPLES:
        raise ConfigError(f"--completion-images {args.completion_images}: give a number of "
                          f"images from 1 to {MAX_SAMPLES}")
    for flag, path in (("--out", args.out), ("--completion-out", args.completion_out)):
        if path is not None and (os.path.isdir(path) or path.endswith(os.sep)):
            raise ConfigError(f"{flag} {path} is a directory; give a file name such as "
                              f"{os.path.join(path, 'figure.png')}")
    drawing = bool(args.samples or args.completions)
    if args.evaluate is False and not drawing:
        raise ConfigError("--no-eval leaves nothing to do: add --samples N or "
                          "--completions K")
    if args.evaluate is None:
        args.evaluate = not drawing  # samples alone do not evaluate unless --eval


def _evaluate(args, config, run) -> int:
    from pixelcnn_tf import data as data_lib
    from pixelcnn_tf import viz
    from pixelcnn_tf import workdir as workdir_lib
    from pixelcnn_tf.config import ConfigError
    from pixelcnn_tf.sampling import complete_images

    split = None
    image_shape = run.image_shape
    split_name = args.split or data_lib.default_eval_split(config.data)
    if args.evaluate or args.completions:
        split = data_lib.load_split(config.data, split_name)
        if split.image_shape != image_shape:
            raise ConfigError(f"{config.data.dataset} {split_name} images are "
                              f"{list(split.image_shape)} but the model was trained on "
                              f"{list(image_shape)}")
        data_lib.check_labels_fit(split, config.model.num_classes)
    if args.evaluate:
        result = run.evaluate(data_lib.eval_pipeline(split, config.data.eval_batch_size))
        precision = config.train.mixed_precision
        arithmetic = "" if precision == "none" else f", {precision} arithmetic"
        print(f"{config.data.dataset} {split_name} ({config.data.bits}-bit): "
              f"{result.nats_per_image:.2f} nats/image, {result.bits_per_dim:.4f} bits/dim "
              f"over {result.num_images} images (step {run.step}{arithmetic})", flush=True)
        record = {**result.as_dict(), "dataset": config.data.dataset, "path": config.data.path,
                  "split": split_name, "step": run.step, "mixed_precision": precision}
        out_json = workdir_lib.eval_json_path(args.workdir, config.data, split_name)
        _write(out_json, lambda: workdir_lib.write_text_atomically(
            out_json, json.dumps(record, indent=2)))

    if args.samples:
        out = args.out or workdir_lib.samples_path(args.workdir, "eval.png")
        images = data_lib.to_intensities(run.sample(args.samples), config.data.bits)
        _write(out, lambda: viz.save_grid(
            images, out, title=f"{args.samples} samples, step {run.step}"))

    if args.completions:
        out = args.completion_out or workdir_lib.samples_path(args.workdir, "completions.png")
        s = config.sample
        picked = split.dataset.shuffle(split.num_examples, seed=s.seed)  # across classes
        originals, labels = next(iter(picked.batch(args.completion_images)))
        rows = image_shape[0] // 2
        completions = complete_images(
            run.model, originals.numpy(), rows, args.completions, seed=s.seed,
            temperature=s.temperature, method=s.method,
            labels=labels.numpy() if run.conditional else None)
        bits = config.data.bits
        fig = viz.completion_figure(data_lib.to_intensities(originals.numpy(), bits),
                                    data_lib.to_intensities(completions, bits), rows,
                                    title=f"original | top {rows} rows given | "
                                          f"{args.completions} completions")
        png = viz.figure_to_png(fig)

        def write_png():
            with open(out, "wb") as f:
                f.write(png)
        _write(out, write_png, f"completions of {len(originals)} images")
    return 0


def _write(path: str, write, what: str = "") -> None:
    """Runs ``write`` (which writes ``path``); a failure is a warning, not a lost result."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write()
    except OSError as e:
        print(f"warning: could not write {path} ({e.strerror or e}); the result above "
              f"stands", file=sys.stderr)
        return
    print(f"wrote {what + ' to ' if what else ''}{path}")


if __name__ == "__main__":
    cli.run(main)
