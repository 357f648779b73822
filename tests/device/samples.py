"""Split ../shared/testdata/real/device_identity_samples.txt into samples and lay each out as the files it
came from, under a folder used as --sysroot."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List

SECTION_KINDS = (
    ("/etc/nv_tegra_release", "nv_tegra_release"),
    ("/proc/device-tree/model", "device_tree"),
    ("dpkg -l", "dpkg"),
    ("NvInferVersion.h", "nvinfer_header"),
    ("jetson_release", "jetson_release"),
    ("nvpmodel -q", "nvpmodel"),
)


@dataclass
class Sample:
    kind: str
    index: int  # position among the samples of its kind
    header: str  # the '# device: ...' comment
    lines: List[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def split_samples(text: str) -> List[Sample]:
    samples: List[Sample] = []
    kind = ""
    counts = {}
    current = None
    for line in text.splitlines():
        if line.startswith("####"):
            kind = next((k for needle, k in SECTION_KINDS if needle in line), "")
            current = None
            continue
        if not kind:
            continue
        if re.match(r"^# (device|source):", line):
            counts[kind] = counts.get(kind, -1) + 1
            current = Sample(kind, counts[kind], line, [])
            samples.append(current)
            continue
        if not line.strip():
            current = None
            continue
        if current is not None:
            current.lines.append(line)
    return samples


def lay_out(sample: Sample, root: Path) -> Path:
    """Write the sample as the file(s) it was read from, under `root`."""
    def write(relative: str, data: bytes) -> None:
        path = root / relative.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    if sample.kind == "nv_tegra_release":
        write("etc/nv_tegra_release", sample.text.encode())
    elif sample.kind == "device_tree":
        for line in sample.lines:
            match = re.match(r"^(/(?:proc|sys)/\S+):\s*(.*)$", line)
            if match:
                if match.group(2).strip() == "No such file or directory":
                    continue
                write(match.group(1), match.group(2).encode() + b"\x00")  # device-tree strings end in NUL
            elif "," in line:
                write("proc/device-tree/compatible", line.encode() + b"\x00")
            else:
                write("proc/device-tree/model", line.encode() + b"\x00")
    elif sample.kind == "dpkg":
        stanzas = []
        for line in sample.lines:
            fields = line.split(None, 4)
            if len(fields) >= 4 and fields[0] == "ii":
                stanzas.append(
                    f"Package: {fields[1]}\nStatus: install ok installed\nArchitecture: {fields[3]}\nVersion: {fields[2]}\n"
                    f"Description: {fields[4] if len(fields) > 4 else ''}\n"
                )
        write("var/lib/dpkg/status", "\n".join(stanzas).encode())
    elif sample.kind == "nvinfer_header":
        write("usr/include/aarch64-linux-gnu/NvInferVersion.h", sample.text.encode())
    elif sample.kind == "jetson_release":
        write("captures/jetson_release.txt", sample.text.encode())
    elif sample.kind == "nvpmodel":
        write("captures/nvpmodel_q.txt", sample.text.encode())
    else:  # pragma: no cover
        raise ValueError(sample.kind)
    return root
