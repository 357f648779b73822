"""Atomic file writes: write to a temporary file in the same folder, fsync, rename.

A reader sees the old file or the new one, never half of either; a crash or a full disk leaves the old file
as it was. This is the only way the agent writes files it will read back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write_bytes(path: PathLike, data: bytes, mode: int = 0o644) -> None:
    atomic_write_with(path, lambda handle: handle.write(data), mode)


def atomic_copy(source: PathLike, path: PathLike, mode: int = 0o644, check: Optional[Callable[[str], None]] = None) -> None:
    """Stream `source` into `path` atomically; `check(temporary path)` may raise to refuse the copy (for example
    when the source changed while it was read), leaving `path` as it was."""
    with open(source, "rb") as src:
        atomic_write_with(path, lambda handle: shutil.copyfileobj(src, handle, 1 << 20), mode, check)


def atomic_write_with(
    path: PathLike, write: Callable[[BinaryIO], Any], mode: int = 0o644, check: Optional[Callable[[str], None]] = None
) -> None:
    """Let `write` fill a temporary file beside `path`, fsync it, optionally `check` it, then rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: PathLike, text: str, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: PathLike, obj: Any, mode: int = 0o644) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"), mode)


def atomic_move(src: PathLike, dst: PathLike) -> None:
    """Rename `src` onto `dst` (same filesystem) and make the rename durable."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def fsync_dir(folder: PathLike) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path: PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
