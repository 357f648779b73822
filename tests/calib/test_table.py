"""The table parser and writer: every real table, byte-exact round trips, the other formats, clear refusals."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.calib.table import (
    FORMAT_ORT_JSON,
    FORMAT_ORT_TEXT,
    FORMAT_TENSORRT,
    FORMAT_TENSORRT_HEADERLESS,
    CalibTable,
    CalibTableError,
    new_table,
    parse_table,
    read_table,
    scale_hex,
    table_stats,
    with_header_version,
    write_table,
)
from tests.helpers import REAL_DATA_SKIP, real_data, shared_dir

REAL = shared_dir() / "testdata" / "real" / "calib" if shared_dir() else None
REAL_TABLES = sorted(p.name for p in REAL.iterdir()) if REAL is not None and REAL.is_dir() else []


def real(name: str) -> bytes:
    return real_data("calib", name).read_bytes()


def count_by_lines(data: bytes) -> Dict[str, int]:
    """Expected counts derived with plain string and integer work, independent of the parser."""
    lines = [line for line in data.decode("utf-8").split("\n")[1:] if line.strip()]
    counts = {"entries": len(lines), "zero": 0, "inf": 0, "nan": 0, "denormal": 0}
    for line in lines:
        bits = int(line[line.rindex(": ") + 2 :], 16)
        exponent, mantissa = (bits >> 23) & 0xFF, bits & 0x7FFFFF
        if bits & 0x7FFFFFFF == 0:
            counts["zero"] += 1
        elif exponent == 0xFF:
            counts["nan" if mantissa else "inf"] += 1
        elif exponent == 0:
            counts["denormal"] += 1
    return counts


@pytest.mark.parametrize("name", REAL_TABLES or [pytest.param("absent", marks=pytest.mark.skip(reason=f"{REAL_DATA_SKIP}: ../shared/testdata/real/calib/*.cache"))])
def test_every_real_table_parses_counts_and_round_trips(name: str) -> None:
    data = real(name)
    table = parse_table(data)
    expected = count_by_lines(data)
    stats = table_stats(table)
    assert table.format == FORMAT_TENSORRT
    assert data.decode().split("\n", 1)[0] == table.header
    assert (stats.entries, stats.zero, stats.inf, stats.nan, stats.denormal) == (
        expected["entries"],
        expected["zero"],
        expected["inf"],
        expected["nan"],
        expected["denormal"],
    )
    assert write_table(table) == data


def test_real_table_facts_from_the_readme() -> None:
    bert = parse_table(real("calib_24_bert_trt10.10.cache"))
    assert bert.trt_version == "10.10.0" and bert.version_code == 101000
    assert table_stats(bert).inf == 3
    assert all(math.isinf(bert.entries[n]) for n in table_stats(bert).degenerate["inf"])
    assert "/bert/Where_2_output_0" in table_stats(bert).degenerate["inf"]

    segformer_bytes = real("calib_12_segformer_b2_zeros_unnamed_trt8.4.cache")
    assert b"\n366: 0\n" in segformer_bytes  # a bare 0, as published
    segformer = parse_table(segformer_bytes)
    assert table_stats(segformer).degenerate["zero"] == ["(Unnamed Layer* 64) [Shuffle]_output", "366"]
    assert segformer.trt_version == "8.4.1"

    assert len(parse_table(real("calib_10_trt2023_large_trt8.6.cache"))) == 3656
    assert parse_table(real("calib_17_yolov8n_trt10.14.cache")).trt_version == "10.14.1"
    ssd = parse_table(real("calib_02_ssd300_resnet_trt7.2.cache"))
    assert ssd.trt_version == "7.2.3"
    # names that contain ':' split at the last ': '
    assert ssd.entries["ssd_300_vgg/Relu:0"] == struct.unpack(">f", bytes.fromhex("3d7588c3"))[0]
    facemask = parse_table(real("calib_06_tao_detectnetv2_facemask_trt7.0.cache"))
    assert facemask.amax("input_1") == pytest.approx(1.0, rel=1e-3)  # 3c010a14 ~ 1/127


def test_header_rewrite_changes_only_the_header() -> None:
    data = real("calib_12_segformer_b2_zeros_unnamed_trt8.4.cache")
    rewritten = write_table(with_header_version(parse_table(data), "10.3.0.30"))
    assert rewritten.split(b"\n", 1)[0] == b"TRT-100300-EntropyCalibration2"
    assert rewritten.split(b"\n", 1)[1] == data.split(b"\n", 1)[1]  # bare '0' spellings kept


def test_changed_entries_are_written_canonically() -> None:
    table = parse_table(b"TRT-8601-EntropyCalibration2\na: 0\nb: 3C010A14\n")
    assert write_table(table) == b"TRT-8601-EntropyCalibration2\na: 0\nb: 3C010A14\n"
    changed = CalibTable(**{**table.__dict__, "entries": {"a": 1.0 / 127.0, "b": table.entries["b"]}})
    assert write_table(changed) == b"TRT-8601-EntropyCalibration2\na: 3c010204\nb: 3C010A14\n"


@pytest.mark.parametrize(
    "data",
    [
        b"TRT-8502-EntropyCalibration2\r\ninput: 3c010a16\r\nx: with: colons: 3e6e18b7\r\n",  # CRLF
        b"TRT-100300-MinMaxCalibration\ninput: 3c010a16\nlast: 7f800000",  # no final newline
        b"TRT-7000-EntropyCalibration2\nupper: 3C010A14\nshort: 3c01\nz: 00000000\n",
        b"\xef\xbb\xbfTRT-8601-EntropyCalibration2\nbom: 3c010a14\n",  # UTF-8 BOM from a Windows editor
        b"TRT-8601-EntropyCalibration2\nlatin \xe9t\xe9: 3c010a14\n",  # a name that is not UTF-8
        b"TRT-8601-EntropyCalibration2\n",  # header only
    ],
)
def test_well_formed_variants_round_trip(data: bytes) -> None:
    assert write_table(parse_table(data)) == data


def test_headerless_table_is_named_and_round_trips() -> None:
    data = b"data: 3c020660\n(Unnamed Layer* 0) [Convolution]_output: 3db24a60\n"
    table = parse_table(data)
    assert table.format == FORMAT_TENSORRT_HEADERLESS
    assert table.trt_version is None and table.algorithm is None and table.header is None
    assert write_table(table) == data
    promoted = with_header_version(table, "8.6.1")
    assert write_table(promoted) == b"TRT-8601-EntropyCalibration2\n" + data


def test_onnxruntime_text_table_is_named_read_as_amax_and_round_trips() -> None:
    data = b"conv_out 6.0\nlogits 11.079\nsmall 1.5e-05\n"
    table = parse_table(data)
    assert table.format == FORMAT_ORT_TEXT
    assert table.amax("conv_out") == pytest.approx(6.0)
    assert table.amax("small") == pytest.approx(1.5e-5)
    assert write_table(table) == data
    as_trt = write_table(with_header_version(table, (10, 3, 0)))
    assert as_trt.startswith(b"TRT-100300-EntropyCalibration2\nconv_out: ")
    assert parse_table(as_trt).entries == table.entries


def test_onnxruntime_json_tables_are_read() -> None:
    old = parse_table(b'{"a": [-2.0, 1.0], "b": [0.0, 6.0]}')
    assert old.format == FORMAT_ORT_JSON and old.amax("a") == pytest.approx(2.0) and old.amax("b") == pytest.approx(6.0)
    tensors_data = {
        "CLS": "TensorsData",
        "calibration_method": {"CLS": "CalibrationMethod", "value": "CalibrationMethod.MinMax"},
        "data": {"x": {"lowest": -0.5, "highest": 3.0, "CLS": "TensorData"}},
    }
    new = parse_table(json.dumps(tensors_data).encode())
    assert new.amax("x") == pytest.approx(3.0) and new.algorithm == "MinMax"
    with pytest.raises(CalibTableError, match="read-only"):
        write_table(new)
    assert write_table(with_header_version(new, "10.3.0")).startswith(b"TRT-100300-EntropyCalibration2\nx: ")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"  \n\n", "empty"),
        (b"\x1c\n", "white space"),
        (b"ftrt\x00\x00\x00\x57rest of a plan", "serialized TensorRT engine"),
        (b"\x08\x07\x12\x00onnx", "binary"),
        (b"hello world, this is text\n", "not a calibration table"),
        (b"TRT-abc-EntropyCalibration2\nx: 3c010a14\n", "malformed header"),
        (b"TRT-1234567890123-EntropyCalibration2\n", "malformed header"),
        (b"TRT-8601-EntropyCalibration2\nx: zz\n", "line 2"),
        (b"TRT-8601-EntropyCalibration2\nx: 123456789\n", "up to 8 hex digits"),
        (b"TRT-8601-EntropyCalibration2\nx:3c010a14\n", "line 2"),
        (b"TRT-8601-EntropyCalibration2\nx: 3c010a14\nTRT-8601-EntropyCalibration2\n", "second header"),
        (b"conv 6.0\nrelu: 3c010a14\n", "onnxruntime"),
        (b'{"a": [1.0', "JSON"),
        (b'{"a": {"lowest": 1}}', "lowest/highest"),
        (b'{"a": ["x", "y"]}', "not a number"),
        (b"[" * 50000, "not a calibration table"),
        (b"{" + b'"a":' * 30000, "JSON"),
    ],
)
def test_malformed_input_is_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(CalibTableError, match=message):
        parse_table(data)


def test_read_table_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.cache"
    path.write_bytes(b"nonsense here\n")
    with pytest.raises(CalibTableError, match=r"bad\.cache"):
        read_table(path)
    with pytest.raises(CalibTableError, match="cannot read"):
        read_table(tmp_path / "missing.cache")


def test_repeated_names_keep_the_last_value_and_are_reported() -> None:
    table = parse_table(b"TRT-8601-EntropyCalibration2\na: 3c010a14\nb: 3c010a14\na: 3d000000\n")
    assert table.entries["a"] == struct.unpack(">f", bytes.fromhex("3d000000"))[0]
    assert list(table.entries) == ["a", "b"] and table.duplicates == ("a",)
    assert table_stats(table).duplicates == ["a"]


def test_stats_count_every_degenerate_kind() -> None:
    table = parse_table(b"TRT-8601-EntropyCalibration2\nz: 0\nneg: bf800000\ninf: 7f800000\nnan: 7fc00000\nsub: 00000001\nok: 3c010a14\n")
    stats = table_stats(table)
    assert (stats.zero, stats.negative, stats.inf, stats.nan, stats.denormal) == (1, 1, 1, 1, 1)
    assert stats.degenerate_names == ["z", "inf", "nan", "neg", "sub"]
    assert stats.min_scale == -1.0 and stats.max_scale == struct.unpack(">f", bytes.fromhex("3c010a14"))[0]
    assert stats.min_positive_scale == pytest.approx(2**-149)


def test_new_table_writes_the_header_for_the_requested_version() -> None:
    table = new_table({"input": 1.0 / 127.0}, "8.6.1", "MinMaxCalibration")
    assert write_table(table) == b"TRT-8601-MinMaxCalibration\ninput: " + scale_hex(1.0 / 127.0).encode() + b"\n"
    assert with_header_version(table, 100300).trt_version == "10.3.0"
    with pytest.raises(CalibTableError):
        with_header_version(table, "not a version")


# --- property tests ------------------------------------------------------------------------------------


def _bits_of(table: CalibTable) -> List[tuple]:
    out = []
    for name, scale in table.entries.items():
        out.append((name, "nan" if math.isnan(scale) else struct.pack(">f", scale)))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        table = parse_table(data)
    except CalibTableError:
        return
    if table.format != FORMAT_ORT_JSON:
        again = parse_table(write_table(table))  # what we write, we read back the same
        assert _bits_of(again) == _bits_of(table) and again.header == table.header


names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), min_size=1, max_size=30).filter(
    lambda n: n.strip() != "" and not n.startswith("TRT-") and not n.startswith("{") and not n.startswith("\ufeff")
)
pieces = st.sampled_from(["TRT-8601-EntropyCalibration2", "a: 3c010a14", "b: 0", "x: y: 7f800000", ": ", "\r", "\n", "TRT-", "1.5e3", " ", "zz", "{", "\x00"])


@settings(max_examples=200, deadline=None)
@given(st.lists(pieces, max_size=20))
def test_spliced_table_fragments_never_crash_the_parser(parts: List[str]) -> None:
    data = "".join(parts).encode()
    try:
        parse_table(data)
    except CalibTableError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(names, st.integers(0, 2**32 - 1), max_size=20),
    st.integers(0, 999999),
    st.sampled_from(["EntropyCalibration2", "MinMaxCalibration"]),
    st.booleans(),
)
def test_well_formed_tables_round_trip_exactly(entries: Dict[str, int], code: int, algorithm: str, crlf: bool) -> None:
    newline = "\r\n" if crlf else "\n"
    lines = [f"TRT-{code}-{algorithm}"] + [f"{name}: {bits:08x}" for name, bits in entries.items()]
    data = (newline.join(lines) + newline).encode("utf-8")
    table = parse_table(data)
    assert table.format == FORMAT_TENSORRT and len(table) == len(entries) and table.version_code == code
    for name, bits in entries.items():
        assert struct.unpack(">I", struct.pack(">f", table.entries[name]))[0] == bits or math.isnan(table.entries[name])
    assert write_table(table) == data
