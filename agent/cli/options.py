"""The options subcommands share, declared and parsed one way.

- `--config` and `--log-level` are global: accepted before the subcommand and after it, at any depth
  (`edge-agent --config F run` and `edge-agent run --config F`);
- `--json`: print JSON for machines;
- `--target`: gpu, dla:N or cpu (agent.device.target.Target);
- JSON-or-name options (`--preprocess`, `--postprocess`, `--decoder`, `--thresholds`, `--labels`): inline JSON,
  the path of a JSON file, or a bare name (a preset);
- a command whose sub-action is missing says which actions there are (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from agent.device.target import AUTO, Target, TargetError
from agent.errors import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
GLOBAL_VALUE_OPTIONS = ("--config", "--log-level")
CONFIG_HELP = "TOML configuration file (default: $EDGE_AGENT_CONFIG or /etc/edge-agent/agent.toml)"
LOG_LEVEL_HELP = "DEBUG, INFO, WARNING or ERROR"


class Parser(argparse.ArgumentParser):
    """Every parser of `edge-agent`: usage errors exit 2, and each subcommand parser also takes the global
    options (their default is SUPPRESS there, so a value given before the subcommand is not overwritten)."""

    def __init__(self, *args: Any, global_options: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if global_options:
            add_global_options(self, default=argparse.SUPPRESS)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def add_global_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument("--config", default=default, help=CONFIG_HELP)
    parser.add_argument("--log-level", default=default, help=LOG_LEVEL_HELP)


def add_json_flag(parser: argparse.ArgumentParser, help: str = "print JSON") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def require_action(parser: argparse.ArgumentParser) -> None:
    """`edge-agent engine` without an action: a usage error that lists the actions (exit 2)."""

    def missing(_args: argparse.Namespace) -> int:
        actions = [name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices]
        raise UsageError(f"choose an action ({', '.join(actions)}):\n{parser.format_usage().strip()}")

    parser.set_defaults(func=missing)


def target(text: str) -> str:
    """argparse type for --target: a Target, or 'auto' (the agent decides: agent.device.target.resolve_target)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return Target(text)
    except TargetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_target_option(parser: argparse.ArgumentParser, default: Optional[str] = None, help: str = "auto, gpu, dla:N or cpu") -> None:
    parser.add_argument("--target", type=target, default=default, help=help)


def json_or_name(value: Optional[str], option: str) -> Any:
    """Inline JSON (an object or a list), the path of a JSON file, or a bare name (a preset); None stays None."""
    if value is None:
        return None
    text = value.strip()
    if not text.startswith(("{", "[")):
        path = Path(text)
        if path.suffix.lower() == ".json" or path.is_file():
            try:
                text = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UsageError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
            if not text.startswith(("{", "[")):
                raise UsageError(f"{option}: {path} holds no JSON object or list")
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{option}: not valid JSON ({exc})") from None
    return text


def add_preprocess_option(parser: argparse.ArgumentParser, default: Optional[str] = None) -> None:
    parser.add_argument("--preprocess", default=default, help="a preset (efficientnet_lite, blazeface), inline JSON, or a JSON file")
