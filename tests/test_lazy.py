"""agent.lazy: "not installed" vs "installed but fails to import", with the cause, from real import failures.

The broken extensions are real files the real loader refuses: a copy of one of CPython's own extension modules
whose needed `libc.so.6` is renamed (a missing shared library), or whose ELF machine is another architecture.
The NumPy ABI mismatch is made for real (the distribution's cv2 under pip's NumPy 2) by tests/install/run.sh;
here the classifier reads the exact text NumPy 2 prints for it.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from agent import lazy
from agent.lazy import (
    MISSING_LIBRARY,
    MISSING_MODULE,
    NOT_INSTALLED,
    NUMPY_ABI,
    WRONG_ARCHITECTURE,
    MissingDependency,
    classify,
    elf_machine,
    host_machine,
    probe,
    require,
)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for the modules a test makes; the per-process cache of failures is reset."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(lazy, "_FAILED", {})
    importlib.invalidate_caches()
    yield tmp_path


def _real_extension() -> Path:
    """One of CPython's own extension modules (ELF, linked against libc.so.6)."""
    for name in ("array", "_json", "select", "math", "_struct"):
        module = importlib.import_module(name)
        path = getattr(module, "__file__", None)
        if path and path.endswith(".so") and b"libc.so.6" in Path(path).read_bytes():
            return Path(path)
    raise AssertionError("no CPython extension module linked against libc.so.6 found")


def _broken_copy(site: Path, name: str, edit: str) -> Path:
    data = bytearray(_real_extension().read_bytes())
    if edit == "missing-library":
        data = bytearray(bytes(data).replace(b"libc.so.6\x00", b"libZ.so.6\x00"))
    else:  # another architecture: the ELF e_machine field
        other = 62 if host_machine() == "aarch64" else 183
        data[18:20] = other.to_bytes(2, "little")
    target = site / f"{name}.so"
    target.write_bytes(bytes(data))
    return target


def test_a_missing_module_is_not_installed(site: Path) -> None:
    module, problem = probe("edge_agent_no_such_module")
    assert module is None and problem is not None
    assert problem.cause == NOT_INSTALLED and not problem.installed
    assert problem.detail == "edge_agent_no_such_module is not installed"


def test_a_missing_shared_library_is_named(site: Path) -> None:
    path = _broken_copy(site, "edge_agent_needs_lib", "missing-library")
    module, problem = probe("edge_agent_needs_lib")
    assert module is None and problem is not None and problem.installed
    assert problem.cause == MISSING_LIBRARY
    assert "installed but fails to import" in problem.detail and "libZ.so.6" in problem.detail and str(path) in problem.detail
    with pytest.raises(MissingDependency, match=r"libZ\.so\.6") as caught:
        require("edge_agent_needs_lib", "the test feature")
    assert caught.value.problem == problem  # the daemon's last_error carries the same diagnosis as doctor


def test_an_extension_of_another_architecture_is_named(site: Path) -> None:
    path = _broken_copy(site, "edge_agent_other_arch", "architecture")
    other = elf_machine(str(path))
    assert other in ("x86_64", "aarch64") and other != host_machine()
    module, problem = probe("edge_agent_other_arch")
    assert module is None and problem is not None
    assert problem.cause == WRONG_ARCHITECTURE
    assert f"built for {other}, this machine is {host_machine()}" in problem.detail


def test_a_package_that_needs_a_missing_module(site: Path) -> None:
    (site / "edge_agent_needs_dep").mkdir()
    (site / "edge_agent_needs_dep" / "__init__.py").write_text("import edge_agent_absent_dependency\n")
    _, problem = probe("edge_agent_needs_dep")
    assert problem is not None and problem.installed and problem.cause == MISSING_MODULE
    assert "needs the module 'edge_agent_absent_dependency'" in problem.detail


def test_a_namespace_package_without_code_counts_as_absent(site: Path) -> None:
    (site / "edge_agent_stubs_only").mkdir()
    (site / "edge_agent_stubs_only" / "__init__.pyi").write_text("x: int\n")
    _, problem = probe("edge_agent_stubs_only")
    assert problem is not None and problem.cause == NOT_INSTALLED


def test_the_failure_is_classified_once_and_the_import_noise_is_captured(site: Path, capfd: pytest.CaptureFixture) -> None:
    (site / "edge_agent_noisy.py").write_text("import sys\nsys.stderr.write('A long warning\\n')\nraise RuntimeError('boom')\n")
    first = probe("edge_agent_noisy")[1]
    (site / "edge_agent_noisy.py").write_text("value = 1\n")
    assert probe("edge_agent_noisy")[1] is first  # a second import is not attempted
    assert first is not None and "RuntimeError: boom" in first.detail
    assert "A long warning" not in capfd.readouterr().err


NUMPY2_TEXT = """
A module that was compiled using NumPy 1.x cannot be run in
NumPy 2.4.6 as it may crash. To support both 1.x and 2.x
versions of NumPy, modules must be compiled with NumPy 2.0.
Some module may need to rebuild instead e.g. with 'pybind11>=2.12'.
AttributeError: _ARRAY_API not found
"""


def test_numpy_abi_mismatch_text_names_both_versions_and_the_fix() -> None:
    problem = classify("cv2", ImportError("numpy.core.multiarray failed to import"), NUMPY2_TEXT)
    assert problem.cause == NUMPY_ABI
    assert "built against NumPy 1.x" in problem.detail
    import numpy

    assert f"imports NumPy {numpy.__version__}" in problem.detail
    assert problem.fix.startswith(f'{sys.executable} -m pip install "numpy<2"')


def test_numpy_built_for_2_running_1() -> None:
    text = "module compiled against ABI version 0x2000000 but this version of numpy is 0x1000009"
    problem = classify("ml_dtypes", ImportError(text))
    assert problem.cause == NUMPY_ABI and "built against NumPy 2.x" in problem.detail


@pytest.mark.parametrize(
    "message, cause, words",
    [
        ("libnvinfer.so.10: cannot open shared object file: No such file or directory", MISSING_LIBRARY, ["libnvinfer.so.10", "TensorRT"]),
        ("libcudart.so.12: cannot open shared object file: No such file or directory", MISSING_LIBRARY, ["libcudart.so.12", "CUDA runtime"]),
    ],
)
def test_jetpack_library_names(message: str, cause: str, words: list) -> None:
    problem = classify("tensorrt", ImportError(message))
    assert problem.cause == cause
    for word in words:
        assert word in problem.detail + problem.fix


def test_pycuda_built_against_another_cuda() -> None:
    problem = classify("pycuda", ImportError("libcudart.so.11.0: cannot open shared object file: No such file or directory"))
    assert problem.cause == lazy.CUDA_MISMATCH and "(11.0)" in problem.detail and "--no-binary pycuda" in problem.fix
    problem = classify("pycuda", ImportError("/x/_driver.cpython-310-aarch64-linux-gnu.so: undefined symbol: cuMemAllocAsync"))
    assert problem.cause == lazy.CUDA_MISMATCH and "cuMemAllocAsync" in problem.detail


def test_doctor_reports_the_same_words(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """doctor's package rows come from the same probe: a real broken module reads the same in both."""
    from agent.daemon import doctor

    _broken_copy(site, "edge_agent_doctor_lib", "missing-library")
    problem = probe("edge_agent_doctor_lib")[1]
    assert problem is not None
    monkeypatch.setattr(doctor, "OPTIONAL_PACKAGES", {**doctor.OPTIONAL_PACKAGES, "edge_agent_doctor_lib": ("a test", "none")})
    rows = {c.name: c for c in doctor.check_packages({})}
    row = rows["package edge_agent_doctor_lib"]
    assert row.status == doctor.FAIL and row.detail == problem.detail and row.fix == problem.fix


def test_a_real_subprocess_sees_the_same(site: Path) -> None:
    """Through the CLI's interpreter, not this process's cache."""
    _broken_copy(site, "edge_agent_cli_lib", "missing-library")
    code = "from agent.lazy import probe; print(probe('edge_agent_cli_lib')[1].cause)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": f"{site}:{Path(__file__).resolve().parents[1]}", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == MISSING_LIBRARY


def test_the_status_document_lists_what_failed_to_import(site: Path) -> None:
    from agent.daemon.reported import status_document
    from agent.store.state import AgentState

    _broken_copy(site, "edge_agent_status_lib", "missing-library")
    problem = probe("edge_agent_status_lib")[1]
    probe("edge_agent_not_there_at_all")
    assert problem is not None
    document = status_document(device_id="d", state=AgentState(), serving_digest=None, desired={}, fingerprint={}, started_at=0.0)
    assert document["broken_imports"] == {"edge_agent_status_lib": {"cause": MISSING_LIBRARY, "detail": problem.detail, "fix": problem.fix}}


# versions without importing ---------------------------------------------------------------------------------------
def _fresh_python(code: str) -> str:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    return out.stdout.strip()


def test_module_version_reads_the_distribution_without_importing() -> None:
    pytest.importorskip("numpy")
    code = (
        "import sys, importlib.metadata as m; from agent.lazy import module_version; "
        "v = module_version('numpy'); print(v == m.version('numpy'), 'numpy' in sys.modules)"
    )
    assert _fresh_python(code) == "True False"


def test_module_version_agrees_with_the_imported_module() -> None:
    """opencv-python 4.10.0.84 installs cv2 4.10.0: the wheel's build number is not the module's version."""
    code = (
        "import sys; from agent.lazy import module_version; before = module_version('cv2'); "
        "import cv2; print(before == cv2.__version__ == module_version('cv2'), before is not None)"
    )
    pytest.importorskip("cv2")
    assert _fresh_python(code) == "True True"


def test_module_version_of_a_module_without_metadata_imports_it(site: Path) -> None:
    (site / "edge_agent_apt_module.py").write_text("__version__ = '4.5.4'\n")
    assert lazy.module_version("edge_agent_apt_module") == "4.5.4"
    assert lazy.module_version("edge_agent_not_installed") is None


def test_module_version_of_type_stubs_alone_is_none(site: Path) -> None:
    (site / "edge_agent_stubs_only").mkdir()
    (site / "edge_agent_stubs_only" / "__init__.pyi").write_text("def f() -> int: ...\n")
    assert lazy.module_version("edge_agent_stubs_only") is None


def test_a_deferred_module_loads_on_first_use(site: Path) -> None:
    (site / "edge_agent_deferred.py").write_text("__version__ = '1.0'\nLOADS = []\nLOADS.append(1)\n")
    module = lazy.deferred("edge_agent_deferred")
    assert "edge_agent_deferred" not in sys.modules and not module.loaded
    assert lazy.module_version("edge_agent_deferred") == "1.0"  # read from the file by importing it (no metadata)
    assert module.LOADS == [1] and module.loaded and module.__version__ == "1.0"
    assert sys.modules["edge_agent_deferred"].LOADS is module.LOADS
    missing = lazy.deferred("edge_agent_no_such_deferred")
    with pytest.raises(ImportError):
        missing.anything  # noqa: B018 - the access is the test
