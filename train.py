"""Train a PixelCNN-family model from a config file.

  python train.py --config configs/quickstart.yml --workdir runs/quick [--set k=v ...]
  python train.py --config configs/quickstart.yml --workdir runs/quick --export-only

Resumes automatically from the latest checkpoint in --workdir and ends by exporting a
SavedModel to WORKDIR/saved_model.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from pixelcnn_tf import cli


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yml", help="YAML config (default: %(default)s)")
    parser.add_argument("--workdir", required=True,
                        help="run directory: checkpoints, TensorBoard events, samples")
    parser.add_argument("--export-only", action="store_true",
                        help="export WORKDIR/saved_model from the latest checkpoint; no training")
    cli.add_config_args(parser)
    args = parser.parse_args(argv)
    # Under TF_CONFIG (several workers) the strategy must be created before any op runs.
    cli.import_tensorflow_quietly(initialize="TF_CONFIG" not in os.environ)

    from pixelcnn_tf import data as data_lib
    from pixelcnn_tf.config import ConfigError, load_config
    from pixelcnn_tf.export import export_saved_model
    from pixelcnn_tf.hardware import local_precision_warning
    from pixelcnn_tf.models import count_parameters
    from pixelcnn_tf.trainer import (SAVED_MODEL_DIR, Trainer, check_resume_compatible,
                                     make_strategy, read_model_info)

    config = load_config(args.config, args.overrides)
    strategy = make_strategy(config.train.distribute)
    cli.ensure_writable_dir(args.workdir)
    check_resume_compatible(args.workdir, config)
    train_split = data_lib.load_split(config.data, "train")
    val_split = data_lib.load_split(config.data, "validation")
    if config.model.num_classes > 0 and train_split.num_classes == 0:
        raise ConfigError(f"model.num_classes={config.model.num_classes} but "
                          f"{config.data.dataset} has no labels; set model.num_classes=0")
    try:
        saved_shape = tuple(read_model_info(args.workdir)["image_shape"])
    except FileNotFoundError:
        saved_shape = None
    if saved_shape and saved_shape != train_split.image_shape:
        raise ConfigError(f"{config.data.dataset} images are {train_split.image_shape} but "
                          f"the run in {args.workdir} was trained on {saved_shape}; use a new "
                          f"--workdir")

    trainer = Trainer(config, args.workdir, train_split.image_shape, strategy)
    export_dir = trainer.worker_path(SAVED_MODEL_DIR)
    if args.export_only:
        if not trainer.restore():
            raise FileNotFoundError(f"{args.workdir} has no checkpoint to export; train first")
        with trainer.inference_weights():
            export_saved_model(trainer.model, config, export_dir)
        print(f"exported step {trainer.step} to {export_dir}")
        return 0
    trainer.check_disk_space()
    warning = local_precision_warning(config.train.mixed_precision)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if config.train.distribute != "none":
        print(f"train.distribute={config.train.distribute}: "
              f"{trainer.strategy.num_replicas_in_sync} replicas")
    if trainer.restore():
        print(f"resuming {args.workdir} from step {trainer.step}")
    else:
        print(f"new run in {args.workdir}: {config.model.type}, "
              f"{count_parameters(trainer.model):,} parameters, images "
              f"{train_split.image_shape}, {train_split.num_examples} training / "
              f"{val_split.num_examples} validation images")
    result = trainer.fit(train_split, val_split)
    if result.get("interrupted"):
        trainer.remove_scratch()
        return 0  # the checkpoint is written; no evaluation or export
    val = result.get("validation")
    if val:
        print(f"validation bits/dim: {val['bits_per_dim']:.4f} ({val['num_images']} images, "
              f"step {result['step']})")
    elif not trainer.is_chief:
        print(f"worker finished at step {result['step']}")
    else:
        print(f"nothing to do: the run is at step {result['step']} of train.steps="
              f"{config.train.steps}; raise train.steps to train longer")
    with trainer.inference_weights():
        export_saved_model(trainer.model, config, export_dir)  # every worker takes part
    if trainer.is_chief:
        print(f"exported a SavedModel to {export_dir}")
    trainer.remove_scratch()
    return 0


if __name__ == "__main__":
    cli.run(main)
