"""Parsers for the files (and captured command outputs) that tell what a Jetson is.

Each parser takes text (or the raw bytes of a device-tree property), returns what it could read and never
raises on odd input: formats drift between JetPack releases, so a line that does not parse is skipped, not
fatal. The samples they were written against are in ../shared/testdata/real/device_identity_samples.txt.
"""

from __future__ import annotations

import json
import re
from typing import Dict, List, Optional, Tuple, Union

from agent.device.tables import normalise_soc

# '# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ...'
_TEGRA_RELEASE = re.compile(r"^\s*#*\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", re.MULTILINE)
_PART = re.compile(r"(?<![0-9])p?(\d{4})[-:](\d{4})(?![0-9])", re.IGNORECASE)


def parse_nv_tegra_release(text: str) -> Dict[str, str]:
    """/etc/nv_tegra_release -> {'l4t': '36.4.3', 'board': 'generic', 'arch': 'aarch64', 'kernel_variant': ...}.

    'REVISION: 5' (no minor) gives '32.5' rather than inventing a patch number."""
    out: Dict[str, str] = {}
    match = _TEGRA_RELEASE.search(text)
    if not match:
        return out
    release, revision, patch = match.group(1), match.group(2), match.group(3)
    out["l4t"] = f"{release}.{revision}" + (f".{patch}" if patch is not None else "")
    line = text[match.start() : text.find("\n", match.start()) if "\n" in text[match.start() :] else len(text)]
    for key, name in (("BOARD", "board"), ("EABI", "arch"), ("GCID", "gcid")):
        field = re.search(rf"{key}:\s*([^,\s]+)", line)
        if field:
            out[name] = field.group(1)
    variant = re.search(r"KERNEL_VARIANT:\s*(\S+)", text)
    if variant:
        out["kernel_variant"] = variant.group(1)
    return out


def dt_text(data: Union[bytes, str]) -> str:
    """A device-tree string property: NUL-terminated (and NUL-separated for lists) -> one readable string."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return " ".join(part.strip() for part in data.split("\x00") if part.strip())


def dt_list(data: Union[bytes, str]) -> List[str]:
    """A NUL-separated device-tree list. Copies where the NULs were lost or became ', ' are split as well as
    can be done: 'nvidia,p3767-0000nvidia,tegra234' -> ['nvidia,p3767-0000', 'nvidia,tegra234']."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    items: List[str] = []
    for chunk in re.split(r"[\x00\n]|,\s+", data):
        chunk = chunk.strip()
        if not chunk:
            continue
        # vendor prefixes glued together when the NULs were dropped: split before each 'vendor,'
        pieces = re.split(r"(?<=[0-9a-z\-+])(?=(?:nvidia|oe4t|ti|arm),)", chunk)
        items.extend(piece for piece in pieces if piece)
    return items


def soc_from_compatible(entries: List[str]) -> Optional[str]:
    for entry in entries:
        soc = normalise_soc(entry) if "tegra" in entry.lower() else None
        if soc:
            return soc
    return None


def part_numbers(text: str) -> List[str]:
    """Every 'pNNNN-NNNN' (or 'NNNN-NNNN', 'NNNN:NNNN') in the text, normalised to 'p3767-0000', in order."""
    seen: List[str] = []
    for match in _PART.finditer(text):
        part = f"p{match.group(1)}-{match.group(2)}"
        if part not in seen:
            seen.append(part)
    return seen


def parse_dpkg_status(text: str) -> Dict[str, Tuple[str, str]]:
    """/var/lib/dpkg/status -> {package: (version, architecture)} for installed packages."""
    packages: Dict[str, Tuple[str, str]] = {}
    for stanza in re.split(r"\n\s*\n", text):
        fields: Dict[str, str] = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith((" ", "\t")):
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
        name = fields.get("package")
        version = fields.get("version")
        status = fields.get("status", "install ok installed")
        if name and version and "installed" in status and "not-installed" not in status:
            packages[name] = (version, fields.get("architecture", ""))
    return packages


def upstream_version(debian_version: str) -> str:
    """'1:10.3.0.30-1+cuda12.5' -> '10.3.0.30'; '6.2+b77' -> '6.2'; '5.1.2-b104' -> '5.1.2'."""
    version = debian_version.split(":", 1)[-1]
    version = re.split(r"[-+~]", version, maxsplit=1)[0]
    return version.strip()


def parse_cuda_version_json(text: str) -> Optional[str]:
    """/usr/local/cuda/version.json: {"cuda": {"name": "CUDA SDK", "version": "12.6.1"}, ...}."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict):
        cuda = data.get("cuda")
        if isinstance(cuda, dict) and isinstance(cuda.get("version"), str):
            return str(cuda["version"])
        cudart = data.get("cuda_cudart")
        if isinstance(cudart, dict) and isinstance(cudart.get("version"), str):
            return str(cudart["version"])
    return None


def parse_cuda_version_txt(text: str) -> Optional[str]:
    """Older /usr/local/cuda/version.txt: 'CUDA Version 10.2.300'."""
    match = re.search(r"CUDA Version\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def _defines(text: str) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for match in re.finditer(r"^\s*#\s*define\s+(\w+)\s+([^\s/]+)", text, re.MULTILINE):
        values[match.group(1)] = match.group(2)
    return values


def _resolve(values: Dict[str, str], name: str) -> Optional[str]:
    """Follow '#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE' style indirections to a number."""
    seen = 0
    value = values.get(name)
    while value is not None and not value.isdigit() and seen < 5:
        value = values.get(value)
        seen += 1
    return value if value is not None and value.isdigit() else None


def parse_nvinfer_version_header(text: str) -> Optional[str]:
    """NvInferVersion.h -> '8.5.2.2' (or '10.9' when only MAJOR and MINOR are there)."""
    values = _defines(text)
    parts: List[str] = []
    for field in ("MAJOR", "MINOR", "PATCH", "BUILD"):
        value = _resolve(values, f"NV_TENSORRT_{field}")
        if value is None:
            break
        parts.append(value)
    return ".".join(parts) if parts else None


def parse_cudnn_version_header(text: str) -> Optional[str]:
    values = _defines(text)
    parts: List[str] = []
    for field in ("CUDNN_MAJOR", "CUDNN_MINOR", "CUDNN_PATCHLEVEL"):
        value = _resolve(values, field)
        if value is None:
            break
        parts.append(value)
    return ".".join(parts) if parts else None


def parse_jetson_release(text: str) -> Dict[str, str]:
    """The output of jetson-stats' `jetson_release` (2.x and 4.x layouts) -> whatever it states.

    Keys: model, jetpack, l4t, part_number, module, soc, compute_capability, cuda, cudnn, tensorrt,
    power_mode, power_mode_id. jetson-stats' own bugs are left for the caller to judge (it sometimes prints
    the JetPack version as the TensorRT version)."""
    out: Dict[str, str] = {}

    def grab(key: str, pattern: str, flags: int = re.MULTILINE) -> None:
        match = re.search(pattern, text, flags)
        if match and key not in out:
            out[key] = match.group(1).strip()

    grab("model", r"^\s*-?\s*Model:\s*(.+?)(?:\s+-\s+Jetpack.*)?\s*$")
    grab("model", r"^\s*-\s*(NVIDIA Jetson[^\n]*)$")
    grab("jetpack", r"Jetpack\s+(\d+(?:\.\d+)*(?:\s+DP)?)")
    grab("l4t", r"\[?L4T:?\s+(\d+(?:\.\d+)+)")
    grab("part_number", r"P-Number:\s*(p\d{4}-\d{4})", re.IGNORECASE)
    grab("module", r"^\s*[-*]?\s*Module:\s*(.+?)\s*$")
    grab("soc", r"(?:SOC Family|SoC):\s*(tegra\w+)")
    grab("compute_capability", r"(?:ARCH_BIN\)|Arch BIN):\s*(\d+\.\d+)")
    grab("cuda", r"^\s*[-*]\s*CUDA:\s*(\d+(?:\.\d+)+)")
    grab("cudnn", r"cuDNN:\s*(\d+(?:\.\d+)+)")
    grab("tensorrt", r"TensorRT:\s*(\d+(?:\.\d+)+)")
    power = parse_nvpmodel_query(text)
    if power is not None:
        out["power_mode"] = power[0]
        if power[1] is not None:
            out["power_mode_id"] = str(power[1])
    if "module" in out:
        parts = part_numbers(out["module"])
        if parts and re.match(r"^p?\d{4}-\d{4}", out["module"], re.IGNORECASE):
            out.setdefault("part_number", parts[0])  # jetson-stats 2.x: 'Module: P3448-0000 - Board: P3449-0000'
            del out["module"]
        else:
            out["module"] = re.sub(r"\s*\(Developer Kit Version\)", "", out["module"])
    if "soc" in out:
        soc = normalise_soc(out["soc"])
        if soc:
            out["soc"] = soc
        else:
            del out["soc"]
    return out


def parse_nvpmodel_query(text: str) -> Optional[Tuple[str, Optional[int]]]:
    """`nvpmodel -q` (or the jetson_clocks / jetson_release line) -> (mode name, mode id or None).

    With several queries in one capture the last one wins. 'NV Power Mode[0]: MAXN' carries the id in brackets;
    `nvpmodel -q` prints it on the next line; 'Type: 0' in jetson-stats 2.x."""
    result: Optional[Tuple[str, Optional[int]]] = None
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = re.search(r"NV Power Mode(?:\[(\d+)\])?:\s*([A-Za-z0-9_.\-]+)(?:\s*-\s*Type:\s*(\d+))?", line)
        if not match:
            continue
        mode_id: Optional[int] = None
        if match.group(1) is not None:
            mode_id = int(match.group(1))
        elif match.group(3) is not None:
            mode_id = int(match.group(3))
        elif index + 1 < len(lines) and lines[index + 1].strip().isdigit():
            mode_id = int(lines[index + 1].strip())
        result = (match.group(2), mode_id)
    return result


def parse_nvpmodel_status(status: str, conf: Optional[str]) -> Optional[Tuple[str, Optional[int]]]:
    """/var/lib/nvpmodel/status ('pmode:0002 fmode:quiet') + /etc/nvpmodel.conf ('< POWER_MODEL ID=2 NAME=15W >')."""
    match = re.search(r"pmode:\s*(\d+)", status)
    if not match:
        return None
    mode_id = int(match.group(1))
    name: Optional[str] = None
    if conf:
        for found in re.finditer(r"POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)", conf):
            if int(found.group(1)) == mode_id:
                name = found.group(2)
    return (name or f"mode {mode_id}", mode_id)


def module_from_model(model: str) -> Optional[str]:
    """'NVIDIA Jetson Orin NX Engineering Reference Developer Kit' -> 'Jetson Orin NX'; 'jetson_tx1' -> 'Jetson TX1'."""
    text = model.replace("_", " ").strip()
    match = re.search(r"jetson\s+(.*)", text, re.IGNORECASE)
    if not match:
        return None
    rest = match.group(1)
    rest = re.split(r"\s+(?:Engineering Reference\s+)?Developer Kit|\s+Devkit|\s+\(", rest, maxsplit=1, flags=re.IGNORECASE)[0]
    words = [w.upper() if re.fullmatch(r"(tx\d|nx|agx)", w, re.IGNORECASE) else w for w in rest.split()]
    return ("Jetson " + " ".join(words)).strip() if words else "Jetson"


def module_from_jetson_release(module: str) -> str:
    """'NVIDIA Jetson Orin NX (16GB ram)' -> 'Jetson Orin NX 16GB'."""
    text = re.sub(r"^NVIDIA\s+", "", module.strip())
    text = re.sub(r"\s*\((\d+\s*GB)\s*ram\)", lambda m: " " + m.group(1).replace(" ", ""), text, flags=re.IGNORECASE)
    return text.strip()
