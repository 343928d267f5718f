"""Faults injected into real training processes: signals, kills, bad disks."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from helpers import run, tiny_config_file

pytestmark = pytest.mark.slow


def start_training(config, workdir, *overrides):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [sys.executable, os.path.join(ROOT, "train.py"), "--config", config, "--workdir",
            workdir, *[a for o in overrides for a in ("--set", o)]]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def latest_step(workdir):
    import tensorflow as tf
    path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    return None if path is None else int(path.rsplit("-", 1)[1])


def wait_for_checkpoint(workdir, after=0, timeout=120):
    """Waits until a checkpoint newer than step ``after`` exists."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (latest_step(workdir) or 0) > after:
            return
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "d.npz"
    np.savez(npz, images=rng.integers(0, 256, (40, 6, 5)).astype(np.uint8))
    return tiny_config_file(tmp_path, npz), str(tmp_path / "run")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_step_checkpoints_and_resumes(setup, sig):
    config, workdir = setup
    proc = start_training(config, workdir, "train.steps=100000", "train.checkpoint_every=20",
                          "train.eval_every=100000", "train.sample_every=100000")
    wait_for_checkpoint(workdir)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert f"received {sig.name}: stopped after step" in out
    stopped = latest_step(workdir)
    assert f"stopped after step {stopped}, saved" in out
    again = run("train.py", "--config", config, "--workdir", workdir,
                "--set", f"train.steps={stopped + 2}")
    assert again.returncode == 0, again.stderr
    assert f"resuming {workdir} from step {stopped}" in again.stdout
    assert latest_step(workdir) == stopped + 2


def test_sigkill_at_random_moments_never_leaves_a_bad_checkpoint(setup):
    """Kill -9 a run that checkpoints every step at random moments; every restart must
    resume from the last complete checkpoint and the run must finish."""
    config, workdir = setup
    overrides = ("train.steps=100000", "train.checkpoint_every=1", "train.eval_every=100000",
                 "train.sample_every=100000", "train.keep_checkpoints=2")
    chooser = random.Random(0)
    previous = 0
    for _ in range(3):
        proc = start_training(config, workdir, *overrides)
        wait_for_checkpoint(workdir, after=previous)  # this process is training
        time.sleep(chooser.uniform(0.0, 1.5))  # inside training, often inside a save
        proc.kill()
        proc.communicate(timeout=60)
        step = latest_step(workdir)
        assert step is not None and step >= previous
        previous = step
    final = run("train.py", "--config", config, "--workdir", workdir,
                "--set", f"train.steps={previous + 3}")
    assert final.returncode == 0, final.stderr
    # Any complete checkpoint is a correct place to resume: a kill between writing
    # ckpt-k and updating the `checkpoint` record leaves a complete ckpt-k newer than
    # the record's, and recovery may take it.
    resumed = re.search(rf"resuming {re.escape(workdir)} from step (\d+)", final.stdout)
    assert resumed and previous <= int(resumed.group(1)) < previous + 3, final.stdout
    assert latest_step(workdir) == previous + 3


def test_unwritable_workdir_is_a_clear_error(tmp_path, setup):
    config, _ = setup
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run("train.py", "--config", config, "--workdir", str(blocker / "run"))
    assert result.returncode == 2
    assert "is not writable" in result.stderr and "Traceback" not in result.stderr


def test_changed_model_on_resume_is_detected_at_start(setup):
    config, workdir = setup
    assert run("train.py", "--config", config, "--workdir", workdir).returncode == 0
    result = run("train.py", "--config", config, "--workdir", workdir,
                 "--set", "model.hidden_dim=6")
    assert result.returncode == 2
    assert "model.hidden_dim=6 differs from the run" in result.stderr
    longer = run("train.py", "--config", config, "--workdir", workdir,
                 "--set", "train.steps=6", "--set", "train.log_every=3")
    assert longer.returncode == 0 and "from step 4" in longer.stdout
