"""The run directory: its layout, the lock, checkpoint discovery and recovery, the resume
rules, leftovers and the disk-space check. Every rule about a workdir
lives here; train.py, evaluate.py and the Trainer call into it.

Layout::

  .lock             held (flock) by the one train.py that owns the run: pid and host
  config.yml        the resolved config (yaml.safe_dump; what evaluate.py reloads)
  model_info.json   image shape, classes and parameter count of the model
  checkpoints/      tf.train.CheckpointManager: model, optimizer (with its step), RNG
  checkpoints/unreadable/   checkpoints that failed to restore, moved aside (never deleted)
  train/ validation/  TensorBoard event files
  samples/          PNG sample grids (training, evaluate.py --samples / --completions)
  saved_model/      the exported SavedModel (see export.py)
  eval_*.json       evaluate.py results
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import fcntl
import json
import os
import re
import shutil
import socket
from typing import List, Optional, Sequence, Tuple

from pixelcnn_tf.config import config_to_dict, read_yaml
from pixelcnn_tf.errors import ConfigError
from pixelcnn_tf.files import PARTIAL_SUFFIX, write_text_atomically

CONFIG_FILE = "config.yml"
MODEL_INFO_FILE = "model_info.json"
CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "unreadable"  # inside CHECKPOINT_DIR
SAMPLES_DIR = "samples"
SAVED_MODEL_DIR = "saved_model"
LOCK_FILE = ".lock"
# Staging directories of export.py and TensorFlow's checkpoint temporaries: a run killed
# (or out of disk) while writing them leaves them behind; the next run removes them.
STAGING_PREFIXES = (".saved_model_", ".assets_")
_CHECKPOINT_TEMP = re.compile(r"^ckpt-\d+_temp(_[0-9a-f]+)?$")
_PARTIAL = re.compile(r"^.+\.\d+" + re.escape(PARTIAL_SUFFIX) + "$")  # files.py's temporaries
_CHECKPOINT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


# -- the directory ---------------------------------------------------------------------------
def ensure_writable(path: str) -> None:
    """Creates ``path`` if needed and checks that this process can write into it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--workdir {path} is a file, not a directory; choose a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test_{os.getpid()}")  # workers may share a dir
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--workdir {path} is not writable ({e.strerror}); choose "
                          f"another directory") from None


def read_model_info(workdir: str) -> dict:
    """``model_info.json`` → dict with ``image_shape`` (3 ints) and ``num_classes``."""
    path = os.path.join(workdir, MODEL_INFO_FILE)
    if not os.path.exists(path):
        raise ConfigError(f"{workdir} holds no trained run ({MODEL_INFO_FILE} is "
                          f"missing); train first with train.py --workdir {workdir}")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        shape = [int(d) for d in info["image_shape"]]
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(shape)
        info["image_shape"] = shape
        info["num_classes"] = int(info.get("num_classes", 0))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is damaged (it must be JSON with image_shape [H, W, C]); "
                          f"rerun train.py --workdir {workdir} with the run's config to "
                          f"rewrite it") from None
    return info


def write_model_info(workdir: str, image_shape: Sequence[int], num_classes: int,
                     parameters: int) -> None:
    write_text_atomically(os.path.join(workdir, MODEL_INFO_FILE), json.dumps(
        {"image_shape": [int(d) for d in image_shape], "num_classes": int(num_classes),
         "parameters": int(parameters)}, indent=2))


# What a checkpoint's weights mean: every model key, and the bit depth of the images
# (with the value a run recorded before the key existed).
RUN_DATA_KEYS = {"bits": 8, "threshold": None}


def check_resume_compatible(workdir: str, config) -> None:
    """Refuses to resume (or evaluate, sample, code with) the run in ``workdir`` with a
    config whose model settings or bit depth differ from the run's recorded config."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    recorded = read_yaml(path)
    ours = config_to_dict(config)
    pairs = [("model", key) for key in ours["model"]] + [("data", k) for k in RUN_DATA_KEYS]
    for section, key in pairs:
        saved = recorded.get(section) or {}
        was = saved.get(key, RUN_DATA_KEYS[key] if section == "data" else ours[section][key])
        if was != ours[section][key]:
            raise ConfigError(
                f"{section}.{key}={ours[section][key]!r} differs from the run in {workdir} "
                f"({section}.{key}={was!r}); use a new --workdir, or keep "
                f"{section}.{key}={was!r}")


def check_resume_training(workdir: str, config, new_data: bool = False) -> None:
    """What resuming training in ``workdir`` must keep besides the model
    (``check_resume_compatible``): float16's loss scale (a checkpoint of a float16 run
    holds it, others do not), and the run's data (``data.dataset``, ``data.path``), unless
    ``new_data`` says to train the run on other images."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    recorded = read_yaml(path)
    was = (recorded.get("train") or {}).get("mixed_precision", "none")
    now = config.train.mixed_precision
    if was != now and "float16" in (was, now):
        raise ConfigError(f"train.mixed_precision={now} differs from the run in {workdir} "
                          f"(train.mixed_precision={was}): float16 runs keep a loss scale in "
                          f"their checkpoints; keep train.mixed_precision={was}, or use a new "
                          f"--workdir")
    data = recorded.get("data") or {}
    for key in ("dataset", "path"):
        if key in data and data[key] != getattr(config.data, key) and not new_data:
            raise ConfigError(f"data.{key}={getattr(config.data, key)!r} differs from the run "
                              f"in {workdir} (data.{key}={data[key]!r}); keep the run's data, "
                              f"or add --new-data to train it on these images")


def check_image_shape(workdir: str, image_shape: Sequence[int], dataset: str) -> None:
    """Refuses to resume a run on images of another shape."""
    if not os.path.exists(os.path.join(workdir, MODEL_INFO_FILE)):
        return
    saved = tuple(read_model_info(workdir)["image_shape"])
    if saved != tuple(image_shape):
        raise ConfigError(f"{dataset} images are {tuple(image_shape)} but the run in "
                          f"{workdir} was trained on {saved}; use a new --workdir")


def eval_json_path(workdir: str, data_config, split: str) -> str:
    name = data_config.dataset
    if name == "npz":
        name = f"npz_{os.path.splitext(os.path.basename(data_config.path))[0]}"
    return os.path.join(workdir, f"eval_{name}_{split}.json")


def samples_path(workdir: str, name: str) -> str:
    return os.path.join(workdir, SAMPLES_DIR, name)


def check_disk_space(workdir: str, need_bytes: int, what: str) -> None:
    free = shutil.disk_usage(workdir).free
    if free < need_bytes:
        raise ConfigError(f"the disk of --workdir {workdir} has {free / 2**20:.0f} MiB free but "
                          f"{what} need about {need_bytes / 2**20:.0f} MiB; free some space or "
                          f"choose another --workdir")


def remove_leftovers(workdir: str) -> List[str]:
    """Removes what a killed run of this project left behind, recognised by name only:
    export staging directories (``.saved_model_*``, ``.assets_*``) in the workdir,
    ``ckpt-N_temp*`` checkpoint temporaries and ``*.PID.partial`` files. Returns them."""
    removed = []
    # (directory, which of its subdirectories are leftovers)
    for parent, leftover_dir in ((workdir, lambda name: name.startswith(STAGING_PREFIXES)),
                                 (checkpoint_dir(workdir), _CHECKPOINT_TEMP.match)):
        if not os.path.isdir(parent):
            continue
        for name in sorted(os.listdir(parent)):
            path = os.path.join(parent, name)
            if leftover_dir(name) and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            elif _PARTIAL.match(name) and os.path.isfile(path):
                os.remove(path)
                removed.append(path)
    return removed


# -- the lock --------------------------------------------------------------------------------
class WorkdirLock:
    """An exclusive ``flock`` on ``WORKDIR/.lock``, held for the life of a training run.

    The kernel drops it when the process ends however it ends (SIGKILL included), so a
    killed run never leaves a stale lock; the file's content (pid, host) only names the
    holder for the error message.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: Optional[int] = None

    def acquire(self) -> "WorkdirLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise ConfigError(f"{os.path.dirname(self.path)} is in use by another training "
                              f"process ({self.holder()}); wait for it to finish, stop it, or "
                              f"use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip() or "pid unknown"
        except OSError:
            return "pid unknown"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# -- checkpoints -----------------------------------------------------------------------------
@dataclasses.dataclass
class Restored:
    """What ``restore_newest`` used and what it passed over."""
    path: str  # the checkpoint prefix that restored, e.g. .../checkpoints/ckpt-1500
    skipped: List[Tuple[str, str]]  # (newer checkpoint prefix, why it was not used)
    moved: List[str]  # where unreadable checkpoints went (train.py only)

    def describe(self) -> str:
        """One line: which checkpoint, and why newer ones were skipped."""
        line = f"restored {os.path.basename(self.path)}"
        if self.skipped:
            reasons = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in self.skipped)
            line += f" (newer ones skipped: {reasons}"
            if self.moved:
                line += f"; moved to {os.path.dirname(self.moved[0])}"
            line += ")"
        return line


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINT_DIR)


def checkpoint_step(prefix: str) -> int:
    """The optimizer step in a checkpoint's name (train.py saves ``ckpt-STEP``)."""
    return _step_of(prefix)


def _step_of(prefix: str) -> int:
    match = re.search(r"ckpt-(\d+)$", prefix)
    return int(match.group(1)) if match else -1


def find_checkpoints(workdir: str) -> List[str]:
    """Checkpoint prefixes newest first: every ``ckpt-N.index`` on disk, and every entry of
    TensorFlow's ``checkpoint`` record (which may be missing, garbled or name files that are
    gone; the files on disk are what count)."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        return []
    prefixes = {os.path.join(directory, name[:-len(".index")])
                for name in os.listdir(directory) if _CHECKPOINT_INDEX.match(name)}
    record = os.path.join(directory, "checkpoint")
    try:
        with open(record, encoding="utf-8", errors="replace") as f:
            for match in re.finditer(r'model_checkpoint_path: "([^"\n]*)"', f.read()):
                name = os.path.basename(match.group(1))
                if re.fullmatch(r"ckpt-\d+", name):
                    prefixes.add(os.path.join(directory, name))
    except OSError:
        pass
    return sorted(prefixes, key=_step_of, reverse=True)


def _unreadable_reason(prefix: str, error: Exception) -> str:
    if not os.path.exists(prefix + ".index"):
        return "its .index file is missing"
    if not any(n.startswith(os.path.basename(prefix) + ".data-")
               for n in os.listdir(os.path.dirname(prefix))):
        return "its .data file is missing"
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"unreadable ({type(error).__name__}: {first[:120]})"


def restore_newest(checkpoint, workdir: str, *, move_aside: bool,
                   partial: bool = False) -> Optional[Restored]:
    """Restores the newest checkpoint of ``workdir`` that restores completely into
    ``checkpoint`` (a ``tf.train.Checkpoint``), trying older ones when newer ones are
    damaged (missing or truncated files, flipped bytes: TensorFlow checks every tensor's
    CRC32C). ``move_aside`` (the training process, which holds the lock): unreadable newer
    checkpoints go to ``checkpoints/unreadable/`` and TensorFlow's ``checkpoint`` record is
    rewritten to list the readable ones, so the CheckpointManager never deletes or
    overwrites anything because of them. ``partial``: ``checkpoint`` holds only part of
    what was saved (evaluation: the model without its optimizer).

    Returns None when the workdir has no checkpoint files at all. Raises ConfigError when
    checkpoints exist but none restores (nothing is moved then), or when one restores but
    does not fit the model (a foreign checkpoint, or an edited config).
    """
    import tensorflow as tf
    candidates = find_checkpoints(workdir)
    if not candidates:
        return None
    skipped: List[Tuple[str, str]] = []
    for prefix in candidates:
        if not os.path.exists(prefix + ".index"):
            skipped.append((prefix, "its .index file is missing"))
            continue
        try:  # every tensor read back (and CRC32C-checked) before anything is restored
            reader = tf.train.load_checkpoint(prefix)
            for name in reader.get_variable_to_shape_map():
                reader.get_tensor(name)
        except Exception as e:  # noqa: BLE001 - any failure to read means unreadable
            skipped.append((prefix, _unreadable_reason(prefix, e)))
            continue
        misfits = _misfits(checkpoint, reader)
        if misfits:  # found before restoring: TensorFlow would half-restore and warn
            raise _does_not_fit(workdir, prefix, f"{len(misfits)} variables differ, e.g. "
                                                 f"{misfits[0]}")
        try:
            status = checkpoint.restore(prefix)
            if partial:
                status.expect_partial()
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise _does_not_fit(workdir, prefix, f"{type(e).__name__}: "
                                                 f"{str(e).splitlines()[0][:200]}") from None
        moved = _move_aside(workdir, [p for p, _ in skipped]) if move_aside else []
        if move_aside:
            _rewrite_record(workdir, prefix)
        return Restored(prefix, skipped, moved)
    found = ", ".join(f"{os.path.basename(p)} ({why})" for p, why in skipped)
    raise ConfigError(f"{checkpoint_dir(workdir)} holds checkpoints but none restores: "
                      f"{found}. Nothing was changed. Restore them from a backup, or move "
                      f"{checkpoint_dir(workdir)} away (or use a new --workdir) to start over")


def _does_not_fit(workdir: str, prefix: str, why: str) -> ConfigError:
    """The error for a readable checkpoint that does not fit the run's model: the config
    was already checked against the run's, so the checkpoint is foreign (or the recorded
    config was edited)."""
    return ConfigError(
        f"checkpoint {prefix} does not fit the model of the run's {CONFIG_FILE} ({why}): "
        f"was it copied from another run, or {CONFIG_FILE} edited? To resume from an older "
        f"checkpoint, move {os.path.basename(prefix)}.* out of {checkpoint_dir(workdir)}")


def _misfits(checkpoint, reader) -> List[str]:
    """What of ``checkpoint``'s existing variables a saved checkpoint (``reader``) lacks or
    holds in another shape, model variables first, e.g. ``model.layers.0.kernel: [1, 3, 8,
    16] in the checkpoint, [3, 3, 4, 8] here``. Walks our objects and the saved object
    graph side by side, child name by child name, as ``restore`` matches them."""
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2
    shapes = reader.get_variable_to_shape_map()
    if "_CHECKPOINTABLE_OBJECT_GRAPH" not in shapes:
        return []  # not an object-based checkpoint: restore says what is wrong
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    view = tf.train.TrackableView(checkpoint)
    found, queue, seen = [], collections.deque([(checkpoint, 0, "")]), set()
    while queue:
        obj, node_id, path = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        node = graph.nodes[node_id]
        if isinstance(obj, tf.Variable):
            keys = [a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"]
            want = obj.shape.as_list()
            saved_shape = shapes.get(keys[0]) if keys else None
            if saved_shape is None:
                found.append(f"{path} is not a variable there")
            elif list(saved_shape) != want:
                found.append(f"{path}: {list(saved_shape)} in the checkpoint, {want} here")
        saved = {child.local_name: child.node_id for child in node.children}
        for name, child in view.children(obj).items():
            where = f"{path}.{name}" if path else name
            if name in saved:
                queue.append((child, saved[name], where))
            elif isinstance(child, tf.Variable) or view.children(child):
                found.append(f"{where} is missing")
    return sorted(found, key=lambda line: not line.startswith("model."))


def _move_aside(workdir: str, prefixes: Sequence[str]) -> List[str]:
    """Moves every file of each checkpoint to ``checkpoints/unreadable/`` (never deletes;
    a name already there gets a numbered suffix)."""
    directory = checkpoint_dir(workdir)
    target = os.path.join(directory, UNREADABLE_DIR)
    moved = []
    for prefix in prefixes:
        base = os.path.basename(prefix)
        for name in sorted(os.listdir(directory)):
            if name == base + ".index" or name.startswith(base + ".data-"):
                os.makedirs(target, exist_ok=True)
                dest, n = os.path.join(target, name), 1
                while os.path.exists(dest):
                    dest, n = os.path.join(target, f"{name}.{n}"), n + 1
                os.replace(os.path.join(directory, name), dest)
                moved.append(dest)
    return moved


def _rewrite_record(workdir: str, latest: str) -> None:
    """TensorFlow's ``checkpoint`` record: every readable-looking checkpoint on disk, oldest
    first, with ``latest`` (the one restored) last, each with its time (its index file's)
    and a preserved time before all of them: the CheckpointManager started on the record
    rotates them (``train.keep_checkpoints``), as it rotates its own saves, however often
    a run is resumed. Written atomically."""
    directory = checkpoint_dir(workdir)
    on_disk = [p for p in reversed(find_checkpoints(workdir))
               if os.path.exists(p + ".index") and _step_of(p) <= _step_of(latest)]
    times = [os.path.getmtime(p + ".index") for p in on_disk]
    lines = [f'model_checkpoint_path: "{os.path.basename(latest)}"']
    lines += [f'all_model_checkpoint_paths: "{os.path.basename(p)}"' for p in on_disk]
    lines += [f"all_model_checkpoint_timestamps: {t:.6f}" for t in times]
    lines.append(f"last_preserved_timestamp: {min(times, default=1.0) - 1.0:.6f}")
    write_text_atomically(os.path.join(directory, "checkpoint"), "\n".join(lines) + "\n")
