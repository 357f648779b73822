"""`edge-agent device`: what this machine is (module, L4T, JetPack, TensorRT, CUDA, compute capability, DLA)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.cli.options import add_json_flag
from agent.cli.output import print_json, print_table
from agent.device.fingerprint import fingerprint
from agent.engine.hardware_class import device_classes
from agent.errors import UsageError

# Printed first, in this order; the JSON always has them, null where unknown.
MAIN_FIELDS = ("l4t", "jetpack", "module", "soc", "tensorrt", "cuda", "compute_capability", "dla_cores")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "device",
        description="Read the device's identity from /etc/nv_tegra_release, the device tree, dpkg, CUDA and TensorRT "
        "files. --sysroot reads the same files under another folder (a copy of a device's files).",
    )
    add_json_flag(parser)
    parser.add_argument("--sysroot", metavar="DIR", help="read the device files under DIR instead of /")
    parser.add_argument("--no-probe", action="store_true", help="do not import TensorRT/onnxruntime or query NVML")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    root = Path(args.sysroot) if args.sysroot else Path("/")
    if args.sysroot and not root.is_dir():
        raise UsageError(f"--sysroot {args.sysroot}: not a folder")
    fp = fingerprint(root, probe_libraries=not args.no_probe)
    data = fp.to_dict()
    classes = device_classes(fp)  # the plan-sharing class per usable target (docs/engines.md)
    if args.json:
        ordered = {name: data[name] for name in MAIN_FIELDS}
        ordered.update({k: v for k, v in data.items() if k not in ordered})
        ordered["hardware_classes"] = classes
        print_json(ordered)
        return 0
    rows = []
    for name in MAIN_FIELDS + tuple(k for k in data if k not in MAIN_FIELDS and k not in ("sources", "notes")):
        value = data[name]
        rows.append((name, "-" if value is None else value, fp.sources.get(name, "")))
    rows += [(f"class ({target})", item["key"], "fingerprint + target") for target, item in classes.items()]
    print_table(("field", "value", "from"), rows)
    for note in fp.notes:
        sys.stdout.write(f"note: {note}\n")
    return 0
