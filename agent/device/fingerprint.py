"""The device fingerprint: which Jetson (or other machine) this is, and which TensorRT, CUDA and accelerators
it has. Engines are keyed on it and checked against it before every load.

Everything is read from files under a root folder (`/` normally; `--sysroot DIR` reads a copy of a device's
files offline). Each field degrades on its own: an unreadable or odd file leaves its fields null and adds a
note, never an exception. Where a field has several sources the most direct one wins, and `sources` says which:

| field              | sources, best first |
|--------------------|---------------------|
| l4t                | /etc/nv_tegra_release, dpkg nvidia-l4t-core, jetson_release capture |
| jetpack            | dpkg nvidia-jetpack, L4T -> JetPack table (versions.py), jetson_release capture |
| module             | part number (device-tree compatible / boardids / chosen ids) -> table, jetson_release, device-tree model |
| soc                | device-tree compatible, jetson_release, module family |
| tensorrt           | python `tensorrt.__version__` (live only), dpkg libnvinfer*, NvInferVersion.h, jetson_release |
| cuda               | /usr/local/cuda/version.json or version.txt, dpkg cuda-cudart-*, jetson_release |
| compute_capability | SoC table (tegra264 by CUDA major), jetson_release, NVML / nvidia-smi (live, not a Jetson) |
| dla_cores          | TensorRT `num_DLA_cores` (live), DLA device nodes / sysfs / device tree, module table (hint) |

Captured command outputs, for offline inspection, are read from `<root>/captures/jetson_release.txt` and
`<root>/captures/nvpmodel_q.txt` (what `jetson_release -v` and `nvpmodel -q` printed on the device).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from agent.device import identity as src
from agent.device import tables, versions
from agent.lazy import module_version, try_import

log = logging.getLogger(__name__)

MAX_READ = 1 << 20
MAX_DPKG_READ = 64 << 20
CAPTURES = "captures"
ARCH_NAMES = {"arm64": "aarch64", "amd64": "x86_64", "armhf": "armv7l", "i386": "i686"}
# CPU extensions that decide which onnxruntime (MLAS) kernels run, INT8 ones above all (x86: AVX2 without VNNI
# saturates u8*s8 sums; aarch64: dot product and i8mm kernels); /proc/cpuinfo "flags" (x86) or "Features" (arm)
CPU_FEATURES = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16", "fphp", "asimdhp",
)


@dataclass
class DeviceFingerprint:
    is_jetson: bool = False
    module: Optional[str] = None
    part_number: Optional[str] = None
    model: Optional[str] = None
    soc: Optional[str] = None
    l4t: Optional[str] = None
    jetpack: Optional[str] = None
    tensorrt: Optional[str] = None
    cuda: Optional[str] = None
    cudnn: Optional[str] = None
    onnxruntime: Optional[str] = None
    compute_capability: Optional[str] = None
    dla_cores: Optional[int] = None
    gpu: Optional[str] = None
    power_mode: Optional[str] = None
    cpu_arch: Optional[str] = None
    cpu_features: List[str] = field(default_factory=list)  # ISA extensions onnxruntime's kernels pick (agent.engine.hardware_class)
    sources: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> DeviceFingerprint:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        """One line for logs: 'Jetson AGX Orin 64GB, L4T 36.4.3 (JetPack 6.2), TensorRT 10.3.0.30, SM 8.7, 2 DLA'."""
        parts = [self.module or ("Jetson" if self.is_jetson else f"{self.cpu_arch or 'unknown'} machine")]
        if self.l4t:
            parts.append(f"L4T {self.l4t}" + (f" (JetPack {self.jetpack})" if self.jetpack else ""))
        if self.tensorrt:
            parts.append(f"TensorRT {self.tensorrt}")
        if self.compute_capability:
            parts.append(f"SM {self.compute_capability}")
        if self.dla_cores:
            parts.append(f"{self.dla_cores} DLA")
        return ", ".join(parts)


class _Root:
    """Reads files under a root folder; never raises."""

    def __init__(self, root: Path, notes: List[str]) -> None:
        self.root = root
        self.notes = notes

    def path(self, relative: str) -> Path:
        return self.root / relative.lstrip("/")

    def read_bytes(self, relative: str, limit: int = MAX_READ) -> Optional[bytes]:
        path = self.path(relative)
        try:
            with open(path, "rb") as handle:
                return handle.read(limit)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None
        except OSError as exc:
            self.notes.append(f"could not read /{relative.lstrip('/')}: {exc.strerror or exc}")
            return None

    def read_text(self, relative: str, limit: int = MAX_READ) -> Optional[str]:
        data = self.read_bytes(relative, limit)
        return None if data is None else data.decode("utf-8", "replace")

    def first_text(self, candidates: List[str]) -> Optional[str]:
        for candidate in candidates:
            text = self.read_text(candidate)
            if text is not None:
                return text
        return None

    def glob(self, pattern: str) -> List[str]:
        try:
            return sorted(glob.glob(str(self.path(pattern))))
        except OSError:
            return []


class _Builder:
    """Fills a fingerprint field by field, remembering where each value came from (first source wins)."""

    def __init__(self) -> None:
        self.fp = DeviceFingerprint()
        self.reported: Dict[str, str] = {}  # second-hand values (jetson_release) used only to fill gaps late

    def set(self, name: str, value: Any, source: str) -> None:
        if value is None or value == "":
            return
        if getattr(self.fp, name) is None:
            setattr(self.fp, name, value)
            self.fp.sources[name] = source

    def note(self, text: str) -> None:
        if text not in self.fp.notes:
            self.fp.notes.append(text)


def fingerprint(sysroot: Path = Path("/"), probe_libraries: bool = True) -> DeviceFingerprint:
    """Fingerprint the machine whose files are under `sysroot`. Python libraries (TensorRT, onnxruntime) and
    NVML/nvidia-smi are probed only for the live system (`sysroot` is `/`) and when `probe_libraries`."""
    sysroot = Path(sysroot)
    live = sysroot.resolve() == Path("/")
    built = _Builder()
    root = _Root(sysroot, built.fp.notes)
    captures = _read_captures(root)

    if live and probe_libraries:
        _probe_python_libraries(built)
    _read_l4t(root, built)
    dpkg = _read_dpkg(root, built)
    _read_device_tree(root, built)
    _read_headers(root, built)
    _read_cuda(root, built)
    _read_power_mode(root, captures.get("nvpmodel"), built)
    _read_jetson_release(captures.get("jetson_release"), built)
    _derive(built)
    _read_dla(root, built, live and probe_libraries, live)
    if live:
        built.set("cpu_arch", platform.machine() or None, "platform.machine()")
    elif dpkg:
        arches = {arch for _, arch in dpkg.values() if arch not in ("", "all")}
        if len(arches) == 1:
            arch = arches.pop()
            built.set("cpu_arch", ARCH_NAMES.get(arch, arch), "dpkg Architecture")
    if live and probe_libraries and not built.fp.is_jetson:
        _probe_discrete_gpu(built)
    _read_cpu_features(root, built)
    return built.fp


# --- sources -------------------------------------------------------------------------------------------------


def _read_captures(root: _Root) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for name, candidates in (
        ("jetson_release", ["jetson_release.txt", "jetson_release"]),
        ("nvpmodel", ["nvpmodel_q.txt", "nvpmodel-q.txt", "nvpmodel.txt"]),
    ):
        text = root.first_text([f"{CAPTURES}/{c}" for c in candidates])
        if text is not None:
            out[name] = text
    return out


def _probe_python_libraries(built: _Builder) -> None:
    # the installed versions, read without importing the modules (TensorRT alone would cost the idle agent more
    # than its whole memory budget); whether they import is for doctor (agent.lazy.import_problem)
    built.set("tensorrt", module_version("tensorrt"), "python tensorrt version")
    built.set("onnxruntime", module_version("onnxruntime"), "python onnxruntime version")


def _read_l4t(root: _Root, built: _Builder) -> None:
    text = root.read_text("etc/nv_tegra_release")
    if text is None:
        return
    built.fp.is_jetson = True
    info = src.parse_nv_tegra_release(text)
    if not info.get("l4t"):
        built.note("/etc/nv_tegra_release is present but its first line is not 'R<n> (release), REVISION: <x.y>'")
        return
    built.set("l4t", info["l4t"], "/etc/nv_tegra_release")
    if info.get("arch"):
        built.set("cpu_arch", info["arch"], "/etc/nv_tegra_release EABI")
    if info.get("board") == "t210ref":  # t210ref is only ever Nano / TX1; t186ref covers TX2, Xavier and Orin
        built.set("soc", "tegra210", "/etc/nv_tegra_release BOARD t210ref")
    if info["l4t"].count(".") < 2:
        built.note(f"/etc/nv_tegra_release gives L4T {info['l4t']} without a patch number")


_TRT_PACKAGES = re.compile(r"^(libnvinfer\d+|libnvinfer-lean\d+|libnvinfer-dispatch\d+|libnvinfer-plugin\d+|libnvinfer-bin|libnvinfer-dev|tensorrt|python3-libnvinfer)$")


def _read_dpkg(root: _Root, built: _Builder) -> Dict[str, Any]:
    text = root.read_text("var/lib/dpkg/status", MAX_DPKG_READ)
    if text is None:
        return {}
    packages = src.parse_dpkg_status(text)
    nvidia = {name: value for name, value in packages.items() if _is_nvidia_package(name)}
    if "nvidia-l4t-core" in packages:
        built.fp.is_jetson = True
        built.set("l4t", src.upstream_version(packages["nvidia-l4t-core"][0]), "dpkg nvidia-l4t-core")
    if "nvidia-jetpack" in packages:
        built.set("jetpack", src.upstream_version(packages["nvidia-jetpack"][0]), "dpkg nvidia-jetpack")
    trt_names = sorted((n for n in packages if _TRT_PACKAGES.match(n)), key=_trt_package_rank)
    for name in trt_names:
        version = src.upstream_version(packages[name][0])
        if re.match(r"^\d+\.\d+", version):
            built.set("tensorrt", version, f"dpkg {name}")
            break
    cudart = sorted((n for n in packages if re.match(r"^cuda-cudart-\d+-\d+$", n)), reverse=True)
    if cudart:
        built.set("cuda", src.upstream_version(packages[cudart[0]][0]), f"dpkg {cudart[0]}")
    cudnn = sorted(n for n in packages if re.match(r"^libcudnn\d+(-cuda-\d+)?$", n))
    if cudnn:
        built.set("cudnn", src.upstream_version(packages[cudnn[-1]][0]), f"dpkg {cudnn[-1]}")
    return nvidia


def _is_nvidia_package(name: str) -> bool:
    return name.startswith(("nvidia-l4t", "libnvinfer", "cuda-", "libcudnn", "tensorrt", "nvidia-jetpack"))


def _trt_package_rank(name: str) -> int:
    if re.match(r"^libnvinfer\d+$", name):
        return 0
    if name.startswith(("libnvinfer-lean", "libnvinfer-dispatch", "libnvinfer-plugin")):
        return 1
    return 2


def _read_device_tree(root: _Root, built: _Builder) -> None:
    model_raw = root.read_bytes("proc/device-tree/model") or root.read_bytes("sys/firmware/devicetree/base/model")
    compatible_raw = root.read_bytes("proc/device-tree/compatible") or root.read_bytes("sys/firmware/devicetree/base/compatible")
    model = src.dt_text(model_raw) if model_raw is not None else ""
    compatible = src.dt_list(compatible_raw) if compatible_raw is not None else []
    if model:
        built.set("model", model, "device-tree model")
        if "jetson" in model.lower():
            built.fp.is_jetson = True
    soc = src.soc_from_compatible(compatible)
    if soc:
        built.fp.is_jetson = True
        built.set("soc", soc, "device-tree compatible")
    texts = [(" ".join(compatible), "device-tree compatible")]
    for relative in ("proc/device-tree/nvidia,boardids", "proc/device-tree/chosen/ids", "proc/device-tree/nvidia,dtsfilename"):
        raw = root.read_bytes(relative)
        if raw is not None:
            texts.append((src.dt_text(raw), relative.split("/", 2)[-1]))
    for text, source in texts:
        for part in src.part_numbers(text):
            if part[:5] in tables.CARRIER_BOARDS:
                continue
            module = tables.module_for_part(part)
            if module:
                built.set("part_number", part, source)
                built.set("module", module, f"part number {part}")
                break


def _read_jetson_release(text: Optional[str], built: _Builder) -> None:
    if text is None:
        return
    info = src.parse_jetson_release(text)
    if not info:
        built.note("captures/jetson_release.txt did not contain anything recognisable")
        return
    source = "jetson_release capture"
    if "jetpack" in info or "l4t" in info or "soc" in info:
        built.fp.is_jetson = True
    built.set("l4t", info.get("l4t"), source)
    part = info.get("part_number")
    if part:
        built.set("part_number", part.lower(), source)
        built.set("module", tables.module_for_part(part), f"part number {part.lower()}")
    if info.get("module"):
        built.set("module", src.module_from_jetson_release(info["module"]), source)
    if info.get("model"):
        built.set("model", info["model"], source)
        if "jetson" in info["model"].lower():
            built.fp.is_jetson = True
    built.set("soc", info.get("soc"), source)
    built.set("cuda", info.get("cuda"), source)
    built.set("cudnn", info.get("cudnn"), source)
    built.set("power_mode", info.get("power_mode"), source)
    trt = info.get("tensorrt")
    jetpack = info.get("jetpack", "").replace(" DP", "")
    if trt and jetpack and trt == jetpack:
        built.note(f"jetson_release printed TensorRT {trt}, which is the JetPack version (a jetson-stats bug): ignored")
    else:
        built.set("tensorrt", trt, source)
    if "compute_capability" in info:
        built.reported["compute_capability"] = info["compute_capability"]
    if jetpack:
        built.reported["jetpack"] = jetpack


_NVINFER_HEADERS = [
    "usr/include/aarch64-linux-gnu/NvInferVersion.h",
    "usr/include/x86_64-linux-gnu/NvInferVersion.h",
    "usr/include/NvInferVersion.h",
    "usr/local/include/NvInferVersion.h",
]
_CUDNN_HEADERS = [
    "usr/include/aarch64-linux-gnu/cudnn_version.h",
    "usr/include/x86_64-linux-gnu/cudnn_version.h",
    "usr/include/cudnn_version.h",
    "usr/local/cuda/include/cudnn_version.h",
]


def _read_headers(root: _Root, built: _Builder) -> None:
    candidates = list(_NVINFER_HEADERS) + [
        os.path.relpath(p, str(root.root)) for p in root.glob("usr/local/TensorRT*/include/NvInferVersion.h")
    ]
    for relative in candidates:
        text = root.read_text(relative)
        if text is None:
            continue
        version = src.parse_nvinfer_version_header(text)
        if version:
            built.set("tensorrt", version, "NvInferVersion.h")
            if version.count(".") < 2:
                built.note(f"NvInferVersion.h gives TensorRT {version} only (no patch or build number)")
            break
        built.note(f"/{relative} has no NV_TENSORRT_MAJOR")
    for relative in _CUDNN_HEADERS:
        text = root.read_text(relative)
        if text is not None:
            built.set("cudnn", src.parse_cudnn_version_header(text), "cudnn_version.h")
            break


def _read_cuda(root: _Root, built: _Builder) -> None:
    text = root.read_text("usr/local/cuda/version.json")
    if text is not None:
        version = src.parse_cuda_version_json(text)
        if version is None:
            built.note("/usr/local/cuda/version.json has no cuda.version")
        built.set("cuda", version, "/usr/local/cuda/version.json")
    text = root.read_text("usr/local/cuda/version.txt")
    if text is not None:
        built.set("cuda", src.parse_cuda_version_txt(text), "/usr/local/cuda/version.txt")


def _read_power_mode(root: _Root, capture: Optional[str], built: _Builder) -> None:
    status = root.read_text("var/lib/nvpmodel/status")
    if status is not None:
        mode = src.parse_nvpmodel_status(status, root.read_text("etc/nvpmodel.conf"))
        if mode is not None:
            built.set("power_mode", mode[0], "/var/lib/nvpmodel/status")
    if capture is not None:
        mode = src.parse_nvpmodel_query(capture)
        if re.search(r"Reboot required", capture):
            built.note("nvpmodel: a power-mode change is waiting for a reboot")
        if mode is None:
            built.note("captures/nvpmodel_q.txt has no 'NV Power Mode' line")
        else:
            built.set("power_mode", mode[0], "nvpmodel -q capture")


def _derive(built: _Builder) -> None:
    fp = built.fp
    if fp.module is None and fp.model:
        built.set("module", src.module_from_model(fp.model), "device-tree model" if fp.sources.get("model", "").startswith("device") else "model string")
    family = tables.family_of(fp.module)
    if family is not None:
        built.set("soc", family[0], f"module family ({fp.module})")
    if fp.l4t:
        built.set("jetpack", versions.jetpack_for_l4t(fp.l4t), "L4T -> JetPack table")
    built.set("jetpack", built.reported.get("jetpack"), "jetson_release capture")
    if fp.l4t and fp.jetpack is None:
        built.note(f"L4T {fp.l4t} is not in the JetPack table; jetpack left unknown")
    cc = tables.compute_capability_for_soc(fp.soc, fp.cuda, fp.l4t)
    built.set("compute_capability", cc, f"SoC table ({fp.soc})")
    reported_cc = built.reported.get("compute_capability")
    if reported_cc:
        if fp.compute_capability and fp.compute_capability != reported_cc:
            built.note(f"jetson_release says CUDA arch {reported_cc}, the SoC table {fp.compute_capability}: kept the table's")
        built.set("compute_capability", reported_cc, "jetson_release capture")
    if fp.soc == "tegra264" and fp.compute_capability is None:
        built.note("Thor (tegra264) is SM 11.0 with CUDA 13 and SM 10.1 with CUDA 12; CUDA version unknown")


def _read_dla(root: _Root, built: _Builder, probe_tensorrt: bool, live: bool) -> None:
    fp = built.fp
    if probe_tensorrt and fp.tensorrt and fp.sources.get("tensorrt", "").startswith("python"):
        cores = _trt_dla_cores()
        if cores is not None:
            built.set("dla_cores", cores, "TensorRT num_DLA_cores")
            return
    indexes = set()
    for pattern in ("dev/nvhost-nvdla*", "dev/nvhost-ctrl-nvdla*"):
        for path in root.glob(pattern):
            match = re.search(r"nvdla(\d+)$", path)
            if match:
                indexes.add(match.group(1))
    if indexes:
        built.set("dla_cores", len(indexes), "/dev/nvhost-nvdla*")
        return
    sysfs = {m.group(1) for p in root.glob("sys/bus/platform/devices/*nvdla*") for m in [re.search(r"nvdla(\d+)", p)] if m}
    if sysfs:
        built.set("dla_cores", len(sysfs), "/sys/bus/platform/devices/*nvdla*")
        return
    nodes = []
    for pattern in ("proc/device-tree/nvdla*", "proc/device-tree/*/nvdla*", "proc/device-tree/*/*/nvdla*"):
        nodes.extend(root.glob(pattern))
    if nodes:
        okay = 0
        for node in nodes:
            status = root.read_text(os.path.relpath(os.path.join(node, "status"), str(root.root)))
            if status is None or src.dt_text(status) in ("okay", "ok"):
                okay += 1
        built.set("dla_cores", okay, "device-tree nvdla nodes")
        return
    family = tables.family_of(fp.module)
    if family is not None and family[1] is not None:
        built.set("dla_cores", family[1], f"module table ({fp.module}; a hint, TensorRT's count is authoritative)")
    elif fp.soc in tables.SOC_WITHOUT_DLA:
        built.set("dla_cores", 0, f"SoC {fp.soc} has no DLA")
    elif fp.is_jetson:
        built.note("DLA core count unknown: no DLA device nodes and the module is not in the table")
    elif live and not fp.is_jetson:
        built.set("dla_cores", 0, "not a Jetson (DLA exists only on Jetson modules)")


def _read_cpu_features(root: _Root, built: _Builder) -> None:
    """The CPU extensions that change which onnxruntime kernels run (CPU_FEATURES above)."""
    text = root.read_text("proc/cpuinfo")
    if text is None:
        return
    flags: Set[str] = set()
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    found = sorted(f for f in CPU_FEATURES if f in flags)
    if found:
        built.fp.cpu_features = found
        built.fp.sources["cpu_features"] = "/proc/cpuinfo"


def _trt_dla_cores() -> Optional[int]:
    trt = try_import("tensorrt")
    if trt is None:
        return None
    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        return int(runtime.num_DLA_cores)
    except Exception as exc:  # CUDA not initialisable, no GPU: the other sources decide
        log.debug("TensorRT num_DLA_cores unavailable: %s", exc)
        return None


def _probe_discrete_gpu(built: _Builder) -> None:
    """Compute capability and name of GPU 0 on a machine that is not a Jetson: NVML, else nvidia-smi."""
    nvml = try_import("pynvml")
    if nvml is not None:
        try:
            nvml.nvmlInit()
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(0)
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                name = nvml.nvmlDeviceGetName(handle)
                built.set("compute_capability", f"{major}.{minor}", "NVML")
                built.set("gpu", name.decode() if isinstance(name, bytes) else str(name), "NVML")
                return
            finally:
                nvml.nvmlShutdown()
        except Exception as exc:  # no driver, no GPU: not an error for the fingerprint
            log.debug("NVML unavailable: %s", exc)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        built.note(f"nvidia-smi failed: {exc}")
        return
    first = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    if "," in first:
        name, cap = (part.strip() for part in first.rsplit(",", 1))
        built.set("gpu", name, "nvidia-smi")
        if re.match(r"^\d+\.\d+$", cap):
            built.set("compute_capability", cap, "nvidia-smi")


def fingerprint_json(fp: DeviceFingerprint) -> str:
    return json.dumps(fp.to_dict(), indent=2)
