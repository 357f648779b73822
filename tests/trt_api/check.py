"""The thin TensorRT layer held to the real bindings of every TensorRT version on PyPI.

    python -m tests.trt_api.check                 # fetch (cached), dump, check, print, write the docs copy
    python -m tests.trt_api.check --dumps DIR     # check against dumps already made (e.g. the test sample)

What it does (docs/tensorrt-api.md says what this proves and what it does not):
(a) extracts every TensorRT use from the thin layer's sources by AST (tests/trt_api/uses.py) and fails when one
    is not in the declared list (tests/trt_api/declared.py), or when a declared name is no longer used;
(b) fails when a declared name is absent from a version inside its declared range (unless the code tests it with
    hasattr first and the entry says so), or is assigned while read-only there;
(c) compares every call's arguments (count, keyword names) and every override's parameters with the pybind11
    signatures of each version inside the range;
(d) prints the table name x version (present, deprecated, absent, outside its branch) and writes a copy to
    docs/hardware/trt-api-matrix.md.
Nothing in TensorRT is executed: the dumps come from import and introspection only (tests/trt_api/bindings.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tests.trt_api.declared import USED
from tests.trt_api.uses import THIN_LAYER, Api, Use, extract_thin_layer, version_tuple

ROOT = Path(__file__).resolve().parents[2]
MATRIX = "docs/hardware/trt-api-matrix.md"
Version = Tuple[int, int, int]

# cell words of the table
PRESENT, DEPRECATED, ABSENT, GUARDED, OUTSIDE = "yes", "DEPR", "ABSENT", "absent/hasattr", "."


@dataclass(frozen=True)
class Declared:
    name: str
    ranges: Tuple[Tuple[Version, Optional[Version]], ...]  # half-open [since, until)
    guard: str  # "" or "hasattr": the code tests the member before using it
    why: str

    def covers(self, version: Version) -> bool:
        return any(since <= version and (until is None or version < until) for since, until in self.ranges)


def parse_ranges(text: str) -> Tuple[Tuple[Version, Optional[Version]], ...]:
    """'8.5-11.0' -> [(8,5,0), (11,0,0)); '10.0-' -> from 10.0 on; '8.5-10.8,11.4.1-' -> two ranges."""
    out = []
    for part in text.split(","):
        since, _, until = part.strip().partition("-")
        out.append((version_tuple(since), version_tuple(until) if until.strip() else None))
    return tuple(out)


def declared_entries(rows: Sequence[Tuple[str, str, str, str]] = USED) -> Dict[str, Declared]:
    entries: Dict[str, Declared] = {}
    for name, ranges, guard, why in rows:
        if name in entries:
            raise ValueError(f"{name} is declared twice in tests/trt_api/declared.py")
        if guard not in ("", "hasattr"):
            raise ValueError(f"{name}: guard must be '' or 'hasattr', not {guard!r}")
        entries[name] = Declared(name, parse_ranges(ranges), guard, why)
    return entries


def lookup(api: Dict[str, Dict[str, object]], name: str) -> Optional[Dict[str, object]]:
    """`Class.member` in one version's dump, also when a base class defines it."""
    if name in api:
        return api[name]
    owner, _, member = name.rpartition(".")
    if owner in api:
        for base in api[owner].get("bases", []) or []:  # type: ignore[union-attr]
            if f"{base}.{member}" in api:
                return api[f"{base}.{member}"]
    return None


def split_params(signature: str) -> Optional[List[Tuple[str, bool]]]:
    """'(self: X, pool: T, pool_size: int = 0) -> None' -> [('self', False), ('pool', False), ('pool_size', True)];
    None when it takes anything (*args / **kwargs)."""
    start = signature.find("(")
    depth, end = 0, -1
    for index in range(start, len(signature)):
        char = signature[index]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                end = index
                break
    inside = signature[start + 1:end]
    params: List[Tuple[str, bool]] = []
    depth, current = 0, ""
    for char in inside + ",":
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            part = current.strip()
            current = ""
            if not part:
                continue
            if part.startswith("*"):
                return None
            name = part.split(":", 1)[0].split("=", 1)[0].strip()
            params.append((name, "=" in part))
            continue
        current += char
    return params


def call_fits(use: Use, signature: str) -> bool:
    params = split_params(signature)
    if params is None or use.starred:
        return True
    if use.implicit_self and params and params[0][0] in ("self", "arg0"):
        params = params[1:]
    if use.positional > len(params):
        return False
    filled = {name for name, _ in params[: use.positional]}
    names = {name for name, _ in params}
    for keyword in use.keywords:
        if keyword not in names or keyword in filled:
            return False
        filled.add(keyword)
    return all(name in filled for name, has_default in params if not has_default)


def override_fits(use: Use, signature: str) -> bool:
    """TensorRT calls a Python override positionally: the count must match; the names are compared too, so that
    a renamed parameter in the bindings shows up in review."""
    params = split_params(signature)
    if params is None:
        return True
    wanted = [name for name, _ in params if name not in ("self", "arg0")]
    return list(use.params) == wanted


@dataclass
class Result:
    versions: List[str]
    rows: Dict[str, List[str]] = field(default_factory=dict)
    failures: List[str] = field(default_factory=list)
    deprecated_in_branch: Dict[str, List[str]] = field(default_factory=dict)


def check(dumps: Dict[str, Dict[str, object]], uses: List[Use], entries: Dict[str, Declared]) -> Result:
    versions = sorted(dumps, key=version_tuple)
    result = Result(versions)
    used = sorted({u.name for u in uses})
    # (a) every use is declared, every declaration used
    for use in uses:
        if use.name not in entries:
            result.failures.append(f"{use.where()}: trt {use.name} ({use.kind}) is not declared in tests/trt_api/declared.py")
    for name in sorted(set(entries) - set(used)):
        result.failures.append(f"tests/trt_api/declared.py: {name} is declared but the thin layer no longer uses it")
    by_name: Dict[str, List[Use]] = {}
    for use in uses:
        by_name.setdefault(use.name, []).append(use)
    for name, entry in sorted(entries.items()):
        name_uses = by_name.get(name, [])
        if entry.guard == "hasattr" and name_uses and not all(u.guarded for u in name_uses):
            first = next(u for u in name_uses if not u.guarded)
            result.failures.append(f"{first.where()}: {name} is declared hasattr-guarded but this use has no hasattr test")
        cells: List[str] = []
        for version in versions:
            api = dumps[version]["api"]
            assert isinstance(api, dict)
            found = lookup(api, name)
            inside = entry.covers(version_tuple(version))
            if not inside:
                cells.append(OUTSIDE)
                continue
            if found is None:
                if entry.guard == "hasattr":
                    cells.append(GUARDED)
                else:
                    cells.append(ABSENT)
                    result.failures.append(f"{name}: absent in TensorRT {version}, inside its branch ({_ranges_text(entry)})")
                continue
            cells.append(DEPRECATED if found.get("deprecated") else PRESENT)
            if found.get("deprecated"):
                result.deprecated_in_branch.setdefault(name, []).append(version)
            # (b') assignments need a writable property; (c) calls and overrides against the signatures
            signatures = [str(s) for s in found.get("signatures", []) or []]  # type: ignore[union-attr]
            for use in name_uses:
                if use.kind == "set" and found.get("kind") == "property" and not found.get("writable"):
                    result.failures.append(f"{use.where()}: {name} is read-only in TensorRT {version}")
                if use.kind == "call" and signatures and not any(call_fits(use, s) for s in signatures):
                    result.failures.append(
                        f"{use.where()}: {name} called with {use.positional} positional argument(s)"
                        + (f" and keywords {', '.join(use.keywords)}" if use.keywords else "")
                        + f"; TensorRT {version} takes {' | '.join(signatures)}"
                    )
                if use.kind == "override" and signatures and not any(override_fits(use, s) for s in signatures):
                    result.failures.append(f"{use.where()}: override {name}({', '.join(use.params)}); TensorRT {version} has {' | '.join(signatures)}")
        result.rows[name] = cells
    return result


def _ranges_text(entry: Declared) -> str:
    def text(version: Version) -> str:
        return ".".join(str(p) for p in (version if version[2] else version[:2]))

    return ", ".join(f"{text(since)} to {text(until) if until else 'newest'}" for since, until in entry.ranges)


def render(result: Result, entries: Dict[str, Declared], dumps: Dict[str, Dict[str, object]]) -> str:
    short = [".".join(v.split(".")[:3]) for v in result.versions]
    lines = [
        "# TensorRT API used by the thin layer, per TensorRT version",
        "",
        "Written by `python -m tests.trt_api.check` (run by `.ci/run`); do not edit by hand. Each row is a name the thin",
        f"layer ({', '.join('`' + f + '`' for f in THIN_LAYER)}) uses; each column the real",
        "Python bindings of one TensorRT version from PyPI, imported against stand-ins for libnvinfer and read by",
        "introspection only (nothing executed; docs/tensorrt-api.md). The range is where the code branch that uses",
        "the name runs (declared in tests/trt_api/declared.py).",
        "",
        f"Cells: `{PRESENT}` present, `{DEPRECATED}` present but marked [DEPRECATED], `{ABSENT}` absent inside the",
        f"branch (the check fails), `{GUARDED}` absent and the code tests it with hasattr first, `{OUTSIDE}` outside",
        "the branch (the code does not use it on that version).",
        "",
        "| name | range | " + " | ".join(short) + " |",
        "|---|---|" + "---|" * len(short),
    ]
    for name, cells in sorted(result.rows.items()):
        entry = entries[name]
        range_text = _ranges_text(entry) + (" (hasattr)" if entry.guard else "")
        lines.append(f"| `{name}` | {range_text} | " + " | ".join(cells) + " |")
    lines += ["", summary(result, entries), ""]
    return "\n".join(lines)


def summary(result: Result, entries: Dict[str, Declared]) -> str:
    absent = {name: [v for v, c in zip(result.versions, cells) if c in (ABSENT, GUARDED)] for name, cells in result.rows.items()}
    absent = {k: v for k, v in absent.items() if v}
    parts = [f"{len(result.rows)} names over {len(result.versions)} TensorRT versions."]
    if absent:
        parts.append("Absent inside their branch: " + "; ".join(f"{k} in {', '.join(v)}" + (" (hasattr-guarded)" if entries[k].guard else "") for k, v in sorted(absent.items())) + ".")
    if result.deprecated_in_branch:
        parts.append(
            "Deprecated where their branch runs: "
            + "; ".join(f"{k} from {v[0]}" for k, v in sorted(result.deprecated_in_branch.items(), key=lambda kv: version_tuple(kv[1][0])))
            + "."
        )
    parts.append(f"Failures: {len(result.failures)}.")
    return " ".join(parts)


def load_dumps(folder: Path) -> Dict[str, Dict[str, object]]:
    dumps: Dict[str, Dict[str, object]] = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        dumps[str(data["version"])] = data
    if not dumps:
        raise SystemExit(f"no dumps (*.json) in {folder}")
    return dumps


def run(dumps: Dict[str, Dict[str, object]], root: Path = ROOT, rows: Sequence[Tuple[str, str, str, str]] = USED) -> Tuple[Result, str]:
    entries = declared_entries(rows)
    uses = extract_thin_layer(root, Api(dumps.values()))
    result = check(dumps, uses, entries)
    return result, render(result, entries, dumps)


SAMPLE = Path(__file__).with_name("sample")


def write_sample(dumps: Dict[str, Dict[str, object]], folder: Path = SAMPLE, rows: Sequence[Tuple[str, str, str, str]] = USED) -> None:
    """The committed sample the check's own tests run on (no network): for each version, only the entries the
    declared names need (the names, their classes and base classes, the classes their signatures return)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    names = [row[0] for row in rows]
    for version, dump in dumps.items():
        api = dump["api"]
        assert isinstance(api, dict)
        keep: Dict[str, object] = {}
        wanted = list(names)
        while wanted:
            name = wanted.pop()
            owner = name.rpartition(".")[0]
            for candidate in (name, owner, *(f"{b}.{name.rpartition('.')[2]}" for b in (api.get(owner) or {}).get("bases", []) or [])):
                if candidate and candidate in api and candidate not in keep:
                    entry = api[candidate]
                    keep[candidate] = entry
                    wanted.extend(str(b) for b in entry.get("bases", []) or [])
                    for signature in entry.get("signatures", []) or []:
                        returned = re.sub(r"^.*\.|^.*::", "", str(signature).rsplit("->", 1)[-1].strip().rstrip("]"))
                        for option in (returned, returned[1:]):
                            if option in api and option not in keep:
                                wanted.append(option)
        sample = {"version": version, "api": dict(sorted(keep.items())), "sample": True}
        (folder / f"{version}.json").write_text(json.dumps(sample, sort_keys=True, indent=0) + "\n", encoding="utf-8")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.trt_api.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dumps", type=Path, help="a folder of dumped APIs (<version>.json); default: fetch and dump every wheel")
    parser.add_argument("--python", help="the interpreter that imports the bindings (default: a Python 3.11)")
    parser.add_argument("--no-write", action="store_true", help=f"do not rewrite {MATRIX}")
    parser.add_argument("--write-sample", action="store_true", help="also rewrite the test sample (tests/trt_api/sample)")
    args = parser.parse_args(argv)
    if args.dumps is not None:
        dumps = load_dumps(args.dumps)
    else:
        from tests.trt_api.bindings import dump_all

        dumps = dump_all(python=args.python)
    result, text = run(dumps)
    print(text)
    if args.write_sample:
        write_sample(dumps)
    if not args.no_write and args.dumps is None:
        (ROOT / MATRIX).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / MATRIX).write_text(text, encoding="utf-8")
    for failure in result.failures:
        print("FAIL " + failure, file=sys.stderr)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
