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
    parser.add_argument("--new-data", action="store_true",
                        help="resume the run on other data than its recorded data.dataset / "
                             "data.path (refused otherwise)")
    cli.add_config_args(parser)
    args = parser.parse_args(argv)
    from pixelcnn_tf.config import load_config
    config = load_config(args.config, args.overrides)  # its errors come before TensorFlow loads
    # Under TF_CONFIG (several workers) the strategy must be created before any op runs.
    cli.import_tensorflow_quietly(initialize="TF_CONFIG" not in os.environ)

    from pixelcnn_tf import workdir as workdir_lib
    from pixelcnn_tf.devices import is_chief_worker, make_strategy

    strategy = make_strategy(config.train.distribute)
    workdir_lib.ensure_writable(args.workdir)
    if not is_chief_worker(strategy):  # workers write to scratch; the chief holds the lock
        return _run(args, config, strategy)
    with workdir_lib.WorkdirLock(args.workdir):
        for path in workdir_lib.remove_leftovers(args.workdir):
            print(f"removed {path} (left by an interrupted run)")
        return _run(args, config, strategy)


def _run(args, config, strategy) -> int:
    from pixelcnn_tf import data as data_lib
    from pixelcnn_tf import workdir as workdir_lib
    from pixelcnn_tf.config import ConfigError
    from pixelcnn_tf.export import export_saved_model
    from pixelcnn_tf.devices import local_precision_warning
    from pixelcnn_tf.models import count_parameters
    from pixelcnn_tf.trainer import Trainer

    workdir_lib.check_resume_compatible(args.workdir, config)
    workdir_lib.check_resume_training(args.workdir, config, args.new_data)
    train_split = data_lib.load_split(config.data, "train")
    val_split = data_lib.load_split(config.data, "validation")
    data_lib.check_labels_fit(train_split, config.model.num_classes)
    workdir_lib.check_image_shape(args.workdir, train_split.image_shape, config.data.dataset)

    trainer = Trainer(config, args.workdir, train_split.image_shape, strategy)
    export_dir = trainer.worker_path(workdir_lib.SAVED_MODEL_DIR)
    restored = trainer.restore()
    if restored:
        print(f"{args.workdir}: {trainer.restored.describe()}")
    if args.export_only:
        if not restored:
            raise ConfigError(f"{args.workdir} has no checkpoint to export; train first")
        with trainer.inference_weights():
            export_saved_model(trainer.model, config, export_dir)
        print(f"exported step {trainer.step} to {export_dir}")
        return 0
    if not restored and config.train.steps == 0:
        raise ConfigError("train.steps=0 on a new run would export an untrained model; set "
                          "train.steps to the number of optimizer steps to train")
    trainer.check_disk_space()
    warning = local_precision_warning(config.train.mixed_precision)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if config.train.distribute != "none":
        print(f"train.distribute={config.train.distribute}: "
              f"{trainer.strategy.num_replicas_in_sync} replicas")
    if restored:
        print(f"resuming {args.workdir} from step {trainer.step}")
    else:
        kind = config.model.type
        if config.model.multiscale:
            kind += f" (multi-scale, factor {config.model.multiscale['factor']})"
        print(f"new run in {args.workdir}: {kind}, "
              f"{count_parameters(trainer.model):,} parameters, images "
              f"{train_split.image_shape}, {train_split.num_examples} training / "
              f"{val_split.num_examples} validation images")
    result = trainer.fit(train_split, val_split)
    if result.get("interrupted"):
        trainer.remove_scratch()
        return 0  # the checkpoint is written; no evaluation or export
    val = result.get("validation")
    if val:
        print(f"validation bits/dim: {val['bits_per_dim']:.4f}, {val['nats_per_image']:.2f} "
              f"nats/image ({val['num_images']} images, step {result['step']})")
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
