"""Shared command-line plumbing for train.py and evaluate.py."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

USER_ERROR_EXIT = 2  # a mistake in the command, config or data: fix it and rerun


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set train.steps=100 "
                             "(repeatable; the value is parsed as YAML)")


def ensure_writable_dir(path: str) -> None:
    from pixelcnn_tf.config import ConfigError
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--workdir {path} is not writable ({e.strerror}); choose "
                          f"another directory") from None


def run(main: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> None:
    """Runs ``main`` and turns user errors into one ``error:`` line and an exit code."""
    from pixelcnn_tf.config import ConfigError
    from pixelcnn_tf.data import DataError
    from pixelcnn_tf.trainer import TrainingError

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
