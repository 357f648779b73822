"""`edge-agent`: parse the command line, dispatch to the subcommand, map errors to exit codes.

Exit codes: 0 ok, 1 a check failed or an error a user can act on, 2 usage.
Each subcommand lives in `agent/cli/<name>_cmd.py` with `register(subparsers)`. Only the module of the
subcommand asked for is imported (the table below gives the others' one-line help), so `--help` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Dict, List, Optional

from agent import __version__
from agent.cli.options import EXIT_FAILED, EXIT_USAGE, GLOBAL_VALUE_OPTIONS, Parser, add_global_options
from agent.errors import AgentError, UsageError

# name -> one-line help; the module is agent/cli/<name>_cmd.py
COMMANDS: Dict[str, str] = {
    "run": "run the agent: connect to the broker, serve the desired deployment, obey fleet commands",
    "doctor": "check the machine, the configuration, the broker and the service; print fixes",
    "status": "the live state of the agent running on this machine",
    "device": "fingerprint this device: module, L4T/JetPack, TensorRT, CUDA, compute capability, DLA cores",
    "calib": "inspect, check, diff, make and convert INT8 calibration tables",
    "engine": "build, check, inspect, list, clean and validate engines; classify TensorRT logs",
    "camera": "probe camera sources, run the camera pipeline locally",
    "telemetry": "print the telemetry document, or parse a tegrastats log",
    "fleet": "operator side: signing keys, artifacts, validation sets, deployments, commands, fleet status",
    "store": "the artifact store: pull, list, verify, gc",
    "bench": "engine throughput and latency per batch size",
    "version": "print the agent's version and its dependencies' versions",
}


def _command_in(argv: List[str]) -> Optional[str]:
    """The subcommand named in argv (global options and their values skipped), if it is a known one."""
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in GLOBAL_VALUE_OPTIONS:
            skip = True
            continue
        if token.startswith("-"):
            continue
        return token if token in COMMANDS else None
    return None


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The parser for `argv`: the subcommand it names fully registered, the others by name and help only."""
    parser = Parser(prog="edge-agent", description="Deployment agent for NVIDIA Jetson (and DLA) fleets.", global_options=False)
    add_global_options(parser)
    parser.add_argument("-V", "--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    chosen = _command_in(list(sys.argv[1:] if argv is None else argv))
    for name, help_text in COMMANDS.items():
        if name == chosen:
            importlib.import_module(f"agent.cli.{name}_cmd").register(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None) or not hasattr(args, "func"):
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(
        level=(args.log_level or "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code = args.func(args)
    except UsageError as exc:
        sys.stderr.write(f"edge-agent {args.command}: {exc}\n")
        return EXIT_USAGE
    except AgentError as exc:
        sys.stderr.write(f"edge-agent {args.command}: error: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edge-agent ... | head`: the reader left; not an error of ours
        try:
            sys.stdout = open("/dev/null", "w")  # noqa: SIM115 - keep interpreter shutdown from flushing into the closed pipe
        except OSError:
            pass
        return 0
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
