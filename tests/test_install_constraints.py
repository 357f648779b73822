"""deploy/constraints.py: the pip constraints that keep the system's NumPy major version (docs/install.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from tests.helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "deploy" / "constraints.py"


def _run(*args: str, env: Optional[Dict[str, str]] = None) -> str:
    result = subprocess.run([sys.executable, "-s", str(SCRIPT), *args], capture_output=True, text=True, check=True, env=env)
    return result.stdout


def _requirements(text: str) -> list:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize(
    "numpy, line",
    [("1.17.4", "numpy>=1.17.4,<2"), ("1.21.5", "numpy>=1.21.5,<2"), ("1.26.4", "numpy>=1.26.4,<2"), ("2.2.4", "numpy>=2.2.4,<3")],
)
def test_the_system_numpy_major_is_kept(numpy: str, line: str) -> None:
    assert _requirements(_run("--numpy", numpy)) == [line]


def test_it_reads_the_numpy_the_interpreter_sees(tmp_path: Path) -> None:
    """A site folder laid out like Debian's dist-packages: the numpy package and its egg-info beside it."""
    site = tmp_path / "dist-packages"
    (site / "numpy").mkdir(parents=True)
    (site / "numpy" / "__init__.py").write_text("raise ImportError('never imported: the metadata is enough')\n")
    (site / "numpy-1.21.5.egg-info").mkdir()
    out = _run(env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert _requirements(out) == ["numpy>=1.21.5,<2"]
    assert str(site) in out


def test_no_system_numpy_no_constraint(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-S", "-s", str(SCRIPT)], capture_output=True, text=True, check=True).stdout
    assert _requirements(out) == [] and "no system NumPy" in out
