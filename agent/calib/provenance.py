"""The provenance sidecar of a calibration table: `T.cache` -> `T.cache.json`, what `calib make` writes beside the
table (and what calibtables/*.cache.json hold): the table's sha256 and header, the model's and the frames'
sha256, the preprocessing, the method, the command line, the library versions, and for `--method auto` the
comparison of every candidate method on the validation set (added by the caller under "selection").

A table means something only with the exact model it was made from, so the sidecar names that model by hash.
"""

from __future__ import annotations

import hashlib
import platform
import shlex
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from agent.calib.table import CalibTable, table_stats
from agent.lazy import try_import
from agent.store.atomic import atomic_write_json
from agent.store.hashing import sha256_bytes, sha256_file

PathLike = Union[str, Path]


def sidecar_path(table_path: PathLike) -> Path:
    """`T.cache` -> `T.cache.json`."""
    path = Path(table_path)
    return path.with_name(path.name + ".json")


def source_digest(source: PathLike) -> Optional[str]:
    """sha256 of a frame source: the file's own, or for a folder the hash of its sorted `name sha256` lines
    (so the same images give the same digest wherever the folder lies); None when it cannot be read."""
    path = Path(source)
    try:
        if path.is_file():
            return sha256_file(path)
        if path.is_dir():
            lines = [f"{p.relative_to(path).as_posix()} {sha256_file(p)}\n" for p in sorted(path.rglob("*")) if p.is_file()]
            return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
    except OSError:
        return None
    return None


def library_versions() -> Dict[str, str]:
    """The versions that decide the table's last bits: onnxruntime, OpenCV (frame decoding and resizing), numpy."""
    found = {"python": platform.python_version()}
    for label, module_name in (("onnxruntime", "onnxruntime"), ("opencv", "cv2"), ("numpy", "numpy")):
        module = try_import(module_name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version:
            found[label] = str(version)
    return found


def table_provenance(
    table_path: PathLike,
    table: CalibTable,
    data: bytes,
    *,
    model_path: PathLike,
    sources: Sequence[PathLike],
    per_source: int,
    frames: int,
    preprocess: Any,
    method: str,
    argv: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """The sidecar's content for a table just written as `data` to `table_path`."""
    stats = table_stats(table)
    record: Dict[str, Any] = {
        "table": Path(table_path).name,
        "sha256": sha256_bytes(data),
        "header": table.header,
        "entries": stats.entries,
        "degenerate": {kind: names for kind, names in stats.degenerate.items() if names},
        "model": {"file": Path(model_path).name, "sha256": sha256_file(model_path)},
        "frames": {
            "sources": {Path(source).name: source_digest(source) for source in sources},
            "per_source": per_source,
            "count": frames,
        },
        "preprocess": preprocess,
        "method": method,
        "made_with": library_versions(),
    }
    if argv is not None:
        record["command"] = "edge-agent " + " ".join(shlex.quote(str(a)) for a in argv)
    return record


def write_provenance(table_path: PathLike, record: Mapping[str, Any]) -> Path:
    """Write the sidecar atomically; returns its path."""
    path = sidecar_path(table_path)
    atomic_write_json(path, dict(record))
    return path
