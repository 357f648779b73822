"""pip constraints that keep the system's NumPy ABI: print them for the system Python (or for a given NumPy).

    /usr/bin/python3 deploy/constraints.py > constraints.txt          # what this machine's system Python has
    python3 deploy/constraints.py --numpy 1.21.5                       # JetPack 6's, for example
    pip install -c constraints.txt 'edge-agent @ file:///path/to/edge-agent'

On a Jetson, TensorRT's Python bindings (python3-libnvinfer) and OpenCV with GStreamer (python3-opencv) come from
JetPack's apt packages, compiled against the system's NumPy 1.x. A virtual environment that sees the system's site
packages (deploy/install.sh makes one) must never get a NumPy of another major version from pip: NumPy 2 makes
every module built against 1.x fail to import ("A module that was compiled using NumPy 1.x cannot be run in
NumPy 2..."), and a NumPy older than the system's breaks modules built against the newer one. A newer 1.x is
safe (NumPy's C API is backward compatible within a major version), so the constraint is
`numpy>=<system>,<<major + 1>`; pip then picks the onnx, onnxruntime and ml_dtypes releases that fit it
(docs/install.md has the table per JetPack). No system NumPy: no constraint.

Runs on the system's Python 3.8 or newer, before edge-agent is installed: standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from typing import List, Optional, Tuple


def system_numpy() -> Optional[Tuple[str, str]]:
    """(version, folder) of the NumPy this interpreter imports, without importing it (its metadata)."""
    spec = importlib.util.find_spec("numpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.dirname(next(iter(spec.submodule_search_locations)))
    for name in sorted(os.listdir(folder)):
        match = re.match(r"numpy-(\d[\w.]*?)(?:\.dist-info|\.egg-info)$", name)
        if match:
            return match.group(1), folder
    try:  # no metadata beside it: ask numpy itself
        import numpy

        return str(numpy.__version__), folder
    except Exception:  # a broken NumPy gets no constraint from here; doctor says why it is broken
        return None


def constraints(numpy_version: Optional[str], where: str = "") -> List[str]:
    lines = [
        "# pip constraints from deploy/constraints.py: keep the system's NumPy major version (JetPack's TensorRT and",
        "# OpenCV are built against it). Use: pip install -c THIS_FILE ...",
        f"# Python {sys.version_info[0]}.{sys.version_info[1]}" + (f", system NumPy {numpy_version} ({where})" if numpy_version else ", no system NumPy"),
    ]
    if numpy_version:
        match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", numpy_version)
        if not match:
            raise SystemExit(f"cannot read the NumPy version {numpy_version!r}")
        major = int(match.group(1))
        floor = ".".join(g for g in match.groups() if g is not None)
        lines.append(f"numpy>={floor},<{major + 1}")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--numpy", metavar="VERSION", help="the system's NumPy version (default: the one this Python imports)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    args = parser.parse_args(argv)
    if args.numpy:
        version, where = args.numpy, "given"
    else:
        found = system_numpy()
        version, where = (found[0], found[1]) if found else (None, "")
    text = "\n".join(constraints(version, where)) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
