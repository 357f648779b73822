"""`edge-agent doctor`: each check's verdict and fix, against real brokers (reachable, TLS, refused auth),
real cameras (an image folder) and a real engine cache; the Jetson checks from recorded fingerprints."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List

import pytest

from agent.cli.main import main
from agent.daemon.doctor import (
    FAIL,
    OK,
    SKIP,
    WARN,
    Check,
    check_accelerator,
    check_broker,
    check_cameras,
    check_dla,
    run_checks,
)
from agent.fleet.local_broker import LocalBroker, free_port
from agent.fleet.signing import generate_keys
from tests.daemon.conftest import make_config
from tests.helpers import REPO_ROOT, drawn_frames, tiny_classifier_onnx

NO_BROKER = SimpleNamespace(host="127.0.0.1", port=1)  # for checks that never reach it
ORIN_62 = {"is_jetson": True, "module": "Jetson AGX Orin 64GB", "jetpack": "6.2", "l4t": "36.4.3", "tensorrt": "10.3.0.30", "cuda": "12.6.68", "cudnn": "9.3.0", "dla_cores": 2}


def by_name(checks: List[Check]) -> Dict[str, Check]:
    return {check.name: check for check in checks}


def test_doctor_json_on_a_healthy_setup_exits_0(broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    keys = generate_keys(tmp_path / "keys")
    for key, value in {"BROKER_HOST": broker.host, "BROKER_PORT": str(broker.port), "STATE_DIR": str(tmp_path / "state"),
                       "DEVICE_ID": "doc-1", "ARTIFACTS_PUBLIC_KEYS": str(keys.public_path)}.items():
        monkeypatch.setenv(f"EDGE_AGENT_{key}", value)
    (tmp_path / "state").mkdir()
    code = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 0 and report["ok"] is True, [c for c in report["checks"] if c["status"] == FAIL]
    assert checks["broker reachable"]["status"] == OK and checks["broker auth"]["status"] == OK
    assert checks["broker TLS"]["status"] == WARN and checks["broker TLS"]["fix"]  # plain TCP is a warning with a fix
    assert checks["artifact signatures"]["status"] == OK and checks["python"]["status"] == OK
    assert checks["agent"]["status"] == WARN  # none running here
    for check in report["checks"]:
        assert check["status"] in (OK, WARN, FAIL, SKIP)
        if check["status"] in (WARN, FAIL):
            assert check["fix"], check


def test_doctor_fails_without_signing_keys_and_with_the_broker_away(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT_BROKER_PORT", str(free_port()))
    monkeypatch.setenv("EDGE_AGENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EDGE_AGENT_DEVICE_ID", "doc-2")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "broker reachable      FAIL" in out and "artifact signatures   FAIL" in out
    assert "fixes:" in out and "edge-agent fleet keys generate" in out


def test_broker_tls_checks_the_certificate(tls_broker_readable: Dict[str, Any], tmp_path: Path) -> None:
    broker = tls_broker_readable["broker"]
    good = make_config(broker, tmp_path / "s1", "doc-3", broker_tls="true", broker_ca_file=str(tls_broker_readable["ca"]))
    checks = by_name(check_broker(good))
    assert checks["broker TLS"].status == OK and checks["broker auth"].status == OK
    from tests.conftest import make_test_pki

    stranger = make_test_pki(tmp_path / "other", ca_name="someone else")["ca"]
    bad = make_config(broker, tmp_path / "s2", "doc-3", broker_tls="true", broker_ca_file=str(stranger))
    checks = by_name(check_broker(bad))
    assert checks["broker TLS"].status == FAIL and "broker.ca_file" in checks["broker TLS"].fix


@pytest.fixture(scope="module")
def password_broker(mosquitto_available: None) -> Iterator[LocalBroker]:
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is not installed (Debian package mosquitto; tests/run.sh installs it)")
    folder = Path(tempfile.mkdtemp(prefix="edge-agent-passwd-"))
    try:
        folder.chmod(0o755)
        passwords = folder / "passwords"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "cam-9", "right"], check=True, capture_output=True)
        passwords.chmod(0o644)
        with LocalBroker(password_file=str(passwords)) as local:
            yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_broker_auth_refusal_is_a_failure_with_a_fix(password_broker: LocalBroker, tmp_path: Path) -> None:
    wrong = make_config(password_broker, tmp_path / "s", "cam-9", broker_username="cam-9", broker_password="wrong")
    auth = by_name(check_broker(wrong))["broker auth"]
    assert auth.status == FAIL and "refused" in auth.detail and "broker.username/password" in auth.fix
    right = make_config(password_broker, tmp_path / "s", "cam-9", broker_username="cam-9", broker_password="right")
    assert by_name(check_broker(right))["broker auth"].status == OK


@pytest.mark.parametrize(
    "changes, tensorrt, dla",
    [
        ({}, OK, OK),
        ({"tensorrt": "8.6.2"}, WARN, OK),
        ({"tensorrt": None}, FAIL, WARN),
        ({"module": "Jetson Orin Nano 8GB", "dla_cores": 0}, OK, SKIP),
        ({"tensorrt": "10.8.0", "jetpack": "7.1"}, WARN, WARN),
    ],
)
def test_tensorrt_matches_jetpack_and_dla_support(changes: Dict[str, Any], tensorrt: str, dla: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fingerprint = {**ORIN_62, **changes}
    import agent.daemon.doctor as doctor

    # the TensorRT Python module is absent on this machine; on the device it imports when the package is there
    from agent.lazy import NOT_INSTALLED, ImportProblem

    absent = ImportProblem("tensorrt", NOT_INSTALLED, "tensorrt is not installed", "")
    monkeypatch.setattr(doctor, "import_problem", lambda name: None if fingerprint.get("tensorrt") else absent)
    assert by_name(check_accelerator(fingerprint))["tensorrt"].status == tensorrt
    assert check_dla(fingerprint).status == dla


def test_cameras_of_the_deployment_are_opened(tmp_path: Path) -> None:
    import cv2

    from agent.store.atomic import atomic_write_json

    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(drawn_frames(3)):
        cv2.imwrite(str(folder / f"{index}.png"), frame)
    state = tmp_path / "state"
    atomic_write_json(state / "state.json", {"serving": {"deployment": {"id": "x", "cameras": [f"images://{folder}", str(tmp_path / "missing.avi")]}}})
    config = make_config(NO_BROKER, state, "doc-cam")
    checks = check_cameras(config)
    assert [c.status for c in checks] == [OK, FAIL]
    assert "missing.avi" in checks[1].detail and checks[1].fix


def test_engine_cache_counts_engines_built_for_another_device(tmp_path: Path) -> None:
    from agent.daemon.reported import device_fingerprint
    from agent.device.fingerprint import fingerprint
    from agent.engine.build import ensure_engine
    from agent.engine.cache import EngineCache
    from agent.engine.spec import BuildSpec, Precision
    from agent.store.hashing import sha256_file

    model = tiny_classifier_onnx(tmp_path / "tiny.onnx")
    state = tmp_path / "state"
    spec = BuildSpec(model_sha256=sha256_file(model), precision=Precision.FP32, target="cpu")
    ensure_engine(spec, EngineCache.for_state(state), fingerprint(), model=model)
    config = make_config(NO_BROKER, state, "doc-cache")
    here = device_fingerprint()
    checks = by_name(run_checks(config, fingerprint=here, include_broker=False, include_cameras=False))
    assert checks["engine cache"].status == OK and "1 engines" in checks["engine cache"].detail
    upgraded = {**here, "onnxruntime": "0.0.1"}  # as after an upgrade: the cached engine no longer fits
    checks = by_name(run_checks(config, fingerprint=upgraded, include_broker=False, include_cameras=False))
    assert checks["engine cache"].status == WARN and "1 incompatible" in checks["engine cache"].detail


def test_unit_settings_are_read_from_the_shipped_unit() -> None:
    from agent.daemon.doctor import _unit_settings

    settings = _unit_settings((REPO_ROOT / "systemd" / "edge-agent.service").read_text())
    assert settings["Type"] == "notify" and settings["WatchdogSec"] == "60" and settings["Restart"] == "on-failure"
