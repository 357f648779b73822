"""The command line's shared behaviour: global options before or after the subcommand, one answer to a missing
action, one JSON-or-name parser, and a `--help` that imports no subcommand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from agent.cli.main import build_parser, main
from agent.cli.options import json_or_name
from agent.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[device]\nid = "cli-1"\n[state]\ndir = "{tmp_path / "state"}"\n')
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "F", "run"],
        ["run", "--config", "F"],
        ["--config", "F", "engine", "list"],
        ["engine", "list", "--config", "F"],
        ["engine", "--config", "F", "list"],
    ],
)
def test_config_is_accepted_before_or_after_the_subcommand(argv: List[str]) -> None:
    args = build_parser(argv).parse_args(argv)
    assert args.config == "F"


def test_a_value_given_first_is_kept_when_the_subcommand_does_not_repeat_it() -> None:
    args = build_parser(["--log-level", "DEBUG", "status"]).parse_args(["--log-level", "DEBUG", "status"])
    assert args.log_level == "DEBUG" and args.config is None


def test_both_places_read_the_same_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = str(_config(tmp_path))
    reports = []
    for argv in (["--config", config, "status", "--json"], ["status", "--json", "--config", config]):
        assert main(argv) == 1  # no agent runs here
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0]["state_dir"] == reports[1]["state_dir"] == str(tmp_path / "state")


@pytest.mark.parametrize("command", ["calib", "camera", "engine", "fleet", "store"])
def test_a_missing_action_is_a_usage_error_that_lists_the_actions(command: str, capsys: pytest.CaptureFixture) -> None:
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert "choose an action" in err and "ACTION" in err


def test_json_or_name_takes_inline_json_a_json_file_or_a_name(tmp_path: Path) -> None:
    spec = {"size": [8, 8], "resize": "stretch"}
    path = tmp_path / "pre.json"
    path.write_text(json.dumps(spec))
    assert json_or_name(json.dumps(spec), "--preprocess") == spec
    assert json_or_name(str(path), "--preprocess") == spec
    assert json_or_name("efficientnet_lite", "--preprocess") == "efficientnet_lite"
    assert json_or_name(None, "--preprocess") is None
    with pytest.raises(UsageError, match="--preprocess: not valid JSON"):
        json_or_name("{nope", "--preprocess")
    with pytest.raises(UsageError, match="cannot read"):
        json_or_name(str(tmp_path / "missing.json"), "--preprocess")


def test_fleet_deploy_takes_preprocessing_from_a_json_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = {"size": [8, 8], "resize": "stretch"}
    path = tmp_path / "pre.json"
    path.write_text(json.dumps(spec))
    argv = ["fleet", "deploy", "cli-1", "--model", "a" * 64, "--precision", "fp32", "--target", "cpu", "--preprocess", str(path), "--dry-run"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["deployment"]["preprocess"]["size"] == [8, 8]


def test_a_bad_target_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fleet", "deploy", "cli-1", "--model", "a" * 64, "--target", "tpu", "--dry-run"])
    assert exc.value.code == 2 and "gpu, dla:N or cpu" in capsys.readouterr().err


def test_help_imports_no_subcommand_module() -> None:
    code = (
        "import sys\n"
        "from agent.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('agent.cli.') and m.endswith('_cmd')), 'numpy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[] False"
