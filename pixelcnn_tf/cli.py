"""Shared command-line plumbing for train.py and evaluate.py."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

USER_ERROR_EXIT = 2  # a mistake in the command, config or data: fix it and rerun
VERBOSE_ENV = "PIXELCNN_TF_VERBOSE"  # set to 1 to see TensorFlow's native start-up logs
CPU_DEVICES_ENV = "PIXELCNN_TF_CPU_DEVICES"  # N > 1: split the CPU into N logical devices


def cpu_devices() -> int:
    """PIXELCNN_TF_CPU_DEVICES as a count (0 when unset); a ConfigError when it is not one."""
    from pixelcnn_tf.errors import ConfigError
    text = os.environ.get(CPU_DEVICES_ENV) or "0"
    if not text.strip().isdigit() or int(text) > 1024:
        raise ConfigError(f"{CPU_DEVICES_ENV}={text[:40]!r} must be a number of logical CPU "
                          f"devices from 1 to 1024 (e.g. 2), or unset")
    return int(text)


def _configure_devices(tf) -> None:
    n = cpu_devices()
    if n > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def import_tensorflow_quietly(initialize: bool = True) -> None:
    """Imports TensorFlow and initialises its devices with native stderr muted.

    TensorFlow 2.21 prints absl INFO lines (oneDNN, CUDA probing) at import and at device
    start-up that ``TF_CPP_MIN_LOG_LEVEL`` cannot hide; they would bury our one-line error
    messages. Python exceptions are unaffected (raised after stderr is restored). With
    ``initialize=False`` no op runs (MultiWorkerMirroredStrategy must be created first).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cpu_devices()  # a bad value is one line, before TensorFlow loads
    if os.environ.get(VERBOSE_ENV) == "1":
        import tensorflow
        _configure_devices(tensorflow)
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf
            _configure_devices(tf)
            if initialize:
                tf.constant(0.0) + 1.0  # device initialisation logs happen here
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set train.steps=100 "
                             "(repeatable; the value is parsed as YAML)")


def run(main: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> None:
    """Runs ``main`` and turns user errors into one ``error:`` line and an exit code."""
    from pixelcnn_tf.errors import ConfigError, DataError, TrainingError

    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = USER_ERROR_EXIT
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
