"""The device fingerprint reads every real sample, field by field, and never fails on odd input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from agent.cli.main import main
from agent.device import identity
from agent.device.fingerprint import fingerprint
from agent.device.versions import jetpack_for_l4t
from tests import helpers
from tests.device.samples import Sample, lay_out, split_samples

# What each real sample determines: (kind, index) -> expected fields. Every sample is read; those listed here
# are checked field by field as well.
EXPECTED: Dict[Any, Dict[str, Any]] = {
    ("nv_tegra_release", 0): {"l4t": "32.1.0", "jetpack": "4.2", "soc": "tegra210", "compute_capability": "5.3", "dla_cores": 0},
    ("nv_tegra_release", 1): {"l4t": "32.4.3", "jetpack": None, "soc": None},
    ("nv_tegra_release", 2): {"l4t": "32.5", "jetpack": "4.5"},
    ("nv_tegra_release", 3): {"l4t": "32.7.6", "jetpack": "4.6.6", "soc": "tegra210"},
    ("nv_tegra_release", 4): {"l4t": "35.4.1", "jetpack": "5.1.2", "cpu_arch": "aarch64"},
    ("nv_tegra_release", 5): {"l4t": "36.4.3", "jetpack": "6.2"},
    ("nv_tegra_release", 6): {"l4t": "36.4.7", "jetpack": "6.2.1"},
    ("nv_tegra_release", 7): {"l4t": "36.5.0", "jetpack": "6.2.2"},
    ("nv_tegra_release", 8): {"l4t": "39.2.0", "jetpack": "7.2"},
    ("device_tree", 0): {"module": "Jetson TX1", "soc": "tegra210", "compute_capability": "5.3", "dla_cores": 0},
    ("device_tree", 1): {"module": "Jetson Nano", "soc": "tegra210", "compute_capability": "5.3", "dla_cores": 0},
    ("device_tree", 2): {"module": "Jetson Orin NX 16GB", "part_number": "p3767-0000", "soc": "tegra234", "compute_capability": "8.7", "dla_cores": 2},
    ("device_tree", 3): {"part_number": "p3767-0005", "soc": "tegra234", "compute_capability": "8.7", "dla_cores": 0},
    ("device_tree", 4): {"module": "Jetson AGX Orin", "soc": "tegra234", "compute_capability": "8.7", "dla_cores": 2},
    ("dpkg", 0): {"tensorrt": "8.2.1", "cudnn": "8.2.1.32", "cpu_arch": "aarch64"},
    ("dpkg", 1): {"tensorrt": "10.3.0.30", "cpu_arch": "aarch64", "cuda": None},
    ("nvinfer_header", 0): {"tensorrt": "8.5.2.2"},
    ("nvinfer_header", 1): {"tensorrt": "10.9"},
    ("jetson_release", 0): {"l4t": "32.4.2", "jetpack": "4.4", "part_number": "p3448-0000", "tensorrt": "7.1.0.16", "cuda": "10.2.89", "cudnn": "8.0.0.145", "compute_capability": "5.3", "power_mode": "MAXN"},
    ("jetson_release", 1): {"l4t": "32.6.1", "jetpack": "4.6", "module": "Jetson Nano", "tensorrt": "8.0.1.6", "cuda": "10.2.300"},
    ("jetson_release", 2): {"l4t": "32.7.4", "jetpack": "4.6.4", "part_number": "p3448-0000", "tensorrt": "8.2"},
    # jetson-stats printed the JetPack version as TensorRT: refused, not believed
    ("jetson_release", 3): {"l4t": "35.4.1", "jetpack": "5.1.2", "module": "Jetson Orin NX 16GB", "soc": "tegra234", "tensorrt": None, "cuda": "11.4.315"},
    ("jetson_release", 4): {"l4t": "35.6.2", "jetpack": None, "module": "Jetson AGX Orin 64GB", "tensorrt": "8.5.2.2", "dla_cores": 2},
    ("jetson_release", 5): {"l4t": "36.4.3", "jetpack": "6.2", "tensorrt": "10.3.0.30", "cuda": "12.6.68", "cudnn": "9.3.0.75", "compute_capability": "8.7"},
    ("nvpmodel", 0): {"power_mode": "MAXN"},
    ("nvpmodel", 1): {"power_mode": "MAXN"},
    ("nvpmodel", 2): {"power_mode": "MAXN"},
    ("nvpmodel", 3): {"power_mode": None},
}

REQUIRED = ("l4t", "jetpack", "module", "soc", "tensorrt", "cuda", "compute_capability", "dla_cores")


def _samples() -> List[Sample]:
    return split_samples(helpers.testdata("real", "device_identity_samples.txt").read_text(encoding="utf-8"))


def test_every_real_sample_is_read_and_each_determines_its_fields(tmp_path: Path) -> None:
    samples = _samples()
    assert len(samples) >= 28, "the sample splitter lost samples"
    seen = set()
    for sample in samples:
        root = lay_out(sample, tmp_path / f"{sample.kind}-{sample.index}")
        fp = fingerprint(root, probe_libraries=False)
        data = fp.to_dict()
        for name in REQUIRED:
            assert name in data
        for name, want in EXPECTED.get((sample.kind, sample.index), {}).items():
            assert data[name] == want, f"{sample.kind} #{sample.index} ({sample.header[:70]}): {name}={data[name]!r}, want {want!r}"
        seen.add((sample.kind, sample.index))
    assert set(EXPECTED) <= seen


def test_json_cli_prints_required_fields_null_where_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64, DATE: x\n")
    assert main(["device", "--json", "--sysroot", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data)[: len(REQUIRED)] == list(REQUIRED)
    assert data["l4t"] == "36.4.3" and data["jetpack"] == "6.2"
    assert data["tensorrt"] is None and data["module"] is None and data["compute_capability"] is None


def test_empty_or_garbage_sysroot_degrades_to_nulls(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_bytes(b"\xff\xfe garbage \x00")
    (tmp_path / "usr/local/cuda").mkdir(parents=True)
    (tmp_path / "usr/local/cuda/version.json").write_text("{not json")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/compatible").mkdir()  # a folder where a file should be
    fp = fingerprint(tmp_path, probe_libraries=False)
    assert fp.is_jetson and fp.l4t is None and fp.cuda is None and fp.soc is None
    assert any("nv_tegra_release" in note for note in fp.notes)


def test_full_orin_sysroot_combines_sources(tmp_path: Path) -> None:
    files = {
        "etc/nv_tegra_release": "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n",
        "proc/device-tree/model": "NVIDIA Jetson AGX Orin Developer Kit\x00",
        "proc/device-tree/compatible": "nvidia,p3737-0000+p3701-0005\x00nvidia,p3701-0005\x00nvidia,tegra234\x00",
        "usr/local/cuda/version.json": json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}),
        "var/lib/dpkg/status": "Package: libnvinfer10\nStatus: install ok installed\nArchitecture: arm64\nVersion: 10.3.0.30-1+cuda12.5\n\n"
        "Package: nvidia-jetpack\nStatus: install ok installed\nArchitecture: arm64\nVersion: 6.2+b77\n",
        "dev/nvhost-nvdla0": "",
        "dev/nvhost-nvdla1": "",
        "var/lib/nvpmodel/status": "pmode:0003 fmode:quiet\n",
        "etc/nvpmodel.conf": "< POWER_MODEL ID=0 NAME=MAXN >\n< POWER_MODEL ID=3 NAME=50W >\n",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    fp = fingerprint(tmp_path, probe_libraries=False)
    assert (fp.module, fp.soc, fp.compute_capability, fp.dla_cores) == ("Jetson AGX Orin 64GB", "tegra234", "8.7", 2)
    assert (fp.l4t, fp.jetpack, fp.tensorrt, fp.cuda, fp.power_mode) == ("36.4.3", "6.2", "10.3.0.30", "12.6.68", "50W")
    assert fp.sources["dla_cores"] == "/dev/nvhost-nvdla*" and fp.sources["jetpack"] == "dpkg nvidia-jetpack"


def test_thor_compute_capability_follows_cuda_major(tmp_path: Path) -> None:
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/compatible").write_bytes(b"nvidia,p3834-0008\x00nvidia,tegra264\x00")
    assert fingerprint(tmp_path, probe_libraries=False).compute_capability is None  # CUDA unknown: not guessed
    (tmp_path / "usr/local/cuda").mkdir(parents=True)
    (tmp_path / "usr/local/cuda/version.json").write_text('{"cuda": {"version": "12.8.1"}}')
    assert fingerprint(tmp_path, probe_libraries=False).compute_capability == "10.1"
    (tmp_path / "usr/local/cuda/version.json").write_text('{"cuda": {"version": "13.0.48"}}')
    fp = fingerprint(tmp_path, probe_libraries=False)
    assert (fp.compute_capability, fp.dla_cores) == ("11.0", 0)


def test_device_tree_lists_with_or_without_nuls() -> None:
    assert identity.dt_list(b"nvidia,p3768-0000+p3767-0000\x00nvidia,tegra234\x00") == ["nvidia,p3768-0000+p3767-0000", "nvidia,tegra234"]
    assert identity.dt_list("nvidia,jetson-cvnvidia,tegra210") == ["nvidia,jetson-cv", "nvidia,tegra210"]
    assert identity.soc_from_compatible(identity.dt_list("a, nvidia,tegra194")) == "tegra194"


def test_nvinfer_header_macro_indirection() -> None:
    text = "#define TRT_MAJOR_ENTERPRISE 10\n#define TRT_MINOR_ENTERPRISE 13\n#define TRT_PATCH_ENTERPRISE 0\n#define TRT_BUILD_ENTERPRISE 35\n" \
        "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE\n#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE\n" \
        "#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE\n#define NV_TENSORRT_BUILD TRT_BUILD_ENTERPRISE\n"
    assert identity.parse_nvinfer_version_header(text) == "10.13.0.35"


def test_jetpack_table_lookup() -> None:
    assert jetpack_for_l4t("36.4.3") == "6.2"
    assert jetpack_for_l4t("35.1.0") == "5.0.2"
    assert jetpack_for_l4t("39.4.1") == "7.2"
    assert jetpack_for_l4t("31.0.0") is None and jetpack_for_l4t(None) is None


def test_live_fingerprint_never_fails() -> None:
    fp = fingerprint()
    assert fp.cpu_arch
