"""Fetch the real TensorRT Python bindings of every version on PyPI and dump each version's API to JSON.

PyPI serves the compiled pybind11 bindings (`tensorrt_bindings/tensorrt.so`, about 1 MB a wheel) without the
TensorRT libraries. For each wheel this module:
1. downloads it once (`pip download --no-deps`) into the cache folder
   `${XDG_CACHE_HOME:-~/.cache}/edge-agent/trt-bindings` (reused between runs);
2. builds C stand-ins for the libnvinfer symbols the module links (`readelf -d` for the NEEDED library
   names, `nm -D --undefined-only` for the symbols, `cc -shared`), so that the module can be imported; a
   stand-in that is ever called ends the process with status 86 and its name, so "nothing is called" is checked;
3. imports it in a child interpreter of the wheel's Python (one TensorRT per process, never two) running
   tests/trt_api/introspect.py, which writes the API (classes, nested classes, enums and their members,
   methods with their pybind11 signatures, `[DEPRECATED]` markers) to `dumps/<version>.json`.

Nothing in TensorRT is ever called: every libnvinfer function is an empty stand-in, and the child reads only
`dir()`, `__doc__` and `__members__`. What this proves and what it does not: docs/tensorrt-api.md.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# (package, version): every TensorRT bindings wheel PyPI has for Linux x86_64. tensorrt-bindings 8.6.1 has a
# cp311 wheel only; the cu12 wheels have cp311 too, so one Python (3.11) imports them all.
WHEELS: List[Tuple[str, str]] = [
    ("tensorrt-bindings", "8.6.1"),
    ("tensorrt-cu12-bindings", "10.0.1"),
    ("tensorrt-cu12-bindings", "10.1.0"),
    ("tensorrt-cu12-bindings", "10.3.0"),
    ("tensorrt-cu12-bindings", "10.8.0.43"),
    ("tensorrt-cu12-bindings", "10.9.0.34"),
    ("tensorrt-cu12-bindings", "10.12.0.36"),
    ("tensorrt-cu12-bindings", "10.13.3.9"),
    ("tensorrt-cu12-bindings", "10.16.1.11"),
    ("tensorrt-cu12-bindings", "11.0.0.114"),
    ("tensorrt-cu12-bindings", "11.4.0.106"),
]
WHEEL_PYTHON = "3.11"
STAND_IN_CALLED = 86  # exit status of a child in which TensorRT called into a stand-in (it must never happen)
INTROSPECT = Path(__file__).with_name("introspect.py")


class BindingsError(RuntimeError):
    """A wheel could not be fetched, linked or imported."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge-agent" / "trt-bindings"


def find_python(version: str = WHEEL_PYTHON) -> str:
    """An interpreter of `version` (the wheels' tag): this one, pyenv's, or `pythonX.Y` on PATH."""
    if "{}.{}".format(*sys.version_info[:2]) == version:
        return sys.executable
    root = os.environ.get("PYENV_ROOT") or os.path.join(os.path.expanduser("~"), ".pyenv")
    for candidate in sorted(glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python")), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("python" + version)
    if found:
        return found
    raise BindingsError(f"no Python {version} found (this one, pyenv, or python{version} on PATH): the bindings wheels are cp311")


def _run(command: List[str], **kwargs: object) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise BindingsError(f"{' '.join(command)} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    return str(done.stdout)


def fetch(package: str, version: str, folder: Path) -> Path:
    """The wheel file, downloaded once with pip (no dependencies, binary only, the cp311 Linux x86_64 tag)."""
    folder.mkdir(parents=True, exist_ok=True)
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if found:
        return found[0]
    _run([
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", WHEEL_PYTHON, "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
        "--dest", str(folder), f"{package}=={version}",
    ])
    found = sorted(folder.glob(pattern))
    if not found:
        raise BindingsError(f"pip downloaded no wheel for {package}=={version}")
    return found[0]


def nvidia_symbols(module: Path) -> Tuple[List[str], List[str]]:
    """(NEEDED libnv* library names, undefined symbols that are neither Python's, libdl's nor versioned libc)."""
    needed = re.findall(r"Shared library: \[(libnv[^\]]+)\]", _run(["readelf", "-d", str(module)]))
    symbols = []
    for line in _run(["nm", "-D", "--undefined-only", str(module)]).splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != "U":
            continue
        name = parts[1]
        if "@" in name or name.startswith(("Py", "_Py", "dl")):
            continue
        symbols.append(name)
    return needed, sorted(set(symbols))


def build_stand_ins(module: Path, folder: Path) -> List[str]:
    """One shared library per NEEDED libnv* name, each defining every such symbol as an empty function."""
    needed, symbols = nvidia_symbols(module)
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "stand_ins.c"
    body = "".join(
        f'void {s}(void) {{ static const char m[] = "libnvinfer stand-in called: {s}\\n"; write(2, m, sizeof m - 1); _exit(STAND_IN_CALLED); }}\n'
        for s in symbols
    )
    source.write_text(f"/* stand-ins: nothing here may be called; a call ends the process with {STAND_IN_CALLED} */\n#include <unistd.h>\n#define STAND_IN_CALLED {STAND_IN_CALLED}\n" + body)
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise BindingsError("no C compiler (cc) to build the libnvinfer stand-ins")
    for library in needed:
        _run([compiler, "-shared", "-fPIC", "-o", str(folder / library), str(source), f"-Wl,-soname,{library}"])
    return symbols


def _fingerprint(wheel: Path) -> str:
    digest = hashlib.sha256(wheel.name.encode() + INTROSPECT.read_bytes())
    return digest.hexdigest()[:16]


def dump_version(package: str, version: str, root: Path, python: str) -> Path:
    """dumps/<version>.json for one wheel (reused while the wheel and introspect.py are unchanged)."""
    wheel = fetch(package, version, root / "wheels")
    out = root / "dumps" / f"{version}.json"
    stamp = _fingerprint(wheel)
    if out.is_file():
        try:
            if json.loads(out.read_text()).get("fingerprint") == stamp:
                return out
        except ValueError:
            pass
    unpacked = root / "unpacked" / version
    shutil.rmtree(unpacked, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    module = unpacked / "tensorrt_bindings" / "tensorrt.so"
    if not module.is_file():
        raise BindingsError(f"{wheel.name} holds no tensorrt_bindings/tensorrt.so")
    stand_ins = unpacked / "stand_ins"
    symbols = build_stand_ins(module, stand_ins)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(stand_ins) + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.pop("PYTHONPATH", None)
    partial = out.with_suffix(".partial")
    done = subprocess.run([python, "-I", str(INTROSPECT), str(unpacked), str(partial)], env=env, timeout=300, capture_output=True, text=True, check=False)
    if done.returncode == STAND_IN_CALLED:
        raise BindingsError(f"TensorRT {version} called a libnvinfer stand-in while importing: {done.stderr.strip()[-500:]}")
    if done.returncode != 0:
        raise BindingsError(f"importing the TensorRT {version} bindings failed ({done.returncode}): {done.stderr[-2000:]}")
    data = json.loads(partial.read_text())
    data.update({"package": package, "wheel": wheel.name, "stand_in_symbols": symbols, "fingerprint": stamp})
    out.write_text(json.dumps(data, sort_keys=True))
    partial.unlink()
    return out


def dump_all(root: Optional[Path] = None, python: Optional[str] = None) -> Dict[str, Dict[str, object]]:
    """{version: dump} for every wheel in WHEELS, each imported in its own child process."""
    root = root or cache_dir()
    interpreter = python or find_python()
    dumps: Dict[str, Dict[str, object]] = {}
    for package, version in WHEELS:
        path = dump_version(package, version, root, interpreter)
        dumps[version] = json.loads(path.read_text())
    return dumps
