"""`edge-agent fleet keys|publish|serve` and `edge-agent store pull|list|verify|gc`, with a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.fleet.local_broker import LocalBroker
from agent.fleet.signing import GeneratedKeys
from tests.artifacts.conftest import DeviceFactory, Operator, write_config
from tests.helpers import REPO_ROOT, Collector, json_of


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def cli_config(broker: LocalBroker, keys: GeneratedKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("EDGE_AGENT_"):
            monkeypatch.delenv(name, raising=False)
    return write_config(tmp_path / "agent.toml", broker, device_id="cli-dev", state_dir=tmp_path / "state",
                        public_key=keys.public_hex, prefix="cli")


def test_keys_generate_writes_a_private_key_only_the_owner_reads(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                                  cli_config: Path) -> None:
    code, out, _ = run_cli(capsys, "--config", str(cli_config), "fleet", "keys", "generate", "-o", str(tmp_path / "k"), "--json")
    assert code == 0
    made = json.loads(out)
    assert Path(made["private_path"]).stat().st_mode & 0o777 == 0o600
    assert len(made["public_hex"]) == 64 and len(made["key_id"]) == 16
    code, _, err = run_cli(capsys, "--config", str(cli_config), "fleet", "keys", "generate", "-o", str(tmp_path / "k"))
    assert code == 1 and "already exists" in err


def test_publish_pull_list_verify_gc(capsys: pytest.CaptureFixture, broker: LocalBroker, keys: GeneratedKeys,
                                     cli_config: Path, tmp_path: Path) -> None:
    table = tmp_path / "efficientnet.cache"
    table.write_bytes(b"TRT-100300-EntropyCalibration2\n" + b"input: 3c010a14\n" * 500)
    folder = tmp_path / "fleet-artifacts"
    watcher = Collector(broker.host, broker.port, ["cli/artifacts/+/manifest"])
    try:
        code, out, _ = run_cli(capsys, "--config", str(cli_config), "fleet", "publish", str(table), "--kind", "calib",
                               "--key", str(keys.private_path), "--artifacts", str(folder), "--chunk-size", "1024", "--json")
        assert code == 0
        published = json.loads(out)
        manifest = json_of(watcher.wait_for(lambda m: published["artifact_id"] in m.topic))
    finally:
        watcher.close()
    assert manifest["name"] == "efficientnet.cache" and manifest["kind"] == "calib" and manifest["key_id"] == keys.key_id
    assert (folder / published["artifact_id"]).is_file() and published["blocks"] == manifest["size"] // 1024 + 1

    server = Operator(broker, folder, keys, prefix="cli")
    try:
        code, out, _ = run_cli(capsys, "--config", str(cli_config), "store", "pull", published["artifact_id"],
                               "--kind", "calib", "--json")
    finally:
        server.close()
    assert code == 0
    pulled = json.loads(out)
    assert Path(pulled["path"]).read_bytes() == table.read_bytes() and pulled["kind"] == "calib"

    code, out, _ = run_cli(capsys, "--config", str(cli_config), "store", "list", "--json")
    assert [a["artifact_id"] for a in json.loads(out)["artifacts"]] == [published["artifact_id"]]
    assert run_cli(capsys, "--config", str(cli_config), "store", "verify")[0] == 0

    stored = Path(pulled["path"])
    os.chmod(stored, 0o644)
    stored.write_bytes(b"bit rot")
    code, out, _ = run_cli(capsys, "--config", str(cli_config), "store", "verify", "--json")
    assert code == 1 and "content hash" in json.loads(out)["problems"][0]["problem"]

    state = tmp_path / "state"
    (state / "state.json").write_text(json.dumps({"keep_artifacts": [published["artifact_id"]]}))
    code, out, _ = run_cli(capsys, "--config", str(cli_config), "store", "gc", "--json")
    assert code == 0 and json.loads(out)["removed"] == []
    (state / "state.json").write_text(json.dumps({"keep_artifacts": []}))
    code, out, _ = run_cli(capsys, "--config", str(cli_config), "store", "gc", "--dry-run", "--json")
    assert json.loads(out)["removed"] == [published["artifact_id"]] and stored.exists()
    code, out, _ = run_cli(capsys, "--config", str(cli_config), "store", "gc", "--json")
    assert json.loads(out)["removed"] == [published["artifact_id"]] and not stored.exists()


def test_publish_refuses_a_name_with_a_path_separator(capsys: pytest.CaptureFixture, keys: GeneratedKeys,
                                                      cli_config: Path, tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    source.write_bytes(b"x")
    code, _, err = run_cli(capsys, "--config", str(cli_config), "fleet", "publish", str(source), "--kind", "model",
                           "--name", "../../m.onnx", "--key", str(keys.private_path), "--artifacts", str(tmp_path / "a"))
    assert code == 1 and "path separator" in err
    assert not (tmp_path / "a").exists()


def test_fleet_serve_publishes_what_it_holds_and_answers(capsys: pytest.CaptureFixture, keys: GeneratedKeys,
                                                         cli_config: Path, make_device: DeviceFactory, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(os.urandom(300_000))
    folder = tmp_path / "served"
    code, out, _ = run_cli(capsys, "--config", str(cli_config), "fleet", "publish", str(model), "--kind", "model",
                           "--key", str(keys.private_path), "--artifacts", str(folder), "--offline", "--json")
    assert code == 0
    artifact_id = json.loads(out)["artifact_id"]  # not on the broker yet: serve publishes it when it connects
    serve = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(cli_config), "fleet", "serve",
                              "--artifacts", str(folder), "--json"],
                             cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert serve.stderr is not None
        lines = [serve.stderr.readline() for _ in range(1)]
        while not lines[-1].startswith("serving") and lines[-1] and len(lines) < 20:  # skip warnings (Python 3.8)
            lines.append(serve.stderr.readline())
        assert lines[-1].startswith("serving 1 artifacts"), lines
        device = make_device(prefix="cli")
        assert device.pull(artifact_id, expect_kind="model").read_bytes() == model.read_bytes()
    finally:
        serve.send_signal(signal.SIGTERM)
        out, _err = serve.communicate(timeout=20)
    assert serve.returncode == 0
    assert json.loads(out)["bytes_sent"] == 300_000
