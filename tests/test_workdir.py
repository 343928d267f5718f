"""The run directory: checkpoint recovery, the lock, leftovers, and every user fault of the
CLIs, injected into real files and real subprocesses. After each fault, every readable
checkpoint must still be there, byte for byte."""
import hashlib
import os
import shutil

import numpy as np
import pytest

from pixelcnn_tf import workdir as workdir_lib
from helpers import run, tiny_config_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny grey run with checkpoints at steps 2, 4 and 6 (keep 3)."""
    base = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    npz = base / "tiny.npz"
    np.savez(npz, images=rng.integers(0, 256, (30, 6, 5)).astype(np.uint8))
    config = tiny_config_file(base, npz)
    workdir = base / "run"
    result = run("train.py", "--config", config, "--workdir", str(workdir),
                 "--set", "train.steps=6")
    assert result.returncode == 0, result.stderr
    return config, workdir


@pytest.fixture
def fresh(trained, tmp_path):
    """A copy of the trained run for one test to damage: (config, workdir)."""
    config, workdir = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return config, str(copy)


def ckpt(workdir, step):
    return os.path.join(workdir, "checkpoints", f"ckpt-{step}")


def files_of(workdir, *steps):
    """{path: sha256} of every file of the given checkpoints."""
    directory = os.path.join(workdir, "checkpoints")
    out = {}
    for name in sorted(os.listdir(directory)):
        if any(name.startswith(f"ckpt-{s}.") for s in steps):
            path = os.path.join(directory, name)
            out[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def unchanged(before):
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.exists(p) else None
            for p in before} == before


def data_file(workdir, step):
    directory = os.path.join(workdir, "checkpoints")
    return os.path.join(directory, next(n for n in os.listdir(directory)
                                        if n.startswith(f"ckpt-{step}.data-")))


def train(config, workdir, *overrides):
    return run("train.py", "--config", config, "--workdir", workdir,
               *[a for o in overrides for a in ("--set", o)])


def one_error_line(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- damaged checkpoint records and files -------------------------------------------------
def delete_newest_index(workdir):
    os.remove(ckpt(workdir, 6) + ".index")


def delete_record(workdir):
    os.remove(os.path.join(workdir, "checkpoints", "checkpoint"))


def garble_record(workdir):
    with open(os.path.join(workdir, "checkpoints", "checkpoint"), "wb") as f:
        f.write(b"\x00\xffgarbage{{{")


def record_names_missing(workdir):
    with open(os.path.join(workdir, "checkpoints", "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "ckpt-99"\nall_model_checkpoint_paths: "ckpt-99"\n')


def truncate_newest_data(workdir):
    path = data_file(workdir, 6)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def flip_newest_data(workdir):
    path = data_file(workdir, 6)
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage,used", [
    (delete_newest_index, 4), (delete_record, 6), (garble_record, 6),
    (record_names_missing, 6), (truncate_newest_data, 4), (flip_newest_data, 4)])
def test_damaged_checkpoints_never_restart_the_run(fresh, damage, used):
    config, workdir = fresh
    damage(workdir)
    good = files_of(workdir, *[s for s in (2, 4, 6) if s <= used])
    result = train(config, workdir, "train.steps=8")
    assert result.returncode == 0, result.stderr
    assert "new run" not in result.stdout
    assert f"restored ckpt-{used}" in result.stdout
    assert f"resuming {workdir} from step {used}" in result.stdout
    assert unchanged({p: h for p, h in good.items() if "ckpt-2." not in p})  # rotation only
    if used == 4:  # the damaged newer checkpoint was moved aside, not deleted
        assert "newer ones skipped: ckpt-6" in result.stdout
        moved = os.listdir(os.path.join(workdir, "checkpoints", "unreadable"))
        assert any(n.startswith("ckpt-6.") for n in moved)
    assert workdir_lib.checkpoint_step(workdir_lib.find_checkpoints(workdir)[0]) == 8


def test_evaluate_skips_a_damaged_checkpoint_without_moving_it(fresh):
    config, workdir = fresh
    truncate_newest_data(workdir)
    before = files_of(workdir, 2, 4, 6)
    result = run("evaluate.py", "--workdir", workdir, "--split", "validation")
    assert result.returncode == 0, result.stderr
    assert "restored ckpt-4 (newer ones skipped: ckpt-6: unreadable" in result.stdout
    assert "(step 4)" in result.stdout
    assert unchanged(before)  # evaluate.py reads only: a run may be training there


def test_no_restorable_checkpoint_is_an_error_that_changes_nothing(fresh):
    config, workdir = fresh
    for step in (2, 4, 6):
        with open(data_file(workdir, step), "r+b") as f:
            f.truncate(10)
    before = files_of(workdir, 2, 4, 6)
    result = train(config, workdir)
    one_error_line(result, "holds checkpoints but none restores", "ckpt-6", "ckpt-2",
                   "Nothing was changed", "to start over")
    assert unchanged(before)
    one_error_line(run("evaluate.py", "--workdir", workdir), "none restores")


def test_unit_find_checkpoints_reads_files_not_only_the_record(tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    for step in (3, 12, 7):
        (directory / f"ckpt-{step}.index").write_bytes(b"")
    (directory / "checkpoint").write_text('model_checkpoint_path: "ckpt-20"\n')
    found = [os.path.basename(p) for p in workdir_lib.find_checkpoints(str(tmp_path))]
    assert found == ["ckpt-20", "ckpt-12", "ckpt-7", "ckpt-3"]


def test_a_checkpoint_of_another_model_is_refused_and_kept(fresh, tmp_path):
    """Issue 29: a checkpoint of another model type copied into a run got dozens of
    TensorFlow warnings and the advice to use "the config the run was started with" (it
    was in use). The error names the checkpoint as foreign and says how to resume without
    it; train.py and evaluate.py change nothing."""
    config, workdir = fresh
    other = str(tmp_path / "other")
    assert train(config, other, "model.type=gated_pixelcnn", "train.steps=2").returncode == 0
    for name in os.listdir(os.path.join(other, "checkpoints")):
        if name.startswith("ckpt-2."):
            shutil.copy(os.path.join(other, "checkpoints", name),
                        os.path.join(workdir, "checkpoints", name.replace("ckpt-2", "ckpt-9")))
    before = files_of(workdir, 2, 4, 6, 9)
    for result in (train(config, workdir, "train.steps=12"),
                   run("evaluate.py", "--workdir", workdir, "--split", "validation")):
        one_error_line(result, "ckpt-9 does not fit the model of the run's config.yml (",
                       "variables differ, e.g. model.",
                       "was it copied from another run",
                       f"move ckpt-9.* out of {os.path.join(workdir, 'checkpoints')}")
    assert unchanged(before)


def test_unit_misfits_name_missing_and_reshaped_variables(tmp_path):
    import tensorflow as tf
    saved = tf.Module()
    saved.kernel, saved.bias = tf.Variable(tf.zeros([1, 3])), tf.Variable(tf.zeros([3]))
    prefix = tf.train.Checkpoint(model=saved).write(str(tmp_path / "ckpt-1"))
    ours = tf.Module()
    ours.kernel, ours.scale = tf.Variable(tf.zeros([3, 3])), tf.Variable(tf.zeros([3]))
    ours.bias = tf.Variable(tf.zeros([3]))
    found = workdir_lib._misfits(tf.train.Checkpoint(model=ours),
                                 tf.train.load_checkpoint(prefix))
    assert sorted(found) == ["model.kernel: [1, 3] in the checkpoint, [3, 3] here",
                             "model.scale is missing"]


# -- one trainer per workdir -----------------------------------------------------------
def test_a_second_trainer_or_export_exits_at_once(fresh):
    import socket
    config, workdir = fresh
    before = files_of(workdir, 2, 4, 6)
    with workdir_lib.WorkdirLock(workdir):  # held by this process, as a running train.py
        for extra in ([], ["--export-only"]):
            result = run("train.py", "--config", config, "--workdir", workdir, *extra)
            one_error_line(result, "is in use by another training process",
                           f"pid {os.getpid()} on host {socket.gethostname()}")
        ev = run("evaluate.py", "--workdir", workdir, "--split", "validation")
        assert ev.returncode == 0, ev.stderr  # reading while a run trains is fine
    assert unchanged(before)
    assert train(config, workdir, "train.steps=6").returncode == 0  # released with us


def test_the_lock_dies_with_its_process(tmp_path):
    import subprocess
    import sys
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from pixelcnn_tf.workdir import WorkdirLock;"
            "WorkdirLock(sys.argv[2]).acquire(); print('locked', flush=True); time.sleep(60)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", code, root, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(Exception, match=f"pid {proc.pid}"):
        workdir_lib.WorkdirLock(str(tmp_path)).acquire()
    proc.kill()  # SIGKILL: no cleanup code runs
    proc.wait()
    workdir_lib.WorkdirLock(str(tmp_path)).acquire().release()  # no stale lock


# -- leftovers -------------------------------------------------------------------------
def test_leftovers_of_killed_runs_are_removed_and_nothing_else(fresh):
    config, workdir = fresh
    made = [os.path.join(workdir, ".saved_model_abc123"), os.path.join(workdir, ".assets_x"),
            os.path.join(workdir, "checkpoints", "ckpt-8_temp"),
            os.path.join(workdir, "checkpoints", "ckpt-8_temp_0123abcd")]
    for path in made:
        os.makedirs(path)
        open(os.path.join(path, "junk"), "w").write("x")
    partial = os.path.join(workdir, "config.yml.4242.partial")
    open(partial, "w").write("half")
    mine = [os.path.join(workdir, "my_saved_model_"), os.path.join(workdir, "notes.partial")]
    for path in mine:
        open(path, "w").write("user file")
    result = train(config, workdir)
    assert result.returncode == 0, result.stderr
    for path in made + [partial]:
        assert not os.path.exists(path) and f"removed {path}" in result.stdout
    for path in mine:
        assert open(path).read() == "user file"


# -- user errors: one line, exit 2, nothing lost ---------------------------------------
def test_train_steps_zero_on_a_new_run_is_refused(trained, tmp_path):
    config, _ = trained
    result = train(config, str(tmp_path / "new"), "train.steps=0")
    one_error_line(result, "train.steps=0 on a new run would export an untrained model")
    assert not os.path.exists(tmp_path / "new" / "saved_model")


@pytest.mark.parametrize("make,fragment", [
    (lambda p: os.makedirs(p), "is a directory"),
    (lambda p: open(p, "wb").write(b"\x89PNG\r\n\x1a\n\x00\x00\xff"), "is not a text file"),
    (lambda p: open(p, "w").write("model: 5\n"), "section 'model' must be a mapping"),
])
def test_bad_config_files(trained, tmp_path, make, fragment):
    path = str(tmp_path / "bad.yml")
    make(path)
    one_error_line(run("train.py", "--config", path, "--workdir", str(tmp_path / "w")),
                   fragment)


@pytest.mark.parametrize("args,fragment", [
    (["--samples", "-1"], "--samples -1: give a number of images from 1 to 4096"),
    (["--completions", "-2"], "--completions -2"),
    (["--completions", "1", "--completion-images", "0"], "--completion-images 0"),
    (["--samples", "1", "--out", "."], "--out . is a directory"),
    (["--set", "sample.seed=100000000000000000000"], "sample.seed=100000000000000000000 is "
                                                     "out of range"),
])
def test_evaluate_option_errors(trained, args, fragment):
    _, workdir = trained
    one_error_line(run("evaluate.py", "--workdir", str(workdir), *args), fragment)


def test_damaged_model_info_and_npz(fresh, tmp_path):
    config, workdir = fresh
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip archive")
    one_error_line(run("evaluate.py", "--workdir", workdir, "--set", f"data.path={garbage}"),
                   "is not a readable .npz file")
    floats = tmp_path / "floats.npz"
    np.savez(floats, images=np.full((3, 6, 5), 200.0))
    one_error_line(run("evaluate.py", "--workdir", workdir, "--set", f"data.path={floats}"),
                   "already intensities", "x.round().astype(np.uint8) (not x * 255)")
    with open(os.path.join(workdir, "model_info.json"), "w") as f:
        f.write("{not json")
    one_error_line(run("evaluate.py", "--workdir", workdir), "model_info.json is damaged")


def test_class_labels_that_do_not_fit(trained, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 6, 5)).astype(np.uint8)
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, images=images, labels=np.arange(20) % 3)
    config = tiny_config_file(tmp_path, labelled)
    workdir = str(tmp_path / "cond")
    result = train(config, workdir, "model.num_classes=3", "train.steps=2")
    assert result.returncode == 0, result.stderr
    cases = [(np.arange(9) % 5, "labels up to 4 but the model knows classes 0..2"),
             (-np.ones(9, np.int64), "labels must be class ids 0.."),
             (np.full(9, 2**32 + 1), "labels must be class ids 0..")]
    for labels, fragment in cases:
        path = tmp_path / "eval.npz"
        np.savez(path, images=images[:9], labels=labels)
        one_error_line(run("evaluate.py", "--workdir", workdir, "--set", f"data.path={path}"),
                       fragment)
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, images=images[:9])
    one_error_line(run("evaluate.py", "--workdir", workdir, "--set",
                       f"data.path={unlabelled}"), "class-conditional", "no labels")


def test_evaluate_prints_its_result_when_it_cannot_write(fresh):
    config, workdir = fresh
    os.makedirs(os.path.join(workdir, "eval_npz_tiny_validation.json"))  # blocks the file
    result = run("evaluate.py", "--workdir", workdir, "--split", "validation")
    assert result.returncode == 0, result.stderr
    assert "bits/dim over 6 images (step 6)" in result.stdout
    assert "warning: could not write" in result.stderr and "the result above stands" in \
        result.stderr


def test_disk_full_during_training_keeps_the_last_checkpoint(fresh, tmp_path):
    """The checkpoint write of step 8 fails with ENOSPC (injected into the real train.py
    process): one line, a non-zero exit, no traceback, and ckpt-6 intact."""
    config, workdir = fresh
    wrapper = tmp_path / "full_disk_train.py"
    wrapper.write_text(
        "import errno, os, sys\n"
        "sys.path.insert(0, os.getcwd())\n"
        "import tensorflow as tf\n"
        "real = tf.train.CheckpointManager.save\n"
        "def save(self, *a, **k):\n"
        "    if k.get('checkpoint_number') == 8:\n"
        "        os.makedirs(os.path.join(self.directory, 'ckpt-8_temp'), exist_ok=True)\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return real(self, *a, **k)\n"
        "tf.train.CheckpointManager.save = save\n"
        "import train\n"
        "from pixelcnn_tf import cli\n"
        "cli.run(train.main)\n")
    before = files_of(workdir, 4, 6)
    result = run(str(wrapper), "--config", config, "--workdir", workdir,
                 "--set", "train.steps=10")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith("train:") and "\r" not in line]
    assert lines[-1].startswith("error: could not write the checkpoint of step 8 (")
    assert "ckpt-6 is kept" in lines[-1] and "Traceback" not in result.stderr
    assert unchanged(before)
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "ckpt-8_temp"))
