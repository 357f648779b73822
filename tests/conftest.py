"""Fixtures every test package uses: a real mosquitto per session (plain and TLS), a tiny ONNX model, and an
isolated agent configuration; the markers `tensorrt` and `gpu`; and the rule that a test may skip only for
what this machine cannot have (ALLOWED_SKIP_REASONS)."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from agent.fleet.local_broker import LocalBroker, find_mosquitto
from tests.helpers import REAL_DATA_SKIP, tiny_classifier_onnx

# A skip must name what this machine cannot have: TensorRT, an NVIDIA GPU, a Jetson, root, a file of real data
# kept beside the repository, or (for tests that branch on the installed onnxruntime) the onnxruntime version the
# branch needs, written "onnxruntime >= 1.20" or "onnxruntime < 1.20". Anything else (a tool, a package or one of
# the project's own modules missing) fails the run: a suite that passes by skipping proves nothing. A missing
# third-party package that tests/run.sh installs counts as such a failure too (pytest.importorskip included).
ALLOWED_SKIP_REASONS = (
    re.compile(r"\bTensorRT\b"),
    re.compile(r"\bGPU\b"),
    re.compile(r"\bJetson\b"),
    re.compile(r"\broot\b"),
    re.compile("^" + re.escape(REAL_DATA_SKIP)),
    re.compile(r"\bonnxruntime [<>]=? ?\d"),
)
_unexplained_skips: List[str] = []


def skip_reason(report: Any) -> Optional[str]:
    """The reason of a skipped test or collector report (None when it did not skip, or is an xfail)."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason


def _check_skip(report: Any) -> None:
    reason = skip_reason(report)
    if reason is not None and not any(pattern.search(reason) for pattern in ALLOWED_SKIP_REASONS):
        _unexplained_skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _check_skip(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _check_skip(report)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _unexplained_skips:
        terminalreporter.section("skips for a reason outside ALLOWED_SKIP_REASONS (tests/conftest.py): the run fails")
        for line in _unexplained_skips:
            terminalreporter.line(line)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexplained_skips and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Tests marked `tensorrt` or `gpu` skip with the reason unless what they need is really here."""
    from agent.lazy import try_import

    have_trt = try_import("tensorrt") is not None
    have_cuda = try_import("pycuda") is not None and os.path.exists("/dev/nvidiactl")
    for item in items:
        if item.get_closest_marker("tensorrt") is not None and not have_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (JetPack); none on this machine"))
        if item.get_closest_marker("gpu") is not None and not have_cuda:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU with pycuda; none on this machine"))


@pytest.fixture(scope="session")
def mosquitto_available() -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto; tests/run.sh installs it)")


@pytest.fixture(scope="session")
def broker(mosquitto_available: None) -> Iterator[LocalBroker]:
    """A real mosquitto on a free loopback port, shared by the session. Tests use their own device ids."""
    with LocalBroker() as local:
        yield local


@pytest.fixture(scope="module")
def kit(broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An operator's FleetKit (tests/daemon/fleet_kit.py: keys, artifacts folder, artifact server) on the session's
    broker, one per test module (deployments, shared plans, plan recovery)."""
    # imported here, not at the top: numpy and the operator side load only for the modules that use a kit
    from tests.daemon.fleet_kit import FleetKit

    fleet = FleetKit(broker, tmp_path_factory.mktemp("fleet"))
    yield fleet
    fleet.close()


@pytest.fixture()
def fresh_broker(mosquitto_available: None) -> Iterator[LocalBroker]:
    """A broker of the test's own, for tests that stop, kill or restart it."""
    with LocalBroker() as local:
        yield local


def make_test_pki(folder: Path, names: tuple = ("server",), ca_name: str = "edge-agent test CA") -> Dict[str, Path]:
    """A CA and certificates signed by it (server cert for 127.0.0.1/localhost; others as client certs with CN=name)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name_obj = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name_obj)
        .issuer_name(ca_name_obj)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    out: Dict[str, Path] = {"ca": folder / "ca.crt"}
    out["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name_obj)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )
        if name == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        out[f"{name}.crt"] = folder / f"{name}.crt"
        out[f"{name}.key"] = folder / f"{name}.key"
        out[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}.key"].write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return out


@pytest.fixture(scope="session")
def tls_broker(mosquitto_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, object]]:
    """A mosquitto that speaks TLS only, with a CA made in the test. Yields {'broker', 'ca', ...pki paths}."""
    pki = make_test_pki(tmp_path_factory.mktemp("pki"))
    with LocalBroker(tls_cert=str(pki["server.crt"]), tls_key=str(pki["server.key"]), tls_ca=str(pki["ca"])) as local:
        yield {"broker": local, **pki}


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    return tiny_classifier_onnx(tmp_path / "tiny.onnx")


@pytest.fixture()
def agent_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate the agent from the host: its state under tmp_path, no /etc config, no EDGE_AGENT_* leaking in."""
    for name in list(os.environ):
        if name.startswith("EDGE_AGENT_"):
            monkeypatch.delenv(name, raising=False)
    state = tmp_path / "state"
    monkeypatch.setenv("EDGE_AGENT_STATE_DIR", str(state))
    monkeypatch.setenv("EDGE_AGENT_DEVICE_ID", "test-device")
    return state
