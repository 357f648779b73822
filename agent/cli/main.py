"""`edge-agent`: parse the command line, dispatch to the subcommand, map errors to exit codes.

Exit codes: 0 ok, 1 a check failed or an error a user can act on, 2 usage.
Each subcommand lives in `agent/cli/<name>.py` with `register(subparsers)`; they import heavy modules
(numpy, onnxruntime, cv2, tensorrt) only inside their handlers, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from agent import __version__
from agent.errors import AgentError, UsageError

SUBCOMMANDS = (
    "run",
    "doctor",
    "status",
    "device",
    "calib",
    "engine",
    "camera",
    "telemetry",
    "fleet",
    "store",
    "bench",
    "version",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge-agent", description="Deployment agent for NVIDIA Jetson (and DLA) fleets.")
    parser.add_argument("--config", help="TOML configuration file (default: $EDGE_AGENT_CONFIG or /etc/edge-agent/agent.toml)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("-V", "--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"agent.cli.{name}_cmd").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
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
