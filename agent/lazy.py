"""Lazy imports of heavy or optional modules, failing only when used, with a message that says how to get them.

TensorRT and pycuda exist only on the device (JetPack); onnxruntime and cv2 only where the `cpu` extra is
installed. Nothing in the core imports them at module level.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, Optional

from agent.errors import AgentError

INSTALL_HINTS: Dict[str, str] = {
    "tensorrt": "TensorRT comes with JetPack (python3-libnvinfer); it is never installed from pip",
    "pycuda": "install the 'jetson' extra: pip install 'edge-agent[jetson]' (needs the CUDA toolkit)",
    "onnxruntime": "install the 'cpu' extra: pip install 'edge-agent[cpu]'",
    "cv2": "install the 'cpu' extra (opencv-python-headless), or use JetPack's python3-opencv on a Jetson",
    "pynvml": "install the 'nvml' extra: pip install 'edge-agent[nvml]'",
    "onnx": "pip install onnx",
}


class MissingDependency(AgentError):
    """An optional module the requested feature needs is not installed."""


def try_import(name: str) -> Optional[ModuleType]:
    """Import `name` or return None. A namespace package with no code (for example `tensorrt` when only
    `tensorrt-stubs` is installed) counts as absent."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    except Exception:  # a broken native extension raises anything; treat it as absent and let require() explain
        return None
    if getattr(module, "__file__", None) is None and not hasattr(module, "__version__"):
        return None
    return module


def require(name: str, feature: str) -> ModuleType:
    """Import `name` for `feature`, or raise MissingDependency with the way to get it."""
    module = try_import(name)
    if module is None:
        hint = INSTALL_HINTS.get(name, f"pip install {name}")
        raise MissingDependency(f"{feature} needs the Python module '{name}', which is not installed: {hint}")
    return module


def module_version(name: str) -> Optional[str]:
    """The module's __version__ if it imports, else None. Never raises."""
    module = try_import(name)
    if module is None:
        return None
    version = getattr(module, "__version__", None)
    return str(version) if version is not None else None
