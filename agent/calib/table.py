"""The calibration table as data: parse every kind seen in the wild, write it back byte for byte, and count
what is wrong with its scales.

TensorRT's cache (calibtables/README.md, 'The format'):
    TRT-<version code>-<Algorithm>          version code: 8601 = 8.6.1, 100300 = 10.3.0
    <tensor name>: <hex>                    big-endian float32 bit pattern of scale = amax / 127

The name is everything before the LAST ": " (real names hold ": ", spaces, '#', '%', commas, parentheses,
paths). The hex may be unpadded ("0" for zero, as some writers do) and is decoded the way trtexec decodes
it. Also recognised: the same lines without a header (old writers), onnxruntime's `calibration.cache`
(`name value`, value a decimal amax, no header) and its `calibration.json`. Anything else is refused
with a message naming what the file looks like; parse_table raises only CalibTableError.

Round trip: write_table(parse_table(data)) == data for well-formed input (LF or CRLF, final newline or not,
padded or bare hex, upper or lower case). Each entry keeps its original spelling, used again only while it
still decodes to the entry's exact float32 bits. Blank lines are tolerated and dropped.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from agent.device.versions import (
    Version,
    VersionError,
    decode_header_version,
    encode_header_version,
    format_version,
    parse_version,
)
from agent.errors import AgentError
from agent.lazy import deferred
from agent.store.atomic import atomic_write_bytes

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")


class CalibError(AgentError):
    """A calibration table cannot be used for what was asked (conversion, computation)."""


class CalibTableError(CalibError):
    """The bytes are not a calibration table this agent can read; the message says what they look like."""


FORMAT_TENSORRT = "tensorrt"
FORMAT_TENSORRT_HEADERLESS = "tensorrt-headerless"
FORMAT_ORT_TEXT = "onnxruntime-text"
FORMAT_ORT_JSON = "onnxruntime-json"
FORMATS = (FORMAT_TENSORRT, FORMAT_TENSORRT_HEADERLESS, FORMAT_ORT_TEXT, FORMAT_ORT_JSON)

ENTROPY2 = "EntropyCalibration2"
MINMAX = "MinMaxCalibration"
# Only these two are verified in files; the other two are plausible by analogy.
KNOWN_ALGORITHMS = (ENTROPY2, MINMAX, "EntropyCalibration", "LegacyCalibration")

HEADER_RE = re.compile(r"^TRT-(\d{1,9})-([A-Za-z0-9_]+)$", re.ASCII)
HEX_RE = re.compile(r"^[0-9a-fA-F]{1,8}$", re.ASCII)
# onnxruntime writes str(float): "6.0", "1.5e-05", "inf", "nan".
DECIMAL_RE = re.compile(r"^[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf|nan|infinity)$", re.IGNORECASE | re.ASCII)
PLAN_MAGICS = (b"ftrt", b"ptrt")
FLOAT32_MIN_NORMAL = 1.1754943508222875e-38
BOM = "\ufeff"


@dataclass(frozen=True)
class CalibTable:
    """One calibration table. `entries` maps tensor name to scale (float32 values, amax = scale x 127), in file
    order; treat it as read-only and derive new tables with dataclasses.replace or the functions below."""

    format: str
    trt_version: Optional[str] = None  # "8.6.1" from the header code; None where the file has no header
    version_code: Optional[int] = None  # the number in the header, as written (8601, 100300)
    algorithm: Optional[str] = None  # "EntropyCalibration2", "MinMaxCalibration", ...
    entries: Dict[str, float] = field(default_factory=dict)
    # What a byte-exact round trip needs; ignored where it no longer matches the data.
    spelling: Dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    header_text: Optional[str] = field(default=None, compare=False, repr=False)
    newline: str = field(default="\n", compare=False, repr=False)
    final_newline: bool = field(default=True, compare=False, repr=False)
    bom: bool = field(default=False, compare=False, repr=False)
    duplicates: Tuple[str, ...] = field(default=(), compare=False)  # names written more than once (last wins)

    def __len__(self) -> int:
        return len(self.entries)

    def scale(self, name: str) -> float:
        try:
            return self.entries[name]
        except KeyError:
            raise CalibTableError(f"no entry for tensor {name!r} in the table") from None

    def amax(self, name: str) -> float:
        """The dynamic range TensorRT derives: |x| <= amax = scale x 127, computed in float32 as TensorRT does."""
        return float(_float32(self.scale(name)) * np.float32(127.0))

    @property
    def header(self) -> Optional[str]:
        if self.format != FORMAT_TENSORRT or self.version_code is None or self.algorithm is None:
            return None
        return f"TRT-{self.version_code}-{self.algorithm}"

    @property
    def version(self) -> Optional[Version]:
        return decode_header_version(self.version_code) if self.version_code is not None else None


# --- numbers -------------------------------------------------------------------------------------------


def _float32(value: float) -> np.float32:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.float32(value)


def scale_bits(scale: float) -> int:
    """The float32 bit pattern TensorRT stores for `scale`."""
    return int(np.array([_float32(scale)], dtype=">f4").view(">u4")[0])


def scale_from_bits(bits: int) -> float:
    return float(struct.unpack(">f", bits.to_bytes(4, "big"))[0])


def scale_hex(scale: float) -> str:
    """Canonical spelling: 8 lowercase hex digits, zero padded (as TensorRT writes it)."""
    return f"{scale_bits(scale):08x}"


def scale_from_amax(amax: float) -> float:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return float(np.float32(amax) / np.float32(127.0))


def _same_float32(a: float, b: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return True
    return scale_bits(a) == scale_bits(b)


def is_usable_scale(scale: float) -> bool:
    """A scale TensorRT and Q/DQ can apply: finite and positive."""
    return math.isfinite(scale) and scale > 0.0


# --- parsing -------------------------------------------------------------------------------------------


def read_table(path: Union[str, Path]) -> CalibTable:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CalibTableError(f"cannot read calibration table {path}: {exc.strerror or exc}") from None
    try:
        return parse_table(data)
    except CalibTableError as exc:
        raise CalibTableError(f"{path}: {exc}") from None


def parse_table(data: bytes) -> CalibTable:
    """Bytes -> CalibTable, or CalibTableError saying what the bytes look like instead."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CalibTableError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.strip():
        raise CalibTableError("the file is empty: a TensorRT calibration table starts with 'TRT-<version>-<algorithm>'")
    if data[:4] in PLAN_MAGICS:
        raise CalibTableError("this is a serialized TensorRT engine (plan), not a calibration table")
    if b"\x00" in data:
        raise CalibTableError(
            "binary data, not a text calibration table (an ONNX model? onnxruntime's calibration.flatbuffers is not read: "
            "use the calibration.cache or calibration.json written beside it)"
        )
    text = data.decode("utf-8", "surrogateescape")  # names keep their bytes even when they are not UTF-8
    bom = text.startswith(BOM)
    if bom:
        text = text[len(BOM) :]
    if text.lstrip().startswith("{"):
        return _parse_ort_json(text)
    raw_lines = text.split("\n")  # not splitlines(): names may hold \x0b, \x1c or U+2028
    final_newline = raw_lines[-1] == ""
    if final_newline:
        raw_lines.pop()
    crlf = bool(raw_lines) and all(line.endswith("\r") for line in raw_lines)
    lines = [(number, line[:-1] if line.endswith("\r") else line) for number, line in enumerate(raw_lines, 1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    if not lines:
        raise CalibTableError("the file holds only white space: a TensorRT calibration table starts with 'TRT-<version>-<algorithm>'")
    newline = "\r\n" if crlf else "\n"
    first_number, first = lines[0]
    layout = {"newline": newline, "final_newline": final_newline, "bom": bom}
    if first.startswith("TRT-") and not (HEADER_RE.match(first.rstrip()) is None and _trt_entry(first) is not None):
        match = HEADER_RE.match(first.rstrip())
        if not match:
            raise CalibTableError(f"line {first_number}: malformed header {_show(first)} (expected 'TRT-<version>-<algorithm>')")
        code = int(match.group(1))
        return replace(
            _parse_entries(lines[1:], FORMAT_TENSORRT, layout),
            trt_version=format_version(decode_header_version(code)),
            version_code=code,
            algorithm=match.group(2),
            header_text=first,
        )
    if _trt_entry(first) is not None:
        return _parse_entries(lines, FORMAT_TENSORRT_HEADERLESS, layout)
    if _ort_entry(first) is not None:
        return _parse_entries(lines, FORMAT_ORT_TEXT, layout)
    raise CalibTableError(
        f"not a calibration table: line {first_number} is {_show(first)}; expected a header 'TRT-<version>-<algorithm>', "
        "'name: hex' lines (TensorRT) or 'name value' lines (onnxruntime calibration.cache)"
    )


def _show(line: str, limit: int = 80) -> str:
    clean = line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return repr(clean if len(clean) <= limit else clean[:limit] + "...")


def _trt_entry(line: str) -> Optional[Tuple[str, str, float]]:
    name, sep, value = line.rpartition(": ")
    if not sep or not name or not HEX_RE.match(value.strip()):
        return None
    return name, value, scale_from_bits(int(value.strip(), 16))


def _ort_entry(line: str) -> Optional[Tuple[str, str, float]]:
    parts = line.rstrip().rsplit(None, 1)
    if len(parts) != 2 or not DECIMAL_RE.match(parts[1]):
        return None
    name = line[: len(line.rstrip()) - len(parts[1])].rstrip()
    if not name:
        return None
    return name, line[len(name) :], scale_from_amax(float(parts[1]))


def _parse_entries(lines: List[Tuple[int, str]], fmt: str, layout: Dict[str, Any]) -> CalibTable:
    """Entry lines -> table. TensorRT's readers keep the last value of a repeated name; so does this one."""
    parse_line = _ort_entry if fmt == FORMAT_ORT_TEXT else _trt_entry
    expected = "'<tensor name> <decimal amax>' (onnxruntime calibration.cache)" if fmt == FORMAT_ORT_TEXT else "'<tensor name>: <up to 8 hex digits>'"
    entries: Dict[str, float] = {}
    spelling: Dict[str, str] = {}
    duplicates: List[str] = []
    for number, line in lines:
        parsed = parse_line(line)
        if parsed is None:
            if HEADER_RE.match(line.rstrip()):
                raise CalibTableError(f"line {number}: a second header {_show(line)}: two tables concatenated?")
            raise CalibTableError(f"line {number}: expected {expected}, got {_show(line)}")
        name, value, scale = parsed
        if name in entries and name not in duplicates:
            duplicates.append(name)
        entries[name] = scale
        spelling[name] = value
    return CalibTable(format=fmt, entries=entries, spelling=spelling, duplicates=tuple(duplicates), **layout)


def _json_number(value: Any, where: str) -> float:
    if isinstance(value, dict) and "data" in value:  # numpy array encoded by CalibrationCacheEncoder
        value = value["data"]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalibTableError(f"onnxruntime calibration.json: {where} is not a number")
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _parse_ort_json(text: str) -> CalibTable:
    """onnxruntime's calibration.json: {name: [lowest, highest]} (old), {name: {"lowest", "highest"}} or
    TensorsData.to_dict() {"CLS": "TensorsData", "data": {...}}. The symmetric amax is max(|lowest|, |highest|)."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CalibTableError(f"the file starts like JSON but does not parse: {str(exc)[:200]}") from None
    if not isinstance(document, dict):
        raise CalibTableError("JSON calibration table must be an object of tensor ranges")
    algorithm = None
    if isinstance(document.get("data"), dict) and "CLS" in document:
        method = document.get("calibration_method")
        if isinstance(method, dict):
            method = method.get("value")
        algorithm = str(method).split(".")[-1] if method is not None else None
        document = document["data"]
    entries: Dict[str, float] = {}
    for name, value in document.items():
        if isinstance(value, dict):
            if "lowest" not in value or "highest" not in value:
                raise CalibTableError(f"onnxruntime calibration.json: tensor {_show(name)} has no lowest/highest")
            low, high = value["lowest"], value["highest"]
        elif isinstance(value, list) and len(value) >= 2:
            low, high = value[0], value[1]
        else:
            raise CalibTableError(f"onnxruntime calibration.json: tensor {_show(name)} is not a [lowest, highest] range")
        amax = max(abs(_json_number(low, f"{_show(name)} lowest")), abs(_json_number(high, f"{_show(name)} highest")))
        entries[name] = scale_from_amax(amax)
    return CalibTable(format=FORMAT_ORT_JSON, algorithm=algorithm, entries=entries)


# --- writing -------------------------------------------------------------------------------------------


def write_table(table: CalibTable) -> bytes:
    """The table in its own format; byte-identical to what was parsed when nothing changed."""
    if table.format == FORMAT_ORT_JSON:
        raise CalibTableError("onnxruntime calibration.json tables are read-only: write them as TensorRT with with_header_version()")
    if table.format not in FORMATS:
        raise CalibTableError(f"unknown table format {table.format!r} (known: {', '.join(FORMATS)})")
    lines: List[str] = []
    if table.format == FORMAT_TENSORRT:
        if table.version_code is None or not table.algorithm:
            raise CalibTableError("a TensorRT table needs a version code and an algorithm for its header")
        header = f"TRT-{table.version_code}-{table.algorithm}"
        original = table.header_text
        lines.append(original if original is not None and original.rstrip() == header else header)
    for name, scale in table.entries.items():
        _check_name(name, table.format)
        lines.append(_entry_line(table, name, scale))
    text = table.newline.join(lines) + (table.newline if table.final_newline or not lines else "")
    if table.bom:
        text = BOM + text
    return text.encode("utf-8", "surrogateescape")


def _check_name(name: str, fmt: str) -> None:
    if not name or "\n" in name:
        raise CalibTableError(f"tensor name {_show(name)} cannot be written in a table (empty or holds a line break)")
    if fmt == FORMAT_ORT_TEXT and (not name.strip() or name != name.rstrip()):
        raise CalibTableError(f"tensor name {_show(name)} cannot be written as onnxruntime text (blank or ends in white space)")


def _entry_line(table: CalibTable, name: str, scale: float) -> str:
    spelled = table.spelling.get(name)
    if table.format == FORMAT_ORT_TEXT:
        if spelled is not None:
            parsed = _ort_entry(f"{name}{spelled}")
            if parsed is not None and parsed[0] == name and _same_float32(parsed[2], scale):
                return f"{name}{spelled}"
        return f"{name} {float(_float32(scale) * np.float32(127.0))!r}"
    if spelled is not None and HEX_RE.match(spelled.strip()) and _same_float32(scale_from_bits(int(spelled.strip(), 16)), scale):
        return f"{name}: {spelled}"
    return f"{name}: {scale_hex(scale)}"


def write_table_file(path: Union[str, Path], table: CalibTable) -> None:
    atomic_write_bytes(path, write_table(table))


# --- deriving tables -----------------------------------------------------------------------------------


def with_header_version(table: CalibTable, version: Union[str, Version, int], algorithm: Optional[str] = None) -> CalibTable:
    """The same scales under a header for another TensorRT (for the cache-only calibrator route: TensorRT skips a
    cache whose header names another version or calibrator). Headerless and onnxruntime tables become TensorRT
    tables; their algorithm defaults to EntropyCalibration2, the calibrator the cache route uses (and DLA needs)."""
    if isinstance(version, int):
        code = version
    else:
        try:
            parsed = parse_version(version) if isinstance(version, str) else version
        except VersionError as exc:
            raise CalibTableError(str(exc)) from None
        code = encode_header_version(parsed)
    if code < 0 or code > 999999999:
        raise CalibTableError(f"TensorRT version code {code} does not fit a header")
    algo = algorithm or (table.algorithm if table.format == FORMAT_TENSORRT else None) or ENTROPY2
    if not algo or not re.match(r"^[A-Za-z0-9_]+$", algo):
        raise CalibTableError(f"algorithm {algo!r} cannot be written in a header")
    same_format = table.format == FORMAT_TENSORRT
    return replace(
        table,
        format=FORMAT_TENSORRT,
        version_code=code,
        trt_version=format_version(decode_header_version(code)),
        algorithm=algo,
        header_text=None,
        spelling=dict(table.spelling) if same_format or table.format == FORMAT_TENSORRT_HEADERLESS else {},
        duplicates=(),
    )


def new_table(
    entries: Dict[str, float], trt_version: Union[str, Version] = "10.3.0", algorithm: str = ENTROPY2
) -> CalibTable:
    """A TensorRT-format table from scales (what `calib make` writes)."""
    base = CalibTable(format=FORMAT_TENSORRT_HEADERLESS, entries={name: float(_float32(s)) for name, s in entries.items()})
    return with_header_version(base, trt_version, algorithm)


def without_entries(table: CalibTable, names: List[str]) -> CalibTable:
    drop = set(names)
    return replace(table, entries={n: s for n, s in table.entries.items() if n not in drop})


# --- statistics ----------------------------------------------------------------------------------------

DEGENERATE_KINDS = ("zero", "inf", "nan", "negative", "denormal")


@dataclass(frozen=True)
class TableStats:
    entries: int
    zero: int
    inf: int
    nan: int
    negative: int
    denormal: int
    min_scale: Optional[float]  # smallest and largest finite scale (zero included), None when there is none
    max_scale: Optional[float]
    min_positive_scale: Optional[float]
    degenerate: Dict[str, List[str]]  # kind -> tensor names, kinds as DEGENERATE_KINDS
    duplicates: List[str]

    @property
    def degenerate_names(self) -> List[str]:
        seen: Dict[str, None] = {}
        for kind in DEGENERATE_KINDS:
            for name in self.degenerate[kind]:
                seen.setdefault(name, None)
        return list(seen)


def scale_kind(scale: float) -> Optional[str]:
    """Which degenerate kind a scale is, or None for a usable normal scale."""
    if math.isnan(scale):
        return "nan"
    if math.isinf(scale):
        return "inf"  # -inf is broken the same way
    if scale == 0.0:
        return "zero"
    if scale < 0.0:
        return "negative"
    if scale < FLOAT32_MIN_NORMAL:
        return "denormal"
    return None


def table_stats(table: CalibTable) -> TableStats:
    degenerate: Dict[str, List[str]] = {kind: [] for kind in DEGENERATE_KINDS}
    finite = []
    for name, scale in table.entries.items():
        kind = scale_kind(scale)
        if kind is not None:
            degenerate[kind].append(name)
        if math.isfinite(scale):
            finite.append(scale)
    positive = [s for s in finite if s > 0]
    return TableStats(
        entries=len(table.entries),
        zero=len(degenerate["zero"]),
        inf=len(degenerate["inf"]),
        nan=len(degenerate["nan"]),
        negative=len(degenerate["negative"]),
        denormal=len(degenerate["denormal"]),
        min_scale=min(finite) if finite else None,
        max_scale=max(finite) if finite else None,
        min_positive_scale=min(positive) if positive else None,
        degenerate=degenerate,
        duplicates=list(table.duplicates),
    )


def printable(name: str) -> str:
    """A tensor name safe to print (names that were not UTF-8 keep their bytes as surrogates)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def json_float(value: Optional[float]) -> Any:
    """JSON has no inf or nan: spell them as strings."""
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")

