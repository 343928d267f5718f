"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half.
The one owner of the ``.partial`` temporaries that workdir.py cleans up after a crash."""
from __future__ import annotations

import os

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
