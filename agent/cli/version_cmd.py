"""`edge-agent version`: the agent's version and the versions of what it runs on."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any, Dict

from agent import __version__
from agent.cli.options import add_json_flag
from agent.cli.output import print_json
from agent.lazy import module_version


def version_info() -> Dict[str, Any]:
    return {
        "schema": 1,
        "agent": __version__,
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "modules": {
            name: module_version(name)
            for name in ("numpy", "onnx", "onnxruntime", "cv2", "paho.mqtt", "tensorrt", "pycuda", "psutil")
        },
    }


def register(sub: Any) -> None:
    parser = sub.add_parser("version")
    add_json_flag(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    info = version_info()
    if args.json:
        print_json(info)
    else:
        print(f"edge-agent {info['agent']} (Python {info['python']}, {info['platform']})")
        for name, version in info["modules"].items():
            print(f"  {name:12s} {version or '-'}")
    return 0
