"""The shipped broker configuration (deploy/mosquitto) on a real mosquitto: who may connect, and who may read
and write what. Every assertion is on what the broker answered or delivered (CONNACK, SUBACK, PUBACK reason
codes; messages that did or did not arrive), with a positive control beside each refusal so that a test
cannot pass because nothing worked at all."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from typing import Any, List

import pytest

from agent.config import BrokerConfig
from agent.fleet.link import MqttLink
from tests.hardening.conftest import FleetCredentials, Probe, ShippedBroker

pytestmark = pytest.mark.usefixtures("secure_broker")

QUIET_S = 0.5  # how long "nothing arrived" is watched, after a positive control proved delivery works


def device(broker: ShippedBroker, name: str, probes: List[Probe], **kwargs: Any) -> Probe:
    creds = broker.credentials
    probe = Probe(broker.port, username=name, password=creds.passwords.get(name, "x"), ca=creds.ca, **kwargs).connect()
    probes.append(probe)
    return probe


def operator(broker: ShippedBroker, probes: List[Probe], **kwargs: Any) -> Probe:
    creds = broker.credentials
    probe = Probe(broker.operator_port, ca=creds.ca, cert=creds.cert("operator"), **kwargs).connect()
    probes.append(probe)
    return probe


def reason(code: Any) -> str:
    return str(code) if code is not None else "none"


# ------------------------------------------------------------------------------------------ connecting
def test_devices_and_operator_connect_with_their_credentials(secure_broker: ShippedBroker, probes: List[Probe]) -> None:
    assert device(secure_broker, "dev1", probes).accepted
    assert device(secure_broker, "dev2", probes, protocol="3.1.1").accepted
    assert operator(secure_broker, probes).accepted


def connect_all(probes: List[Probe], timeout: float = 3.0) -> None:
    """Connect side by side: a refused connection costs paho about a second before it reports."""
    with concurrent.futures.ThreadPoolExecutor(len(probes)) as pool:
        list(pool.map(lambda probe: probe.connect(timeout), probes))


def test_device_listener_refuses_bad_credentials(secure_broker: ShippedBroker, probes: List[Probe]) -> None:
    passwords = secure_broker.credentials.passwords
    cases = {
        "anonymous": (None, None),
        "wrong password": ("dev1", "wrong"),
        "no password": ("dev1", None),
        "unknown user": ("nobody", "x"),
        "operator by password": ("operator", "x"),
        "another device's password": ("dev2", passwords["dev1"]),
    }
    tried = {name: Probe(secure_broker.port, username=u, password=p, ca=secure_broker.credentials.ca) for name, (u, p) in cases.items()}
    probes += tried.values()
    connect_all(list(tried.values()))
    for name, probe in tried.items():
        assert probe.connack is not None and probe.connack.is_failure, f"{name}: connected"
        assert "not authorized" in str(probe.connack).lower() or "bad user" in str(probe.connack).lower(), f"{name}: {probe.connack}"


def test_plain_tcp_is_refused(secure_broker: ShippedBroker, probes: List[Probe]) -> None:
    """No plain listener exists; MQTT without TLS on either TLS port never gets a CONNACK."""
    plain = [
        Probe(port, username="dev1", password=secure_broker.credentials.passwords["dev1"], tls=False)
        for port in (secure_broker.port, secure_broker.operator_port)
    ]
    probes += plain
    connect_all(plain)
    for probe in plain:
        assert not probe.accepted and probe.connack is None
    assert secure_broker.running


def test_client_refuses_a_server_it_cannot_verify(secure_broker: ShippedBroker, probes: List[Probe]) -> None:
    """The other direction: a device configured with the wrong CA does not talk to the broker (an impostor)."""
    creds = secure_broker.credentials
    probe = Probe(secure_broker.port, username="dev1", password=creds.passwords["dev1"], ca=str(creds.foreign / "ca.crt")).connect()
    probes.append(probe)
    assert not probe.accepted
    assert "certificate verify failed" in probe.connect_error


def test_operator_listener_requires_a_certificate_of_the_fleet_ca(secure_broker: ShippedBroker, probes: List[Probe]) -> None:
    creds = secure_broker.credentials
    no_cert = Probe(secure_broker.operator_port, username="operator", password="x", ca=creds.ca)
    foreign = Probe(secure_broker.operator_port, ca=creds.ca, cert=(str(creds.foreign / "operator.crt"), str(creds.foreign / "operator.key")))
    probes += [no_cert, foreign]
    connect_all([no_cert, foreign])
    assert not no_cert.accepted
    assert not foreign.accepted


def test_device_certificate_on_the_operator_listener_gets_device_rights(
    secure_broker: ShippedBroker, probes: List[Probe]
) -> None:
    """use_identity_as_username: the CN is the username, so dev1's certificate is dev1, confined by the ACL."""
    creds = secure_broker.credentials
    dev1 = Probe(secure_broker.operator_port, ca=creds.ca, cert=creds.cert("dev1")).connect()
    probes.append(dev1)
    assert dev1.accepted
    refused = dev1.publish("edge/dev1/desired", b"{}")
    assert "not authorized" in reason(refused).lower()
    assert not dev1.publish("edge/dev1/status", b"{}").is_failure


# ------------------------------------------------------------------------------------------ reading
def test_device_cannot_read_another_devices_topics(secure_broker: ShippedBroker, probes: List[Probe]) -> None:
    dev1 = device(secure_broker, "dev1", probes)
    op = operator(secure_broker, probes)
    secret = uuid.uuid4().hex.encode()
    # retained desired state of dev2, then a live command, artifact block and desired state for it
    assert not op.publish("edge/dev2/desired", b"retained-" + secret, retain=True).is_failure
    for topic_filter in ("edge/dev2/desired", "edge/dev2/cmd", "edge/dev2/artifact-data", "edge/+/cmd", "edge/#", "#"):
        dev1.subscribe(topic_filter)  # mosquitto 2.0 grants these; what matters is what gets delivered
    dev1.subscribe("edge/dev1/cmd")
    for topic in ("edge/dev2/cmd", "edge/dev2/artifact-data", "edge/dev2/desired", "edge/dev2/status"):
        op.publish(topic, b"live-" + secret)
    op.publish("edge/dev1/cmd", b"control-" + secret)  # positive control: dev1's own command does arrive
    assert dev1.wait_for_message("edge/dev1/cmd")
    time.sleep(QUIET_S)
    leaked = [m.topic for m in dev1.messages if m.topic.startswith("edge/dev2/")]
    assert leaked == [], f"dev1 read dev2's topics: {leaked}"
    op.publish("edge/dev2/desired", b"", retain=True)  # clear


def test_device_reads_its_own_desired_state_and_artifacts(secure_broker: ShippedBroker, probes: List[Probe]) -> None:
    op = operator(secure_broker, probes)
    manifest_topic = f"edge/artifacts/{'ab' * 32}/manifest"
    assert not op.publish("edge/dev1/desired", b"mine", retain=True).is_failure
    assert not op.publish(manifest_topic, b"manifest", retain=True).is_failure
    assert not op.publish("edge/group/line-1/desired", b"group", retain=True).is_failure
    dev1 = device(secure_broker, "dev1", probes)
    for topic in ("edge/dev1/desired", manifest_topic, "edge/group/line-1/desired"):
        dev1.subscribe(topic)
        assert dev1.wait_for_message(topic), f"dev1 did not get the retained {topic}"
    for topic in ("edge/dev1/desired", manifest_topic, "edge/group/line-1/desired"):
        op.publish(topic, b"", retain=True)


def test_subscriptions_to_foreign_filters_are_granted_but_deliver_nothing(
    secure_broker: ShippedBroker, probes: List[Probe]
) -> None:
    """Documents mosquitto 2.0.x behaviour (the SUBACK does not refuse; delivery is checked per message), so
    that a broker upgrade that changes it is noticed: then the agent would see SUBACK 0x87."""
    dev1 = device(secure_broker, "dev1", probes)
    codes = dev1.subscribe("edge/dev2/cmd")
    assert len(codes) == 1
    assert codes[0].value in (0, 1, 0x87), codes


# ------------------------------------------------------------------------------------------ writing
FORBIDDEN_FOR_DEV1 = [
    ("edge/dev2/status", False),
    ("edge/dev2/telemetry", False),
    ("edge/dev2/reply", False),
    ("edge/dev2/artifact-req", False),
    ("edge/dev1/desired", True),  # its own desired state: the operator's to set
    ("edge/dev1/cmd", False),
    ("edge/dev2/cmd", False),
    ("edge/dev1/artifact-data", False),  # forged artifact blocks to itself
    ("edge/group/line-1/desired", True),
    ("edge/group/line-1/cmd", False),
    (f"edge/artifacts/{'cd' * 32}/manifest", True),
    ("edge/fleet/anything", False),
    ("other-prefix/dev1/status", False),
]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_device_cannot_write_outside_its_own_reports(
    secure_broker: ShippedBroker, probes: List[Probe], protocol: str
) -> None:
    op = operator(secure_broker, probes)
    op.subscribe("#")
    dev1 = device(secure_broker, "dev1", probes, protocol=protocol)
    marker = uuid.uuid4().hex.encode()
    for topic, retain in FORBIDDEN_FOR_DEV1:
        code = dev1.publish(topic, marker, retain=retain)
        if protocol == "5":
            assert "not authorized" in reason(code).lower(), f"{topic}: {reason(code)}"
    own = dev1.publish("edge/dev1/status", marker)  # positive control
    assert own is not None and not own.is_failure
    assert op.wait_for_message("edge/dev1/status")
    time.sleep(QUIET_S)
    arrived = sorted({m.topic for m in op.messages if bytes(m.payload) == marker})
    assert arrived == ["edge/dev1/status"], f"forbidden publishes got through: {arrived}"
    assert dev1.accepted and not dev1.disconnects, "mosquitto drops a refused publish without disconnecting"


def test_a_will_to_a_foreign_topic_is_dropped(secure_broker: ShippedBroker, probes: List[Probe]) -> None:
    op = operator(secure_broker, probes)
    op.subscribe("edge/+/status")
    forged = device(secure_broker, "dev2", probes, will=("edge/dev1/status", b"forged-offline"))
    honest = device(secure_broker, "dev1", probes, will=("edge/dev1/status", b"honest-offline"))
    forged.disconnect_with_will()
    honest.disconnect_with_will()
    assert op.wait_for_message("edge/dev1/status")
    time.sleep(QUIET_S)
    assert op.received("edge/dev1/status") == [b"honest-offline"]
    op.publish("edge/dev1/status", b"", retain=True)


def test_a_device_cannot_take_over_another_devices_session(secure_broker: ShippedBroker, probes: List[Probe]) -> None:
    """use_username_as_clientid: connecting with dev1's client id does not resume (or wipe) dev1's session,
    so dev1's queued commands reach dev1 and nobody else."""
    creds = secure_broker.credentials
    first = Probe(secure_broker.port, username="dev1", password=creds.passwords["dev1"], ca=creds.ca, client_id="dev1", clean=False).connect()
    assert first.accepted
    first.subscribe("edge/dev1/cmd")
    first.close()
    op = operator(secure_broker, probes)
    command = uuid.uuid4().hex.encode()
    op.publish("edge/dev1/cmd", command)
    thief = Probe(secure_broker.port, username="dev2", password=creds.passwords["dev2"], ca=creds.ca, client_id="dev1", clean=False).connect()
    probes.append(thief)
    assert thief.accepted
    time.sleep(QUIET_S)
    assert thief.messages == []
    back = Probe(secure_broker.port, username="dev1", password=creds.passwords["dev1"], ca=creds.ca, client_id="dev1", clean=False).connect()
    probes.append(back)
    assert back.wait_for_message("edge/dev1/cmd"), "dev1's queued command was lost"
    assert back.received("edge/dev1/cmd") == [command]
    back.close()
    Probe(secure_broker.port, username="dev1", password=creds.passwords["dev1"], ca=creds.ca, client_id="dev1", clean=True).connect().close()


# ------------------------------------------------------------------------------------------ the operator
def test_operator_runs_the_fleet_and_two_operator_connections_coexist(
    secure_broker: ShippedBroker, probes: List[Probe]
) -> None:
    serve_a = operator(secure_broker, probes, client_id="fleet-serve-a")
    serve_b = operator(secure_broker, probes, client_id="fleet-serve-b")
    deploy = operator(secure_broker, probes, client_id="fleet-deploy")
    # fleet serve replicas share the artifact requests ($share), a deploy runs beside them
    assert not serve_a.subscribe("$share/serve/edge/+/artifact-req")[0].is_failure
    assert not serve_b.subscribe("$share/serve/edge/+/artifact-req")[0].is_failure
    for topic, retain in (("edge/dev1/desired", True), ("edge/group/g/desired", True), (f"edge/artifacts/{'ef' * 32}/manifest", True), ("edge/dev1/cmd", False), ("edge/dev1/artifact-data", False)):
        code = deploy.publish(topic, b"", retain=retain)
        assert code is not None and not code.is_failure, f"operator refused on {topic}: {code}"
    dev1 = device(secure_broker, "dev1", probes)
    for n in range(6):
        dev1.publish("edge/dev1/artifact-req", str(n).encode())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(serve_a.messages) + len(serve_b.messages) < 6:
        time.sleep(0.05)
    assert len(serve_a.messages) + len(serve_b.messages) == 6, "each request reaches exactly one replica"
    assert serve_a.messages and serve_b.messages, "requests are spread over the replicas"
    assert not (serve_a.disconnects or serve_b.disconnects or deploy.disconnects), "operator connections kicked each other"


# ------------------------------------------------------------------------------------------ the agent's own link
def link_config(broker: ShippedBroker, username: str, password: str, ca: str = "") -> BrokerConfig:
    return BrokerConfig(
        host="127.0.0.1", port=broker.port, tls=True, ca_file=ca or broker.credentials.ca, username=username, password=password,
        reconnect_min_s=1, reconnect_max_s=2,
    )


def test_agent_link_connects_over_tls_with_its_password(secure_broker: ShippedBroker, probes: List[Probe]) -> None:
    creds: FleetCredentials = secure_broker.credentials
    op = operator(secure_broker, probes)
    op.subscribe("edge/dev2/status")
    link = MqttLink(link_config(secure_broker, "dev2", creds.passwords["dev2"]), "dev2")
    link.start()
    try:
        assert link.wait_connected(10), link.last_error
        assert link.publish("edge/dev2/status", b"online", qos=1)
        assert op.wait_for_message("edge/dev2/status")
    finally:
        link.stop()


@pytest.mark.parametrize("case", ["wrong-password", "wrong-ca"])
def test_agent_link_with_bad_credentials_reports_and_keeps_trying(secure_broker: ShippedBroker, case: str) -> None:
    creds = secure_broker.credentials
    if case == "wrong-password":
        config = link_config(secure_broker, "dev2", "not-the-password")
    else:
        config = link_config(secure_broker, "dev2", creds.passwords["dev2"], ca=str(creds.foreign / "ca.crt"))
    link = MqttLink(config, "dev2")
    link.start()
    try:
        deadline = time.monotonic() + 5
        while not link.last_error and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.last_error, "the link says nothing about why it is not connected"
        assert not link.connected.is_set()
        assert not link.publish("edge/dev2/events", b"queued")  # kept in the outbox, not lost
        assert len(link.outbox) == 1
    finally:
        link.stop()
