"""The TensorRT API check itself, on the committed sample of dumped bindings (no network, no TensorRT).

The real dump of every wheel runs in CI (`python -m tests.trt_api.check`, .ci/run); here the same check logic
runs on tests/trt_api/sample, a trimmed copy of those dumps (`--write-sample` regenerates it).
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Dict, List

import pytest

from tests.trt_api import check
from tests.trt_api.declared import USED
from tests.trt_api.uses import THIN_LAYER, Api, extract

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sample() -> Dict[str, Dict[str, object]]:
    return check.load_dumps(check.SAMPLE)


def _copy_thin_layer(tmp_path: Path) -> Path:
    for relative in THIN_LAYER:
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / relative, target)
    return tmp_path


def test_the_thin_layer_passes_on_the_sample(sample: Dict[str, Dict[str, object]]) -> None:
    result, text = check.run(sample)
    assert result.failures == [], "\n".join(result.failures) + "\n(a new TensorRT use? declare it in tests/trt_api/declared.py and run `python -m tests.trt_api.check --write-sample`)"
    assert "| `ITensor.set_dynamic_range` |" in text
    assert len(sample) == 11


def test_removing_an_attribute_inside_its_branch_fails(sample: Dict[str, Dict[str, object]]) -> None:
    broken = copy.deepcopy(sample)
    del broken["10.3.0"]["api"]["ITensor.set_dynamic_range"]  # type: ignore[attr-defined]
    result, text = check.run(broken)
    assert any("ITensor.set_dynamic_range: absent in TensorRT 10.3.0" in f for f in result.failures), result.failures
    assert re.search(r"\| `ITensor.set_dynamic_range` \|[^\n]*ABSENT", text)


def test_removing_an_attribute_outside_its_branch_or_hasattr_guarded_passes(sample: Dict[str, Dict[str, object]]) -> None:
    changed = copy.deepcopy(sample)
    del changed["10.13.3.9"]["api"]["NetworkDefinitionCreationFlag.EXPLICIT_BATCH"]  # used on 8.x only
    del changed["10.13.3.9"]["api"]["ParserError.node_name"]  # the code tests hasattr(error, "node_name")
    result, text = check.run(changed)
    assert result.failures == []
    assert re.search(r"\| `ParserError.node_name` \|[^\n]*absent/hasattr", text)


def test_an_undeclared_tensorrt_use_in_a_thin_layer_source_fails(sample: Dict[str, Dict[str, object]], tmp_path: Path) -> None:
    root = _copy_thin_layer(tmp_path)
    builder = root / "agent/engine/trt_builder.py"
    source = builder.read_text()
    # the bug this check found: ILogger has no min_severity (only trt.Logger has), so setting it did nothing
    needle = "            trt.ILogger.__init__(self)\n"
    assert needle in source
    builder.write_text(source.replace(needle, needle + "            self.min_severity = trt.ILogger.Severity.VERBOSE\n", 1))
    result, _ = check.run(sample, root=root)
    assert any("ILogger.min_severity (set) is not declared" in f for f in result.failures), result.failures
    declared = [*USED, ("ILogger.min_severity", "8.5-", "", "")]  # declaring it is no way out
    result, _ = check.run(sample, root=root, rows=declared)
    absent = [f for f in result.failures if f.startswith("ILogger.min_severity: absent")]
    assert len(absent) == len(sample)


def test_a_use_through_any_alias_or_chain_is_found(sample: Dict[str, Dict[str, object]]) -> None:
    source = '''
from agent.lazy import require

def run(path):
    trt_module = require("tensorrt", "x")
    engine = trt_module.Runtime(trt_module.Logger()).deserialize_cuda_engine(path)
    context = engine.create_execution_context()
    context.execute_async_v3(stream_handle=0)
    for index in range(engine.num_io_tensors):
        print(engine.get_tensor_dtype(engine.get_tensor_name(index)).name)
'''
    uses = {u.name: u for u in extract("x.py", source, Api(sample.values()))}
    assert {"Runtime.__init__", "Logger.__init__", "Runtime.deserialize_cuda_engine", "ICudaEngine.create_execution_context",
            "IExecutionContext.execute_async_v3", "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "DataType.name"} <= set(uses)
    assert uses["IExecutionContext.execute_async_v3"].keywords == ("stream_handle",)


def test_a_call_that_no_longer_fits_the_signature_fails(sample: Dict[str, Dict[str, object]]) -> None:
    changed = copy.deepcopy(sample)
    entry = changed["10.13.3.9"]["api"]["IBuilderConfig.set_memory_pool_limit"]  # type: ignore[index]
    entry["signatures"] = ["(self: tensorrt.IBuilderConfig, pool: tensorrt.MemoryPoolType, pool_size: int, device: int) -> None"]
    result, _ = check.run(changed)
    assert any("IBuilderConfig.set_memory_pool_limit called with 2 positional" in f and "10.13.3.9" in f for f in result.failures), result.failures


def test_an_override_with_other_parameters_fails(sample: Dict[str, Dict[str, object]]) -> None:
    changed = copy.deepcopy(sample)
    entry = changed["10.16.1.11"]["api"]["IProgressMonitor.phase_start"]  # type: ignore[index]
    entry["signatures"] = ["(self: tensorrt.IProgressMonitor, phase_name: str, num_steps: int) -> None"]
    result, _ = check.run(changed)
    assert any("override IProgressMonitor.phase_start" in f and "10.16.1.11" in f for f in result.failures), result.failures


def test_a_stale_or_wrongly_guarded_declaration_fails(sample: Dict[str, Dict[str, object]]) -> None:
    rows: List = [r for r in USED if r[0] != "ParserError.desc"] + [("ParserError.desc", "8.5-", "hasattr", "")]
    rows.append(("IExecutionContext.execute_async_v2", "8.5-", "", ""))
    result, _ = check.run(sample, rows=rows)
    assert any("ParserError.desc is declared hasattr-guarded" in f for f in result.failures)
    assert any("execute_async_v2 is declared but the thin layer no longer uses it" in f for f in result.failures)


def test_every_module_that_imports_tensorrt_is_in_the_thin_layer() -> None:
    importing = set()
    for path in (ROOT / "agent").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        # a module that binds the module (import, or x = require("tensorrt", ...)); agent/engine/build.py only
        # asks require() whether TensorRT is there
        if re.search(r"^\s*import tensorrt\b|=\s*require\(\s*\"tensorrt\"", text, re.MULTILINE):
            importing.add(path.relative_to(ROOT).as_posix())
    assert importing <= set(THIN_LAYER), importing - set(THIN_LAYER)


@pytest.mark.parametrize(
    ("signature", "params"),
    [
        ("(self: a.B, pool: a.C, pool_size: int) -> None", [("self", False), ("pool", False), ("pool_size", False)]),
        ("(self: a.B, flags: int = 0) -> a.N", [("self", False), ("flags", True)]),
        ("(self: a.B, shape: List[Tuple[int, int]], x: Dict[str, int] = {}) -> None", [("self", False), ("shape", False), ("x", True)]),
        ("(*args, **kwargs)", None),
    ],
)
def test_pybind11_signatures_split_into_parameters(signature: str, params: object) -> None:
    assert check.split_params(signature) == params


def test_version_ranges() -> None:
    entry = check.declared_entries([("X.y", "8.5-10.8,11.4.1-", "", "")])["X.y"]
    assert entry.covers((8, 6, 1)) and entry.covers((10, 3, 0)) and entry.covers((11, 4, 1))
    assert not entry.covers((10, 8, 0)) and not entry.covers((11, 4, 0)) and not entry.covers((8, 4, 9))
