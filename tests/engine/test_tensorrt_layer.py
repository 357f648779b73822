"""The TensorRT layer: type-checked against tensorrt-stubs here; built and loaded only where TensorRT exists
(tests marked `tensorrt`). The report parser and the trial loader's plumbing run everywhere."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.device.fingerprint import DeviceFingerprint
from agent.engine.build import ensure_engine
from agent.engine.cache import EngineCache
from agent.engine.report import report_from_tensorrt
from agent.engine.spec import BatchProfile, BuildSpec, Precision
from agent.engine.trt_loader import trial_deserialize
from agent.lazy import try_import
from agent.store.hashing import sha256_file
from tests import helpers

REPO = Path(__file__).resolve().parents[2]
MYPY_INI = """[mypy]
python_version = 3.10
ignore_missing_imports = true
check_untyped_defs = true
disallow_untyped_defs = true
mypy_path = {stubs}

[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = true
"""


def patched_stubs(target: Path) -> Path:
    """tensorrt-stubs 10.13 as installed do not parse (parameters named `in`, a default missing): a fixed copy."""
    site = next((Path(p) for p in sys.path if (Path(p) / "tensorrt_bindings" / "tensorrt.pyi").is_file()), None)
    if site is None:
        pytest.fail("TensorRT's type stubs are not installed (tests/run.sh installs them: pip install --no-deps tensorrt-stubs==10.13.0.35.1)")
    for name in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site / name, target / name)
    stub = target / "tensorrt_bindings" / "tensorrt.pyi"
    text = stub.read_text(encoding="utf-8")
    text = re.sub(r"([(,] ?)in: ", r"\1in_: ", text)
    text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = 0)")
    stub.write_text(text, encoding="utf-8")
    return target


@pytest.mark.skipif(sys.version_info < (3, 10), reason="TensorRT's type stubs (tensorrt-stubs 10.13) need Python >= 3.10")
def test_tensorrt_layer_type_checks_against_the_stubs(tmp_path: Path) -> None:
    import mypy  # noqa: F401  (tests/run.sh installs it with the stubs on Python >= 3.10)

    stubs = patched_stubs(tmp_path / "stubs")
    ini = tmp_path / "mypy.ini"
    ini.write_text(MYPY_INI.format(stubs=stubs))
    wrong = tmp_path / "wrong_use.py"  # proves the stubs are in force (not everything Any)
    wrong.write_text("import tensorrt as trt\n\ndef f(c: trt.IBuilderConfig) -> None:\n    c.set_memory_pool_limit('workspace', 1)\n")
    command = [sys.executable, "-m", "mypy", "--config-file", str(ini), "--follow-imports=silent", "--cache-dir", str(tmp_path / "cache")]
    thin_layer = ["agent/engine/trt_builder.py", "agent/engine/trt_loader.py", "agent/runtime/tensorrt_runner.py", "agent/runtime/cuda_buffers.py"]
    done = subprocess.run([*command, *thin_layer], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([*command, str(wrong)], cwd=REPO, capture_output=True, text=True, check=False)
    assert "expected \"MemoryPoolType\"" in done.stdout


# Real placement summaries printed by TensorRT 8.4 (trtexec --useDLACore=0 --allowGPUFallback) on a Jetson AGX
# Orin, copied verbatim from NVIDIA-AI-IOT/jetson_dla_tutorial, README.md (commit 7a8a98c5, MIT licence),
# https://github.com/NVIDIA-AI-IOT/jetson_dla_tutorial: the GroupNorm model (5 DLA subgraphs, 6 GPU layers), then the
# BatchNorm one (2 and 2).
DLA_TUTORIAL_MODEL_GN = """\
[03/31/2022-14:34:54] [I] [TRT] ---------- Layers Running on DLA ----------
[03/31/2022-14:34:54] [I] [TRT] [DlaLayer] {ForeignNode[Conv_0]}
[03/31/2022-14:34:54] [I] [TRT] [DlaLayer] {ForeignNode[Relu_10...Conv_11]}
[03/31/2022-14:34:54] [I] [TRT] [DlaLayer] {ForeignNode[Relu_21...Conv_22]}
[03/31/2022-14:34:54] [I] [TRT] [DlaLayer] {ForeignNode[Relu_32...Conv_33]}
[03/31/2022-14:34:54] [I] [TRT] [DlaLayer] {ForeignNode[Relu_43]}
[03/31/2022-14:34:54] [I] [TRT] ---------- Layers Running on GPU ----------
[03/31/2022-14:34:54] [I] [TRT] [GpuLayer] SHUFFLE: Reshape_2 + (Unnamed Layer* 7) [Shuffle]
[03/31/2022-14:34:54] [I] [TRT] [GpuLayer] PLUGIN_V2: InstanceNormalization_5
[03/31/2022-14:34:54] [I] [TRT] [GpuLayer] SHUFFLE: (Unnamed Layer* 12) [Shuffle] + Reshape_7
[03/31/2022-14:34:54] [I] [TRT] [GpuLayer] SCALE: 71 + (Unnamed Layer* 16) [Shuffle] + Mul_8
[03/31/2022-14:34:54] [I] [TRT] [GpuLayer] SCALE: 72 + (Unnamed Layer* 19) [Shuffle] + Add_9
[03/31/2022-14:34:54] [I] [TRT] [GpuLayer] SHUFFLE: Reshape_13 + (Unnamed Layer* 29) [Shuffle]
"""
DLA_TUTORIAL_MODEL_BN = """\
[03/31/2022-15:12:48] [I] [TRT] ---------- Layers Running on DLA ----------
[03/31/2022-15:12:48] [I] [TRT] [DlaLayer] {ForeignNode[Conv_0...Relu_7]}
[03/31/2022-15:12:48] [I] [TRT] [DlaLayer] {ForeignNode[Gemm_15 + linear.bias + (Unnamed Layer* 19) [Shuffle] + \
unsqueeze_node_after_linear.bias + (Unnamed Layer* 19) [Shuffle]_(Unnamed Layer* 19) [Shuffle]_output + (Unnamed Layer* 20) [ElementWise]]}
[03/31/2022-15:12:48] [I] [TRT] ---------- Layers Running on GPU ----------
[03/31/2022-15:12:48] [I] [TRT] [GpuLayer] REDUCE: GlobalAveragePool_8
[03/31/2022-15:12:48] [I] [TRT] [GpuLayer] SHUFFLE: copied_squeeze_after_(Unnamed Layer* 20) [ElementWise]
"""


@pytest.mark.parametrize("log, dla, gpu", [(DLA_TUTORIAL_MODEL_GN, 5, 6), (DLA_TUTORIAL_MODEL_BN, 2, 2)], ids=["groupnorm", "batchnorm"])
def test_placement_from_a_real_dla_build_log(log: str, dla: int, gpu: int) -> None:
    report = report_from_tensorrt(None, log.splitlines(), dla_target=True)
    assert (report.layers_dla, report.layers_gpu, report.layers) == (dla, gpu, dla + gpu)
    assert report.dla_fraction == round(dla / (dla + gpu), 4)
    assert report.problems == [] and report.fallbacks == []  # a placement summary is not a problem


def test_report_from_a_dla_build_log_and_inspector_json() -> None:
    """Real DLA fallback messages (real data) and a real placement summary, with an inspector JSON in the shape
    TensorRT's engine inspector documents (`Layers`, `Name`, `LayerType`, `Outputs`, `Format/Datatype`) whose
    values are this test's own, and TensorRT's missing-scale warning around a tensor name of this test's."""
    samples = helpers.testdata("real", "trt_error_messages.txt").read_text(encoding="utf-8")
    dla_lines = [line for line in samples.splitlines() if "DLA" in line and not line.startswith("#")]
    log = [
        *dla_lines,
        *DLA_TUTORIAL_MODEL_BN.splitlines(),
        "[W] [TRT] Missing scale and zero-point for tensor /fc/Gemm_output_0, expect fall back to non-int8 implementation"
        " for any layer consuming or producing given tensor",
    ]
    inspector = '{"Layers": [{"Name": "{ForeignNode[conv1...relu5]}", "LayerType": "ForeignNode", "Outputs": [{"Format/Datatype": "Int8"}]},' \
                ' {"Name": "/Flatten", "LayerType": "Reformat", "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]}]}'
    report = report_from_tensorrt(inspector, log, dla_target=True, tensors_without_scale=["x"])
    assert (report.layers_dla, report.layers_gpu, report.dla_fraction) == (2, 2, 0.5)  # the builder's own summary wins
    assert report.precisions == {"int8": 1, "fp16": 1} and report.int8_layers == 1
    fallen = {f["layer"] for f in report.fallbacks}
    assert {"leaky_1", "route_3", "/avgpool/GlobalAveragePool", "/Flatten"} <= fallen
    assert next(f for f in report.fallbacks if f["layer"] == "leaky_1")["reason"].startswith("leaky_1: ActivationLayer")
    assert report.tensors_without_scale == ["x", "/fc/Gemm_output_0"]
    on_gpu = report_from_tensorrt(inspector, [], dla_target=False)
    assert (on_gpu.layers_dla, on_gpu.layers_gpu, on_gpu.source) == (0, 2, "inspector")  # ForeignNode = Myelin on the GPU


@pytest.mark.skipif(try_import("tensorrt") is not None, reason="TensorRT is installed here: test_tensorrt_build_trial_load_and_damaged_plan covers a bad plan")
def test_trial_loader_reports_a_missing_tensorrt_without_raising(tmp_path: Path) -> None:
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"ptrt" + bytes(60))
    result = trial_deserialize(plan, timeout_s=60)
    assert not result.ok and result.exit_code == 1 and result.problems == []
    assert "needs the Python module 'tensorrt'" in result.error and "JetPack" in result.error
    assert result.summary() == result.error  # no TensorRT log to diagnose: the summary is the child's own error


@pytest.mark.tensorrt
def test_tensorrt_build_trial_load_and_damaged_plan(tmp_path: Path, tiny: Path, here: DeviceFingerprint) -> None:
    spec = BuildSpec(model_sha256=sha256_file(tiny), precision=Precision.FP16, target="gpu", batch=BatchProfile(1, 2, 4))
    result = ensure_engine(spec, EngineCache(tmp_path / "engines"), here, model=tiny)
    assert result.report.layers > 0 and result.manifest.backend_version == here.tensorrt
    assert trial_deserialize(result.path).ok
    damaged = tmp_path / "damaged.plan"
    damaged.write_bytes(result.path.read_bytes()[:200])
    trial = trial_deserialize(damaged)
    assert not trial.ok and trial.problems


@pytest.mark.tensorrt
def test_tensorrt_refuses_a_dla_core_the_device_lacks(tmp_path: Path, tiny: Path, here: DeviceFingerprint) -> None:
    from agent.engine.build import BuildError

    core = (here.dla_cores or 0)  # one past the last core
    spec = BuildSpec(model_sha256=sha256_file(tiny), precision=Precision.FP16, target=f"dla:{core}", gpu_fallback=True)
    with pytest.raises(BuildError, match="DLA core"):
        ensure_engine(spec, EngineCache(tmp_path / "engines"), here, model=tiny)
