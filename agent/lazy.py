"""Lazy imports of heavy or optional modules, failing only when used, with a message that says why and how to fix it.

TensorRT and pycuda exist only on the device (JetPack); onnxruntime and cv2 only where the `cpu` extra is
installed or JetPack/the distribution provides them. Nothing in the core imports them at module level.

This module is the ONE place that tells "not installed" from "installed but fails to import", and names the cause
it can see: a NumPy ABI mismatch (a module built against NumPy 1.x under NumPy 2, or the reverse), a missing
shared library (`libnvinfer.so.10`, `libcudart.so.12`), a library built for another architecture, a pycuda built
against another CUDA, a symbol missing from a library of another version. `edge-agent doctor`, `require()` (the
runners, the builders, the gate, the cameras: the daemon's `last_error`) all print the same `ImportProblem`.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import importlib.util
import io
import os
import platform
import re
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from agent.errors import AgentError

if TYPE_CHECKING:
    import importlib.metadata as metadata

INSTALL_HINTS: Dict[str, str] = {
    "tensorrt": "TensorRT comes with JetPack (python3-libnvinfer); it is never installed from pip",
    "pycuda": "install the 'jetson' extra: pip install 'edge-agent[jetson]' (needs the CUDA toolkit)",
    "onnxruntime": "install the 'cpu' extra: pip install 'edge-agent[cpu]'",
    "cv2": "install the 'cpu' extra (opencv-python-headless), or use JetPack's python3-opencv on a Jetson",
    "pynvml": "install the 'nvml' extra: pip install 'edge-agent[nvml]'",
    "onnx": "pip install onnx",
    "numpy": "pip install 'numpy<2' (or the distribution's python3-numpy)",
    "msgspec": "pip install 'msgspec>=0.18.6' (or reinstall edge-agent)",
}

# What to import to know that a module works: `import pycuda` loads only pure Python; its C part is pycuda._driver.
PROBE_TARGET: Dict[str, str] = {"pycuda": "pycuda.driver"}

# The causes, as stable words for JSON and tests.
NOT_INSTALLED = "not-installed"
NUMPY_ABI = "numpy-abi"
MISSING_LIBRARY = "missing-library"
WRONG_ARCHITECTURE = "wrong-architecture"
CUDA_MISMATCH = "cuda-mismatch"
LIBRARY_VERSION = "library-version"
MISSING_MODULE = "missing-module"
IMPORT_ERROR = "import-error"

ELF_MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
HOST_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "armv7l": "arm", "armv8l": "arm", "i686": "i386"}

_NUMPY_ABI_PATTERNS = (
    "compiled using numpy 1.x cannot be run in",
    "numpy.core.multiarray failed to import",
    "numpy._core.multiarray failed to import",
    "numpy.core._multiarray_umath failed to import",
    "_array_api not found",
    "module compiled against abi version",
    "module compiled against api version",
    "numpy.dtype size changed, may indicate binary incompatibility",
)
_MISSING_LIBRARY = re.compile(r"([\w./+-]*?[\w+-]+\.so(?:\.[\w.]+)?): cannot open shared object file")
_UNDEFINED_SYMBOL = re.compile(r"undefined symbol: (\S+)")
_GLIBC_VERSION = re.compile(r"version [`'](GLIBC[X]*_[\d.]+)' not found")
_NUMPY_RUNNING = re.compile(r"cannot be run in\s+numpy ([\d][\w.]*)", re.IGNORECASE)
_ABI_VERSIONS = re.compile(r"compiled against (ABI|API) version (0x[0-9a-f]+) but this version of numpy is (0x[0-9a-f]+)", re.IGNORECASE)
_CUDA_LIBRARY = re.compile(r"^lib(cudart|cublas|cublasLt|cufft|curand|cusparse|cusolver|nvrtc)\.so\.(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class ImportProblem:
    """Why `module` cannot be used: `cause` is one of the words above, `detail` one sentence, `fix` what to run."""

    module: str
    cause: str
    detail: str
    fix: str

    @property
    def installed(self) -> bool:
        return self.cause != NOT_INSTALLED

    def message(self) -> str:
        return f"{self.detail}. Fix: {self.fix}" if self.fix else self.detail


class MissingDependency(AgentError):
    """An optional module the requested feature needs is not installed, or is installed and fails to import."""

    def __init__(self, message: str, problem: Optional[ImportProblem] = None) -> None:
        super().__init__(message)
        self.problem = problem


# Modules loaded on first use ----------------------------------------------------------------------------------------
class Deferred(ModuleType):
    """A stand-in for a module that is imported on the first access to one of its attributes (thread-safe), after
    which its attributes are the module's own (plain lookups, no cost per access). It is not in sys.modules
    until then: an ordinary `import` elsewhere loads the module as usual."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_deferred_lock"] = threading.Lock()

    @property
    def loaded(self) -> bool:
        return "__spec__" in self.__dict__ and self.__dict__["__spec__"] is not None

    def __getattr__(self, attr: str) -> Any:
        with self.__dict__["_deferred_lock"]:
            if not self.loaded:
                module = importlib.import_module(self.__name__)
                self.__dict__.update(module.__dict__)
        return getattr(sys.modules[self.__name__], attr)


def deferred(name: str) -> Any:
    """Module `name`, imported when first used. For the heavy modules that the deployment path needs at module
    level (numpy, cryptography) but an idle agent must not load (issue 13: 40 MB RSS): modules on the daemon's
    import path bind them with `np = deferred("numpy")` behind `if TYPE_CHECKING: import numpy as np`, so the
    type checker sees the real module. Attribute access loads it; the ImportError of a missing module surfaces
    there."""
    return Deferred(name)


# A failed import is classified once per process: a second attempt can fail differently (OpenCV's loader reports
# "recursion is detected" the second time, a half-initialized extension cannot be loaded again).
_FAILED: Dict[str, ImportProblem] = {}
_LOCK = threading.RLock()


def probe(name: str) -> Tuple[Optional[ModuleType], Optional[ImportProblem]]:
    """Import `name`: (module, None) when it works, (None, why) when it does not. Never raises.

    A namespace package with no code (for example `tensorrt` when only `tensorrt-stubs` is installed) counts as
    not installed. What the import prints on stderr (NumPy 2 prints a long warning before failing) is captured
    and used for the diagnosis instead of being spilled on the terminal."""
    if name in _FAILED:
        return None, _FAILED[name]
    target = PROBE_TARGET.get(name, name)
    module = sys.modules.get(name) if target in sys.modules else None
    if module is None:
        # One import at a time: sys.stderr is process-wide, and two threads swapping it would lose it for good.
        with _LOCK:
            if name in _FAILED:
                return None, _FAILED[name]
            captured = io.StringIO()
            try:
                with contextlib.redirect_stderr(captured):
                    importlib.import_module(target)
                    module = importlib.import_module(name)
            except Exception as exc:  # a broken native extension raises anything (ImportError, AttributeError...)
                problem = classify(name, exc, captured.getvalue())
                _FAILED[name] = problem
                return None, problem
    if getattr(module, "__file__", None) is None and not hasattr(module, "__version__"):
        problem = _not_installed(name, "only a namespace package without code (type stubs?) is installed")
        _FAILED[name] = problem
        return None, problem
    return module, None


def try_import(name: str) -> Optional[ModuleType]:
    """Import `name` or return None (not installed, or installed and broken: `import_problem` says which)."""
    return probe(name)[0]


def import_problem(name: str) -> Optional[ImportProblem]:
    """Why `name` does not import, or None when it does."""
    return probe(name)[1]


def require(name: str, feature: str) -> ModuleType:
    """Import `name` for `feature`, or raise MissingDependency saying why it cannot be used and how to fix it."""
    module, problem = probe(name)
    if module is not None:
        return module
    assert problem is not None
    raise MissingDependency(f"{feature} needs the Python module '{name}': {problem.message()}", problem)


def broken_imports() -> Dict[str, Dict[str, str]]:
    """The modules this process found installed but failing to import so far, for the daemon's status document:
    {name: {cause, detail, fix}} (imports nothing itself)."""
    return {name: {"cause": p.cause, "detail": p.detail, "fix": p.fix} for name, p in sorted(_FAILED.items()) if p.installed}


def module_version(name: str) -> Optional[str]:
    """The installed version of module `name`, or None when it is not installed. Never raises; imports nothing
    that is not already imported, where it can.

    The status document, `doctor`, the fingerprint and `edge-agent version` ask for the versions of onnxruntime,
    cv2, numpy and TensorRT in every agent, also the idle one that serves nothing: importing them only to read
    `__version__` costs the idle agent some 50 MB of RSS (its budget is 40 MB). So: a module already imported
    answers with its `__version__`; otherwise the version comes from the metadata of the distribution that
    installed it (`DISTRIBUTIONS`, else `importlib.metadata.packages_distributions()` on Python 3.10+). Only a
    module installed without any distribution metadata (Debian/JetPack packages such as python3-opencv or
    python3-libnvinfer may ship none) is imported to read its `__version__`: there is no other place that says
    its version. A version says what is installed, not that it imports: `import_problem(name)` says that."""
    module = sys.modules.get(name)
    if isinstance(module, Deferred) and not module.loaded:
        module = None
    if module is not None and getattr(module, "__version__", None) is not None:
        return str(module.__version__)
    if name in _FAILED:
        return None if not _FAILED[name].installed else _metadata_version(name)
    if not _installed(name):
        return None
    version = _metadata_version(name)
    if version is not None:
        return version
    # No distribution metadata: the module itself is the only source (at the cost of importing it).
    module = try_import(name)
    version = getattr(module, "__version__", None) if module is not None else None
    return str(version) if version is not None else None


if not TYPE_CHECKING:  # ~15 ms of start-up (email, zipfile, csv...) that `edge-agent --help` does not need
    metadata = deferred("importlib.metadata")

# The distributions that install a module, in the order they are tried (Python 3.8 and 3.9 have no
# importlib.metadata.packages_distributions(), and it reads every installed distribution's file list besides).
DISTRIBUTIONS: Dict[str, Tuple[str, ...]] = {
    "numpy": ("numpy",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "cv2": ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"),
    "onnx": ("onnx",),
    "paho.mqtt": ("paho-mqtt",),
    "pycuda": ("pycuda",),
    # pip's TensorRT: the `tensorrt` meta package, the bindings that hold the module, and the libraries (one version)
    "tensorrt": (
        "tensorrt", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings", "tensorrt-cu11-bindings", "tensorrt-bindings",
        "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11", "tensorrt-libs",
    ),
    "msgspec": ("msgspec",),
    "psutil": ("psutil",),
    "pynvml": ("nvidia-ml-py", "pynvml"),
}


# How much of a distribution's version the module's __version__ has: opencv-python 4.10.0.84 is cv2 4.10.0 (the
# last number counts the wheel builds).
VERSION_PARTS: Dict[str, int] = {"cv2": 3}


def _installed(name: str) -> bool:
    """Whether the import system finds module `name` with code (a namespace folder of type stubs does not count),
    without importing it (only its parent packages, as `paho` for `paho.mqtt`)."""
    if name in sys.modules:  # find_spec would read its __spec__
        return True
    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # the parent package fails to import
        return False
    return spec is not None and (spec.origin not in (None, "namespace") or (spec.loader is not None and spec.submodule_search_locations is None))


def _metadata_version(name: str) -> Optional[str]:
    """The version in the metadata of the distribution that installs module `name`, or None if there is none."""
    candidates = list(DISTRIBUTIONS.get(name, ()))
    if not candidates and hasattr(metadata, "packages_distributions"):
        try:
            found = metadata.packages_distributions().get(name.split(".")[0], [])
        except Exception:  # a broken distribution in the path: no answer from metadata
            found = []
        candidates = [d for d in found if not d.endswith("-stubs") and not d.startswith("types-")]
    for distribution in candidates:
        try:
            version = str(metadata.version(distribution))
        except Exception:  # PackageNotFoundError, or unreadable metadata
            continue
        parts = VERSION_PARTS.get(name)
        return ".".join(version.split(".")[:parts]) if parts else version
    return None


# the classification ------------------------------------------------------------------------------------------------
def classify(name: str, exc: BaseException, stderr: str = "") -> ImportProblem:
    """The ImportProblem for `exc`, raised while importing `name` (with what the import printed on stderr)."""
    text = f"{exc}\n{stderr}"
    lowered = text.lower()
    target = PROBE_TARGET.get(name, name)
    missing_name = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if missing_name and (target == missing_name or target.startswith(missing_name + ".") or name == missing_name):
        return _not_installed(name)
    where = getattr(exc, "path", None) or _origin(target)
    broken = f"{name} is installed but fails to import"
    if any(pattern in lowered for pattern in _NUMPY_ABI_PATTERNS):
        return _numpy_abi(name, text, where)
    library = _MISSING_LIBRARY.search(text)
    if library:
        path = library.group(1)
        if os.path.isfile(path):  # the file is there, yet "cannot open": the loader skipped it (another machine)
            built_for = elf_machine(path)
            if built_for and built_for != host_machine():
                return _wrong_architecture(name, path, built_for)
        lib = os.path.basename(path)
        cuda = _CUDA_LIBRARY.match(lib)
        if name == "pycuda" and cuda:
            return _pycuda_cuda(name, f"needs {lib}, which is not here", cuda.group(2))
        return ImportProblem(name, MISSING_LIBRARY, f"{broken}: the shared library {lib} is missing" + (f" (needed by {where})" if where else ""), _library_fix(lib))
    if "wrong elf class" in lowered or "invalid elf header" in lowered or "exec format error" in lowered:
        path = where or "its extension module"
        return _wrong_architecture(name, path, elf_machine(path) or "another architecture")
    symbol = _UNDEFINED_SYMBOL.search(text)
    if symbol:
        if name == "pycuda":
            return _pycuda_cuda(name, f"its extension needs the symbol {symbol.group(1)}, which this CUDA does not have", None)
        return ImportProblem(
            name, LIBRARY_VERSION,
            f"{broken}: {where or 'its extension'} was built against another version of a library it links (undefined symbol {symbol.group(1)})",
            f"reinstall {name} from the same source as the libraries it links (JetPack's apt packages for tensorrt and cv2; {_pip(f'--force-reinstall --no-cache-dir {name}')} for pip packages)",
        )
    glibc = _GLIBC_VERSION.search(text)
    if glibc:
        return ImportProblem(name, LIBRARY_VERSION, f"{broken}: it was built for a newer C library ({glibc.group(1)} not found)", f"install a {name} built for this OS release (an older wheel, or the distribution's package)")
    if isinstance(exc, ModuleNotFoundError) and missing_name:
        return ImportProblem(name, MISSING_MODULE, f"{broken}: it needs the module '{missing_name}', which is not installed", INSTALL_HINTS.get(missing_name.split(".")[0], _pip(missing_name.split(".")[0])))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ImportProblem(name, IMPORT_ERROR, f"{broken}: {type(exc).__name__}: {first}", f"{sys.executable} -c 'import {target}' shows the whole error; reinstall {name}")


def _not_installed(name: str, why: str = "") -> ImportProblem:
    return ImportProblem(name, NOT_INSTALLED, f"{name} is not installed" + (f" ({why})" if why else ""), INSTALL_HINTS.get(name, _pip(name)))


def _pip(arguments: str) -> str:
    """The pip command for the environment this process runs in."""
    return f"{sys.executable} -m pip install {arguments}"


def _origin(module: str) -> Optional[str]:
    try:
        spec = importlib.util.find_spec(module)
    except Exception:  # the parent package itself fails to import
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("built-in", "frozen", "namespace"):
        return spec.origin
    locations = list(spec.submodule_search_locations or [])
    return locations[0] if locations else None


def _numpy_abi(name: str, text: str, where: Optional[str]) -> ImportProblem:
    running, running_at = _running_numpy(text)
    built = "1.x"
    abi = _ABI_VERSIONS.search(text)
    if abi:
        built_major = int(abi.group(2), 16) >> 24 if abi.group(1).upper() == "ABI" else None
        if built_major:
            built = f"{built_major}.x"
    elif "compiled using numpy 1.x" not in text.lower() and running and running.startswith("1."):
        built = "2.x"
    beside = _numpy_beside(where)
    if beside and beside[0].split(".")[0] == built.split(".")[0]:
        built = f"{built} (the NumPy {beside[0]} installed beside it in {beside[1]})"
    detail = (
        f"{name} is installed but fails to import: NumPy ABI mismatch: {name}"
        + (f" ({where})" if where else "")
        + f" was built against NumPy {built}, but this environment imports NumPy {running or '?'}"
        + (f" from {running_at}" if running_at else "")
    )
    if built.startswith("1."):
        fix = _pip('"numpy<2"') + " (keep the system's NumPy major version; see deploy/constraints.py)"
    else:
        fix = f"install a {name} built for NumPy {running or '1.x'} ({_pip(f'--force-reinstall -c constraints.txt {name}')}), or move the environment to NumPy 2"
    return ImportProblem(name, NUMPY_ABI, detail, fix)


def _running_numpy(text: str) -> Tuple[Optional[str], Optional[str]]:
    """The NumPy this process imports: its version and folder."""
    module = sys.modules.get("numpy")
    if module is None:
        with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
            module = importlib.import_module("numpy")
    if module is not None and getattr(module, "__version__", None):
        folder = os.path.dirname(os.path.dirname(os.path.abspath(str(getattr(module, "__file__", "") or ""))))
        return str(module.__version__), folder or None
    match = _NUMPY_RUNNING.search(text)
    return (match.group(1).rstrip("."), None) if match else (None, None)


def numpy_installations(path: Optional[List[str]] = None) -> List[Tuple[str, str]]:
    """Every NumPy on the import path, (version, folder), first the one that wins: a virtual environment's NumPy
    shadows the system's, and the system's modules were built against the shadowed one."""
    found: List[Tuple[str, str]] = []
    for entry in sys.path if path is None else path:
        if not entry or not os.path.isdir(os.path.join(entry, "numpy")):
            continue
        version = _numpy_version_in(entry)
        if version and all(folder != entry for _, folder in found):
            found.append((version, entry))
    return found


def _numpy_version_in(folder: str) -> Optional[str]:
    for pattern in ("numpy-*.dist-info", "numpy-*.egg-info"):
        for candidate in sorted(glob.glob(os.path.join(folder, pattern))):
            match = re.match(r"numpy-([\d][\w.]*?)(?:\.dist-info|\.egg-info)$", os.path.basename(candidate))
            if match:
                return match.group(1)
    version_file = os.path.join(folder, "numpy", "version.py")
    with contextlib.suppress(OSError), open(version_file, encoding="utf-8") as handle:
        match = re.search(r"^(?:full_)?version\s*=\s*['\"]([^'\"]+)['\"]", handle.read(), re.MULTILINE)
        if match:
            return match.group(1)
    return None


def _numpy_beside(where: Optional[str]) -> Optional[Tuple[str, str]]:
    """The NumPy installed in the same site folder as the failing module (the one it was built with)."""
    if not where:
        return None
    folder = os.path.dirname(os.path.abspath(where))
    for version, entry in numpy_installations():
        if folder == entry or folder.startswith(entry.rstrip("/") + "/"):
            return version, entry
    return None


def elf_machine(path: str) -> Optional[str]:
    """The architecture an ELF file is built for ("x86_64", "aarch64", ...), or None if it is not ELF."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    code = int.from_bytes(header[18:20], "little") if header[5] == 1 else int.from_bytes(header[18:20], "big")
    name = ELF_MACHINES.get(code, f"ELF machine {code}")
    return f"32-bit {name}" if header[4] == 1 and name not in ("i386", "arm", "mips", "ppc") else name


def host_machine() -> str:
    machine = platform.machine().lower()
    return HOST_MACHINE_ALIASES.get(machine, machine)


def _wrong_architecture(name: str, path: str, built_for: str) -> ImportProblem:
    return ImportProblem(
        name, WRONG_ARCHITECTURE,
        f"{name} is installed but fails to import: {path} is built for {built_for}, this machine is {host_machine()}",
        f"reinstall {name} for {host_machine()} ({_pip(f'--force-reinstall --no-cache-dir {name}')}, or the distribution's package); never copy a virtual environment between machines",
    )


def _pycuda_cuda(name: str, why: str, built_cuda: Optional[str]) -> ImportProblem:
    here = sorted({m.group(1) for p in glob.glob("/usr/local/cuda*/lib64/libcudart.so.*") for m in [re.search(r"libcudart\.so\.(\d+(?:\.\d+)?)", p)] if m})
    detail = f"pycuda is installed but fails to import: it was built against another CUDA{f' ({built_cuda})' if built_cuda else ''}: {why}"
    if here:
        detail += f"; this system has CUDA runtime {', '.join(here)}"
    fix = ("rebuild it against this CUDA: PATH=/usr/local/cuda/bin:$PATH " + _pip("--force-reinstall --no-binary pycuda --no-cache-dir pycuda"))
    return ImportProblem(name, CUDA_MISMATCH, detail, fix)


def _library_fix(lib: str) -> str:
    if lib.startswith(("libnvinfer", "libnvonnxparser", "libnvparsers")):
        return f"install JetPack's TensorRT libraries (sudo apt install nvidia-tensorrt, which provides {lib}); the Python bindings must match their version"
    if lib.startswith("libcuda.so"):
        return "no NVIDIA driver here: on a Jetson reinstall JetPack (nvidia-l4t-cuda); elsewhere install the NVIDIA driver"
    if _CUDA_LIBRARY.match(lib):
        return f"install the CUDA runtime that provides {lib} (JetPack: sudo apt install nvidia-cuda), or add /usr/local/cuda/lib64 to the library path (ldconfig)"
    return f"install the package that provides {lib} (apt-file search {lib}), or add its folder to the library path (ldconfig)"
