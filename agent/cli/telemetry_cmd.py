"""`edge-agent telemetry`: print telemetry documents locally, or parse a tegrastats log.

    edge-agent telemetry --once --json           one document, as the agent would publish it
    edge-agent telemetry [--count N] [--json]    a document every telemetry.interval_s until Ctrl-C
    edge-agent telemetry parse-tegrastats FILE --json
                                                 one JSON object per tegrastats line (FILE '-' = stdin)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, Iterable, List, Optional

from agent.cli.options import add_json_flag
from agent.cli.output import print_json, print_table
from agent.config import load_config
from agent.errors import AgentError, UsageError
from agent.telemetry.document import TelemetryCollector, from_compact
from agent.telemetry.tegrastats import parse_line


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "telemetry",
        description="Print the telemetry document this device would publish (system, Jetson, GPU sections), "
        "or parse a file of tegrastats lines.",
    )
    parser.add_argument("--once", action="store_true", help="print one document and exit")
    parser.add_argument("--count", type=int, default=0, help="print N documents and exit (default: until Ctrl-C)")
    parser.add_argument("--interval", type=float, default=None, help="seconds between documents (default: telemetry.interval_s)")
    parser.add_argument("--compact", action="store_true", help="the compact form (short keys, no per-core detail)")
    add_json_flag(parser)
    parser.set_defaults(func=_run_documents)
    actions = parser.add_subparsers(dest="telemetry_action", metavar="ACTION", parser_class=type(parser))
    parse = actions.add_parser(
        "parse-tegrastats",
        help="parse tegrastats lines from FILE ('-' for stdin); # comments and blank lines are skipped",
    )
    parse.add_argument("file", metavar="FILE", help="a tegrastats log, e.g. from 'tegrastats --logfile'")
    add_json_flag(parse)
    parse.set_defaults(func=_run_parse)


def _run_documents(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.count < 0:
        raise UsageError("--count must be 0 (until Ctrl-C) or more")
    interval = args.interval if args.interval is not None else config.telemetry.interval_s
    if interval <= 0:
        raise UsageError("--interval must be positive")
    wanted = 1 if args.once else args.count
    collector = TelemetryCollector(config.telemetry, config.state_dir, device_id=config.device.id)
    collector.interval_s = interval
    printed = 0
    try:
        collector.start()
        # a window for CPU percentages and time for tegrastats' first line
        collector.wait_ready(min(interval, config.telemetry.interval_s) + 1.0)
        time.sleep(0.5)
        while True:
            doc = collector.collect(compact_form=True if args.compact else None)
            if args.json:
                if wanted == 1:
                    print_json(doc)
                else:
                    sys.stdout.write(json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str) + "\n")
                    sys.stdout.flush()
            else:
                _print_summary(doc)
            printed += 1
            if wanted and printed >= wanted:
                return 0
            time.sleep(interval)
    finally:
        collector.close()


def _print_summary(doc: Dict[str, Any]) -> None:
    doc = from_compact(doc)
    system = doc.get("system") or {}
    cpu = system.get("cpu") or {}
    mem = system.get("memory") or {}
    disk = system.get("disk") or {}
    proc = system.get("process") or {}
    rows: List[List[Any]] = [
        ["device", doc.get("device")],
        ["cpu", f"{cpu.get('total_pct')} % of {cpu.get('count')} cores"],
        ["memory", f"{mem.get('used_mb')} / {mem.get('total_mb')} MB"],
        ["state disk", f"{disk.get('free_mb')} MB free ({disk.get('path')})"],
        ["agent process", f"rss {proc.get('rss_mb')} MB, cpu {proc.get('cpu_pct')} %"],
    ]
    temps = system.get("temps_c") or {}
    if temps:
        hottest = max(((v, k) for k, v in temps.items() if v is not None), default=None)
        if hottest is not None:
            rows.append(["hottest zone", f"{hottest[1]} {hottest[0]} °C"])
    tegra = (doc.get("jetson") or {}).get("tegrastats")
    if tegra:
        rows.append(["tegrastats", _tegra_summary(tegra)])
    for gpu in (doc.get("gpu") or {}).get("devices") or []:
        rows.append([f"gpu {gpu.get('index')}", f"{gpu.get('name')}: {gpu.get('util_pct')} %, {gpu.get('temp_c')} °C, "
                     f"{gpu.get('power_mw')} mW, throttled={gpu.get('throttled')}"])
    for name, reason in (doc.get("unavailable") or {}).items():
        rows.append([f"({name})", reason])
    print_table(["field", "value"], rows)
    sys.stdout.flush()


def _tegra_summary(sample: Dict[str, Any]) -> str:
    parts: List[str] = []
    gpu = sample.get("gpu")
    if gpu:
        parts.append(f"gpu {gpu.get('load_pct')}%@{gpu.get('freq_mhz')}MHz")
    rails = sample.get("power_mw") or {}
    if rails:
        name, rail = next(iter(rails.items()))
        parts.append(f"{name} {rail.get('now')} mW")
    temps = [v for v in (sample.get("temps_c") or {}).values() if v is not None]
    if temps:
        parts.append(f"max {max(temps)} °C")
    return ", ".join(parts) or "-"


def _run_parse(args: argparse.Namespace) -> int:
    # `... | head` (BrokenPipeError) ends quietly in agent.cli.main, as for every command
    if args.file == "-":
        return _parse_stream(sys.stdin, args.json)
    try:
        handle = open(args.file, encoding="utf-8", errors="replace")  # noqa: SIM115 - `with handle` below
    except OSError as exc:
        raise AgentError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    with handle:
        return _parse_stream(handle, args.json)


def _parse_stream(lines: Iterable[str], as_json: bool) -> int:
    rows: List[List[Optional[str]]] = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sample = parse_line(line).to_dict()
        if as_json:
            sys.stdout.write(json.dumps(sample, separators=(",", ":"), allow_nan=False) + "\n")
        else:
            rows.append(_parse_row(sample))
    if not as_json:
        print_table(["time", "ram MB", "cpus on", "gpu", "max °C", "rails", "unknown"], rows)
    return 0


def _parse_row(sample: Dict[str, Any]) -> List[Optional[str]]:
    ram = sample.get("ram")
    cpus = sample.get("cpus")
    gpu = sample.get("gpu")
    temps = [v for v in sample["temps_c"].values() if v is not None]
    return [
        sample.get("time") or "-",
        f"{ram['used_mb']}/{ram['total_mb']}" if ram else "-",
        f"{sum(1 for c in cpus if c is not None)}/{len(cpus)}" if cpus is not None else "-",
        f"{gpu.get('load_pct')}%@{gpu.get('freq_mhz')}" if gpu else "-",
        str(max(temps)) if temps else "-",
        str(len(sample["power_mw"])),
        " ".join(sample["other"]) or "-",
    ]
