"""The TensorRT log classifier on the real error samples, and the plan header sniff on real plan headers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Tuple

import pytest

from agent.cli.main import main
from agent.engine.diagnose import KINDS, classify_line, diagnose_log, sniff_plan
from tests import helpers


def _blocks(path: Path) -> List[Tuple[str, List[str]]]:
    """('# source: ...' header, its lines) for each sample of trt_error_messages.txt."""
    blocks: List[Tuple[str, List[str]]] = []
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# source:"):
            current = []
            blocks.append((line, current))
        elif line.startswith("#") or not line.strip():
            current = None if not line.strip() else current
        elif current is not None:
            current.append(line)
    return blocks


# The first problem of each sample, in file order: (kind, runtime, plan).
EXPECTED_FIRST = [
    ("version_mismatch", "5.1.6", "5.0.6"),
    ("corrupt", "5.1.5", "0.0.0"),  # 'got 0.0.0': a file written in text mode, not a version
    ("version_mismatch", "8.0.0", "8.0.1"),
    ("version_mismatch", "8.2.3", "8.2.1"),
    ("version_mismatch", "8.5.1.7", "8.5.3.1"),
    ("device_mismatch", "7.2", "8.7"),
    ("device_mismatch", "8.0", "8.9"),
    ("device_mismatch", "8.9", "8.6"),
    ("device_mismatch", None, None),  # across device models: a warning
    ("corrupt", None, None),
    ("corrupt", None, None),
    ("version_mismatch", None, None),  # TensorRT 10 wording: "incompatible serialization version"
    ("version_mismatch", "205", "213"),
    ("version_mismatch", "240", "239"),
    ("version_mismatch", "243", "239"),
    ("version_mismatch", None, None),
    ("dla", None, None),
    ("dla", None, None),
    ("dla", None, None),
    ("dla", None, None),
    ("unknown", None, None),  # builder flag conflict; the DLA assertion follows it
    ("dla", None, None),
    ("unknown", None, None),  # CUDA illegal memory access, then no tactic
    ("no_implementation", None, None),
    ("no_implementation", None, None),
]


@pytest.fixture(scope="module")
def samples() -> Path:
    return helpers.testdata("real", "trt_error_messages.txt")


def test_every_real_sample_is_classified_sensibly(samples: Path) -> None:
    blocks = [b for b in _blocks(samples) if b[1]]
    assert len(blocks) == len(EXPECTED_FIRST)
    for (header, lines), (kind, runtime, plan) in zip(blocks, EXPECTED_FIRST):
        problems = diagnose_log("\n".join(lines))
        assert problems, f"nothing recognised in {header}"
        first = problems[0]
        assert (first.kind, first.runtime, first.plan) == (kind, runtime, plan), header
        for problem in problems:
            assert problem.kind in KINDS
        # a generic 'deserialization failed' line never stands alone after a specific problem
        assert not any(p.kind == "unknown" and "deserialization failed" in p.line for p in problems[1:]), header


def test_every_line_gets_a_verdict_or_is_folded(samples: Path) -> None:
    for header, lines in _blocks(samples):
        if not lines:
            continue
        problems = diagnose_log("\n".join(lines))
        covered = " ".join(p.line + " " + " ".join(p.related) for p in problems)
        for line in lines:
            words = re.findall(r"\w{4,}", line)[:3]
            assert all(word in covered for word in words), f"{header}: line not classified: {line}"


def test_the_issue_examples() -> None:
    version = classify_line("[TRT] [E] 6: The engine plan file is not compatible with this version of TensorRT, expecting library version 8.2.3 got 8.2.1, please rebuild.")
    assert version is not None and (version.kind, version.runtime, version.plan) == ("version_mismatch", "8.2.3", "8.2.1")
    device = classify_line("The engine plan file is generated on an incompatible device, expecting compute 6.1 got compute 7.5, please rebuild.")
    assert device is not None and (device.kind, device.runtime, device.plan) == ("device_mismatch", "6.1", "7.5")


def test_dla_lines_name_their_layer(samples: Path) -> None:
    problems = diagnose_log(samples.read_text(encoding="utf-8"))
    layers = {p.layer for p in problems if p.kind == "dla"}
    assert {"leaky_1", "route_3", "/model.24/Constant_1_output_0", "/avgpool/GlobalAveragePool", "/Flatten"} <= layers


def test_calibration_and_quiet_lines() -> None:
    missing = classify_line("[W] [TRT] Missing scale and zero-point for tensor conv_out, expect fall back to non-int8 implementation")
    assert missing is not None and missing.kind == "calibration" and missing.layer == "conv_out"
    failure = classify_line("[E] [TRT] Calibration failure occurred with no scaling factors detected.")
    assert failure is not None and failure.kind == "calibration" and failure.severity == "error"
    assert classify_line("[I] [TRT] Loaded engine size: 12 MiB") is None
    assert classify_line("") is None


def test_cli_diagnose_prints_one_json_object_a_problem(samples: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["engine", "diagnose", "--log", str(samples), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    objects = [json.loads(line) for line in lines]
    assert len(objects) >= len(EXPECTED_FIRST)
    assert all(set(o) >= {"kind", "runtime", "plan", "line"} for o in objects)
    assert {"kind": "version_mismatch", "runtime": "8.2.3", "plan": "8.2.1"}.items() <= next(o for o in objects if o["runtime"] == "8.2.3").items()


def _headers(path: Path) -> List[Tuple[bytes, int]]:
    """(first 64 bytes, file size stated in the comment) for each dumped plan."""
    out: List[Tuple[bytes, int]] = []
    size = 0
    data = b""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            if data:
                out.append((data, size))
            data = b""
            match = re.search(r"(\d+) bytes", line)
            size = int(match.group(1)) if match else 0
        elif re.match(r"^[0-9a-f]{8}: ", line):
            data += bytes.fromhex("".join(line[10:49].split()))
    if data:
        out.append((data, size))
    return out


def test_header_sniff_on_real_plans_is_a_consistent_hint() -> None:
    headers = _headers(helpers.testdata("real", "engine_headers_hex.txt"))
    assert len(headers) >= 5
    for head, size in headers:
        hint = sniff_plan(head, size)
        assert hint.magic in ("ptrt", "ftrt")
        if size:  # the header's size field explains the stated file size...
            assert size in hint.expected_bytes, (head[:16], size, hint.expected_bytes)
            assert not hint.looks_truncated
            assert sniff_plan(head, size - 1000).looks_truncated  # ...and a shorter file looks truncated
    assert sniff_plan(headers[0][0]).serialization_tag == 213
    assert sniff_plan(b"").looks_truncated and sniff_plan(b"\x10\x00\x00\x00{\"a\":1}").magic is None
