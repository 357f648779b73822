"""Fixtures of the hardening suite: the shipped broker configuration (deploy/mosquitto) on a real mosquitto,
certificates and passwords made by the shipped scripts, a probing MQTT client that records what the broker
answers, and a two-node RabbitMQ cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from agent.fleet.local_broker import LocalBroker, free_port
from tests.helpers import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
INSTALL_DIR = "/etc/mosquitto/edge-agent/"
DEVICES = ("dev1", "dev2")
OPERATOR = "operator"


# ------------------------------------------------------------------------------------------ PKI and passwords
@dataclass
class FleetCredentials:
    """What deploy/mosquitto/make-certs.sh and add-passwords.sh wrote, plus a CA nobody trusts."""

    folder: Path
    passwords: Dict[str, str]
    foreign: Path  # a second CA's folder: certificates the broker must refuse

    def cert(self, name: str) -> Tuple[str, str]:
        return str(self.folder / f"{name}.crt"), str(self.folder / f"{name}.key")

    @property
    def ca(self) -> str:
        return str(self.folder / "ca.crt")


def readable_by_mosquitto(folder: Path) -> None:
    """Started as root, mosquitto drops to the `mosquitto` user before it reads the password file and the ACL,
    as it would from /etc/mosquitto/edge-agent (README.md): group mosquitto, 0640, on a folder it can enter."""
    if os.geteuid() != 0:
        return
    try:
        import grp

        gid = grp.getgrnam("mosquitto").gr_gid
    except (ImportError, KeyError):
        return
    os.chmod(folder, 0o750)
    os.chown(folder, -1, gid)
    for path in folder.iterdir():
        os.chown(path, -1, gid)
        os.chmod(path, 0o640 if path.suffix in (".key", "") else 0o644)


@pytest.fixture(scope="session")
def fleet_credentials(mosquitto_available: None) -> Iterator[FleetCredentials]:
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.fail("needs openssl and mosquitto_passwd (Debian packages openssl, mosquitto; tests/run.sh installs them)")
    # not under pytest's tmp folder: that one is 0700 root, and mosquitto reads these files as its own user
    top = Path(tempfile.mkdtemp(prefix="edge-agent-pki-"))
    os.chmod(top, 0o755)
    folder, foreign = top / "fleet", top / "foreign"
    scripts = DEPLOY / "mosquitto"
    try:
        subprocess.run(["bash", str(scripts / "make-certs.sh"), str(folder), "localhost", *DEVICES], check=True, capture_output=True)
        subprocess.run(["bash", str(scripts / "add-passwords.sh"), str(folder), *DEVICES], check=True, capture_output=True)
        # an impostor with its own CA issues itself a "dev1" and an "operator" certificate
        subprocess.run(["bash", str(scripts / "make-certs.sh"), str(foreign), "localhost", "dev1"], check=True, capture_output=True)
        # the shipped ACL beside them: the checkout may sit where the `mosquitto` user cannot enter (mktemp -d, /root)
        shutil.copyfile(scripts / "acl", folder / "acl")
        readable_by_mosquitto(folder)
        passwords = {device: (folder / f"{device}.password").read_text().strip() for device in DEVICES}
        yield FleetCredentials(folder, passwords, foreign)
    finally:
        shutil.rmtree(top, ignore_errors=True)


# ------------------------------------------------------------------------------------------ the shipped broker
class ShippedBroker(LocalBroker):
    """deploy/mosquitto/mosquitto.conf as shipped, with its paths pointed at the test PKI, its two listeners on
    free loopback ports (`port` for devices, `operator_port` for operators) and logging to the log file."""

    def __init__(self, credentials: FleetCredentials, acl_file: Optional[Path] = None) -> None:
        super().__init__()
        self.operator_port = free_port()
        self.credentials = credentials
        self.acl_file = acl_file or credentials.folder / "acl"  # a copy of deploy/mosquitto/acl it can read

    def config_text(self) -> str:
        text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
        persistence = Path(self.log_path).parent / "persistence"
        persistence.mkdir(exist_ok=True)
        folder = f"{self.credentials.folder}/"
        text = text.replace(INSTALL_DIR + "acl", str(self.acl_file)).replace(INSTALL_DIR, folder)
        text = text.replace("listener 8883\n", f"listener {self.port} 127.0.0.1\n")
        text = text.replace("listener 8884\n", f"listener {self.operator_port} 127.0.0.1\n")
        text = text.replace("persistence_location /var/lib/mosquitto/", f"persistence_location {persistence}/")
        text = text.replace("log_dest syslog", "log_dest stdout")
        settings = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        missed = [line for line in settings if INSTALL_DIR in line or "8883" in line or "8884" in line]
        assert not missed, f"the rewrite of the shipped config missed {missed}"
        return text

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture(scope="session")
def secure_broker(fleet_credentials: FleetCredentials) -> Iterator[ShippedBroker]:
    """The shipped configuration, shared by the session (tests use their own topics or read-only checks)."""
    broker = ShippedBroker(fleet_credentials)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


# ------------------------------------------------------------------------------------------ a probing client
@dataclass
class Probe:
    """A plain paho client (VERSION2 callbacks) that records every answer of the broker, for asserting on
    what the broker does rather than on what a library makes of it."""

    port: int
    username: Optional[str] = None
    password: Optional[str] = None
    client_id: str = ""
    ca: Optional[str] = None
    cert: Optional[Tuple[str, str]] = None
    protocol: str = "5"
    clean: bool = True
    will: Optional[Tuple[str, bytes]] = None
    tls: bool = True
    connack: Any = None
    connect_error: str = ""
    messages: List[Any] = field(default_factory=list)
    disconnects: List[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._mqtt = mqtt
        self._v5 = self.protocol == "5"
        self._event = threading.Condition()
        self._subacks: Dict[int, List[Any]] = {}
        self._pubacks: Dict[int, Any] = {}
        self._filters: List[Tuple[str, int]] = []  # subscribed again after paho reconnects (a restarted broker)
        self.connects = 0
        kwargs: Dict[str, Any] = {
            "callback_api_version": CallbackAPIVersion.VERSION2,
            "client_id": self.client_id or f"probe-{self.username}-{time.monotonic_ns()}",
            "protocol": mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
        }
        if not self._v5:
            kwargs["clean_session"] = self.clean
        self.client = mqtt.Client(**kwargs)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)  # back at once after a broker restart
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        if self.tls:
            certfile, keyfile = self.cert if self.cert else (None, None)
            self.client.tls_set(ca_certs=self.ca, certfile=certfile, keyfile=keyfile)
        if self.will is not None:
            self.client.will_set(self.will[0], self.will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    # callbacks: record and notify ---------------------------------------------------------------------------
    def _notify(self) -> None:
        with self._event:
            self._event.notify_all()

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        self.connack = reason_code
        if not reason_code.is_failure:
            self.connects += 1
            if self.connects > 1 and self._filters:
                client.subscribe(list(self._filters))
        self._notify()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        self.disconnects.append(reason_code)
        self._notify()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self.messages.append(msg)
        self._notify()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reason_codes: List[Any], _p: Any) -> None:
        self._subacks[mid] = list(reason_codes)
        self._notify()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason_code: Any, _p: Any) -> None:
        self._pubacks[mid] = reason_code
        self._notify()

    def _wait(self, predicate: Any, timeout: float) -> bool:
        with self._event:
            return bool(self._event.wait_for(predicate, timeout))

    # actions ------------------------------------------------------------------------------------------------
    def connect(self, timeout: float = 5.0) -> Probe:
        """Connect and wait for the CONNACK (or a disconnect, or the timeout). Never raises: a TLS or socket
        failure is kept in `connect_error`, a refusal in `connack`. Does not reconnect."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 0 if self.clean else 3600
        try:
            if self._v5:
                self.client.connect("127.0.0.1", self.port, keepalive=30, clean_start=self.clean, properties=properties)
            else:
                self.client.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.connect_error = f"{type(exc).__name__}: {exc}"
            return self
        self.client.loop_start()
        self._wait(lambda: self.connack is not None or bool(self.disconnects), timeout)
        if not self.accepted:
            self.client.loop_stop()
        return self

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 5.0) -> List[Any]:
        """The SUBACK reason codes (empty if none came before the timeout or a disconnect)."""
        self._filters.append((topic_filter, qos))
        _rc, sent = self.client.subscribe(topic_filter, qos=qos)
        mid = int(sent or 0)
        self._wait(lambda: mid in self._subacks or bool(self.disconnects), timeout)
        return self._subacks.get(mid, [])

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 5.0) -> Any:
        """The PUBACK reason code (MQTT 5: 'Not authorized' when the ACL refused; 3.1.1: always success)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self._wait(lambda: info.mid in self._pubacks or bool(self.disconnects), timeout)
        return self._pubacks.get(info.mid)

    def received(self, topic: str) -> List[bytes]:
        return [bytes(m.payload) for m in list(self.messages) if m.topic == topic]

    def wait_for_message(self, topic: str, timeout: float = 5.0) -> bool:
        return self._wait(lambda: any(m.topic == topic for m in list(self.messages)), timeout)

    def disconnect_with_will(self) -> None:
        """MQTT 5 reason code 0x04: disconnect and have the broker publish the will, as if the link died."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.reasoncodes import ReasonCode

        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        self.client.loop_stop()

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


@pytest.fixture()
def probes() -> Iterator[List[Probe]]:
    """Probes a test makes are appended here and closed after it."""
    made: List[Probe] = []
    yield made
    for probe in made:
        probe.close()


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.hardening.harness import SigningKeys

    return SigningKeys(tmp_path_factory.mktemp("signing"))


# ------------------------------------------------------------------------------------------ RabbitMQ cluster
@dataclass
class RabbitCluster:
    base: Path
    ports: Tuple[int, int]
    info: Dict[str, str]
    devices: Tuple[str, ...]
    operator_password: str = "operator-test"
    device_password_prefix: str = "device-test-"

    def device_password(self, device: str) -> str:
        return self.device_password_prefix + device


RABBIT_BIN = Path(os.environ.get("RABBIT_BIN", "/usr/lib/rabbitmq/bin"))
RABBIT_DEVICES = ("rdev1", "rdev2", "rdev3")


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """Two RabbitMQ nodes clustered on this machine with the MQTT plugin (deploy/rabbitmq/start-cluster.sh)."""
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        pytest.fail("rabbitmq-server is not installed (tests/run.sh installs it: apt-get install --no-install-recommends rabbitmq-server)")
    base = tmp_path_factory.mktemp("rabbit")
    ports = (free_port(), free_port())
    script = DEPLOY / "rabbitmq" / "start-cluster.sh"
    env = dict(os.environ, EDGE_RABBIT_DEVICES=" ".join(RABBIT_DEVICES))
    started = subprocess.run(
        ["bash", str(script), "start", str(base), str(ports[0]), str(ports[1])], env=env, capture_output=True, text=True, timeout=300
    )
    try:
        if started.returncode != 0:
            pytest.fail(f"the RabbitMQ cluster did not start:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
        info = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
        yield RabbitCluster(base, ports, info, RABBIT_DEVICES)
    finally:
        subprocess.run(["bash", str(script), "stop", str(base)], capture_output=True, timeout=120)
