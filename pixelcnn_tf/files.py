"""Writing the user's files: atomic writes (a reader, or a crash, sees the old file or the
new one, never half; the one owner of the ``.partial`` temporaries that workdir.py cleans
up after a crash), and the checks of an output before any long work (no TensorFlow here,
so decompress.py refuses an output at once).
"""
from __future__ import annotations

import os
from typing import Sequence

from pixelcnn_tf.errors import DataError

PARTIAL_SUFFIX = ".partial"  # f"{path}.{pid}.partial" while a write is in flight


def write_bytes_atomically(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old or the new file, never half."""
    partial = f"{path}.{os.getpid()}{PARTIAL_SUFFIX}"
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_text_atomically(path: str, text: str) -> None:
    """``write_bytes_atomically`` for text (UTF-8)."""
    write_bytes_atomically(path, text.encode("utf-8"))


def check_unique_names(names: Sequence[str], where: str) -> None:
    """Refuses image names that repeat, or differ only in case (one would overwrite the
    other on a case-insensitive file system)."""
    seen = {}
    for name in names:
        other = seen.get(name.lower())
        if other is not None:
            same = "twice" if other == name else f"and {other!r}, which differ only in case"
            raise DataError(f"{where} names {name!r} {same}: one image would overwrite the "
                            f"other; rename one, or use an .npz")
        seen[name.lower()] = name


def check_image_output(path: str, count: int, names=None, overwrite: bool = False) -> list:
    """Everything ``save_image_files`` would refuse, checked before any long work: an
    existing output (without ``overwrite``), names that are not plain, repeat or collide
    in case, a file where a folder is needed, a location that is not writable. Returns
    the PNG names (``names``, or 000000.png, ... in order; [] for an .npz)."""
    if path.lower().endswith(".npz"):
        if os.path.exists(path) and not overwrite:
            raise DataError(f"{path} exists; choose another output or add --force to "
                            f"replace it")
        _check_writable(os.path.dirname(os.path.abspath(path)))
        return []
    names = list(names) if names is not None else [f"{i:06d}.png" for i in range(count)]
    bad = [n for n in names if os.path.basename(n) != n or not n.lower().endswith(".png")
           or "\0" in n]
    if bad:
        raise DataError(f"refusing to write {bad[0]!r}: image names must be plain .png file "
                        f"names; write to an .npz instead")
    check_unique_names(names, "the images to write")
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"{path} is a file; give a folder for PNGs or a name ending in .npz")
    clashes = [n for n in names if os.path.exists(os.path.join(path, n))]
    if clashes and not overwrite:
        raise DataError(f"{path} already holds {clashes[0]}"
                        f"{f' and {len(clashes) - 1} more' if len(clashes) > 1 else ''} of "
                        f"the images to write; choose another folder or add --force")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):  # the folder, or where it will be made
        existing = os.path.dirname(existing)
    _check_writable(existing)
    return names


def _check_writable(directory: str) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DataError(f"{directory} is not writable; choose another output")
