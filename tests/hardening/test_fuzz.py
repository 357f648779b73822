"""Fuzzing every decoder that meets bytes from outside: the network (message envelopes, desired state,
commands, replies, artifact manifests, block frames and requests, status and telemetry read by the operator),
files (calibration tables, the state file, the outbox) and tegrastats' output.

The contract under test: bad input raises the package's own AgentError subclass (or is absorbed, where the
decoder promises never to raise), never anything else; what was decoded round-trips; and state is not
corrupted (no block that fails its hash reaches the artifact file, a corrupt state file leaves a working store).

Budget: `FUZZ` below (200 examples a test, no shrinking, derandomized, no example database), so the suite is
deterministic in CI and stays well under a minute. The plain tests beside some fuzz tests are the exact
reproducers of bugs this suite found (deep JSON nesting, damaged state and outbox files, hostile status
documents); they were xfail until the owning packages were fixed and now guard against regressions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra (pip install -e .[test])")
from hypothesis import HealthCheck, Phase, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agent.errors import AgentError  # noqa: E402

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
DEEP_JSON = b"[" * 100_000  # nesting far past Python's recursion limit: json.loads raises RecursionError
HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)

# ------------------------------------------------------------------------------------------ strategies
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12
)


def as_payload(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8")


def near(valid: Dict[str, Any], keys: List[str]) -> st.SearchStrategy[Dict[str, Any]]:
    """`valid` with some keys dropped, retyped or added: what a buggy or hostile sender produces."""

    def mutate(draw: Any) -> Dict[str, Any]:
        out = dict(valid)
        for key in draw(st.lists(st.sampled_from([*keys, "extra", "schema", "kind", "ts"]), max_size=3)):
            action = draw(st.sampled_from(["drop", "value", "value"]))
            if action == "drop":
                out.pop(key, None)
            else:
                out[key] = draw(json_values)
        return out

    return st.composite(lambda draw: mutate(draw))()


def payloads(near_valid: st.SearchStrategy[Dict[str, Any]]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        json_values.map(as_payload),
        near_valid.map(as_payload),
        near_valid.map(as_payload).flatmap(lambda p: st.integers(0, max(0, len(p) - 1)).map(lambda n: p[:n])),  # truncated
    )


def only_agent_errors(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run `call`; return its result or the AgentError it raised. Anything else fails the test."""
    try:
        return call(*args, **kwargs)
    except AgentError as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        return exc


# ------------------------------------------------------------------------------------------ envelopes
@FUZZ
@given(payloads(near({"schema": 1, "kind": "status", "ts": 1.0}, ["schema", "kind"])), st.sampled_from([None, "status", "cmd"]))
def test_message_envelope(payload: bytes, kind: Any) -> None:
    from agent.fleet.messages import MessageError, decode

    result = only_agent_errors(decode, payload, kind)
    assert isinstance(result, (dict, MessageError))


def test_message_envelope_deep_nesting() -> None:
    from agent.fleet.messages import MessageError, decode

    with pytest.raises(MessageError):
        decode(DEEP_JSON)


# ------------------------------------------------------------------------------------------ desired state
VALID_DEPLOYMENT = {"id": "dep-1", "model": "a" * 64, "table": "b" * 64, "precision": "int8", "target": "gpu", "batch": 1}


@FUZZ
@given(
    st.one_of(
        payloads(near({"schema": 1, "kind": "desired", "ts": 1.0, "deployment": VALID_DEPLOYMENT}, ["deployment"])),
        near(VALID_DEPLOYMENT, [*list(VALID_DEPLOYMENT), "cameras", "camera_options", "preprocess", "postprocess", "accuracy", "telemetry_interval_s", "gpu_fallback"]).map(
            lambda d: as_payload({"schema": 1, "kind": "desired", "deployment": d})
        ),
    )
)
@example(b"")
@example(b'{"kind":"desired","deployment":null}')
def test_desired_state_decoder(payload: bytes) -> None:
    from agent.fleet.deployment import Deployment, DeploymentError, decode_desired, encode_desired

    result = only_agent_errors(decode_desired, payload)
    assert result is None or isinstance(result, (Deployment, DeploymentError))
    if isinstance(result, Deployment):
        assert result.artifact_ids()[0] == ("model", result.model)
        again = decode_desired(encode_desired(result))
        assert again == result and again.digest() == result.digest()


def test_desired_state_round_trips_through_the_state_file() -> None:
    """The daemon persists the desired deployment (to_dict) and decodes it again at boot
    (reconcile._persisted_desired): a deployment with defaults left out must survive that."""
    from agent.fleet.deployment import decode_desired, deployment_from_dict, encode_desired

    payload = json.dumps({"kind": "desired", "deployment": VALID_DEPLOYMENT}).encode()
    deployment = decode_desired(payload)
    assert deployment is not None
    assert decode_desired(encode_desired(deployment)) == deployment
    assert deployment_from_dict(deployment.to_dict()) == deployment


def test_desired_state_deep_nesting() -> None:
    from agent.fleet.deployment import DeploymentError, decode_desired

    with pytest.raises(DeploymentError):
        decode_desired(b'{"kind":"desired","deployment":' + DEEP_JSON + b"}")


# ------------------------------------------------------------------------------------------ commands and replies
def command_dicts() -> st.SearchStrategy[Dict[str, Any]]:
    from agent.fleet.commands import COMMANDS

    base = {"schema": 1, "kind": "cmd", "ts": 1.0, "id": "c-1", "type": "ping", "args": {}}
    typed = st.builds(
        lambda t, args, device, reply: {**base, "type": t, "args": args, "device": device, "reply_to": reply},
        st.sampled_from(sorted(COMMANDS)),
        st.dictionaries(st.sampled_from(["cold", "camera", "level", "logger", "job_id", "x"]), json_scalars, max_size=3),
        st.sampled_from([None, "dev1", "dev2", 7]),
        st.sampled_from([None, "", "edge/dev1/reply", "edge/+/reply", "other/x", 5]),
    )
    return st.one_of(typed, near(base, ["id", "type", "args", "timeout_s", "reply_to", "device"]))


@FUZZ
@given(payloads(command_dicts()), st.sampled_from(["device", "group:line-1"]))
def test_command_decoder(payload: bytes, source: str) -> None:
    from agent.fleet.commands import COMMAND_ID_PATTERN, COMMANDS, Command, CommandRejected, decode_command

    result = only_agent_errors(decode_command, payload, device_id="dev1", source=source, topic_prefix="edge")
    assert isinstance(result, (Command, CommandRejected)), type(result)
    if isinstance(result, Command):
        assert COMMAND_ID_PATTERN.match(result.id) and result.type in COMMANDS
        assert 0 < result.timeout_s <= 24 * 3600 and not math.isnan(result.timeout_s)
        assert not result.reply_to or result.reply_to.startswith("edge/")
        if source != "device":
            assert COMMANDS[result.type].from_group, "a device-only command was accepted from a group"


@FUZZ
@given(payloads(near({"schema": 1, "kind": "reply", "device": "dev1", "job_id": "c-1", "type": "ping", "state": "SUCCEEDED"}, ["state", "result", "ts", "detail"])))
def test_reply_decoder(payload: bytes) -> None:
    from agent.fleet.commands import Reply, decode_reply

    result = only_agent_errors(decode_reply, payload)
    assert isinstance(result, (Reply, AgentError))


# ------------------------------------------------------------------------------------------ artifacts
def manifest_dicts() -> st.SearchStrategy[Dict[str, Any]]:
    def build(size: int, chunk: int, name: str, kind: str) -> Dict[str, Any]:
        blocks = (size + chunk - 1) // chunk
        return {
            "schema": 1, "artifact_id": "a" * 64, "size": size, "kind": kind, "name": name, "chunk_size": chunk,
            "created": "2026-01-01T00:00:00Z", "block_sha256": ["b" * 64] * blocks, "key_id": "k", "signature": "",
        }

    valid = st.builds(
        build, st.integers(0, 20_000), st.sampled_from([1024, 4096]),
        st.sampled_from(["model.onnx", "../etc/passwd", "a/b", "a\\b", ".hidden", "ok-name", "x" * 200, "日本"]),
        st.sampled_from(["model", "calib", "validation", "Model", ""]),
    )
    return st.one_of(valid, valid.flatmap(lambda d: near(d, list(d))))


@FUZZ
@given(payloads(manifest_dicts()))
def test_manifest_decoder_and_checks(payload: bytes) -> None:
    from agent.fleet.artifact_protocol import (
        ArtifactError,
        ArtifactManifest,
        check_expectations,
        decode_manifest,
        encode_manifest,
        verify_manifest,
    )

    result = only_agent_errors(decode_manifest, payload)
    assert isinstance(result, (ArtifactManifest, ArtifactError))
    if isinstance(result, ArtifactManifest):
        assert decode_manifest(encode_manifest(result)) == result
        # the refusals: unsigned, or a name with a path separator, never get through
        verdict = only_agent_errors(verify_manifest, result, {}, False)
        assert isinstance(verdict, ArtifactError)
        checked = only_agent_errors(check_expectations, result, result.artifact_id, max_bytes=10_000)
        if "/" in result.name or "\\" in result.name or ".." in result.name:
            assert isinstance(checked, ArtifactError)


def test_manifest_deep_nesting() -> None:
    from agent.fleet.artifact_protocol import ManifestError, decode_manifest

    with pytest.raises(ManifestError):
        decode_manifest(DEEP_JSON)


def frames() -> st.SearchStrategy[bytes]:
    from agent.fleet.artifact_protocol import BLOCK_HEADER, BLOCK_MAGIC

    header = st.builds(
        lambda magic, version, flags, raw_id, index, offset, length, digest: BLOCK_HEADER.pack(magic, version, flags, 0, raw_id, index, offset, length, digest),
        st.sampled_from([BLOCK_MAGIC, b"EAB2", b"\0\0\0\0"]), st.sampled_from([1, 1, 2]), st.sampled_from([0, 0, 1, 255]),
        st.binary(min_size=32, max_size=32), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
        st.binary(min_size=32, max_size=32),
    )
    return st.one_of(st.binary(max_size=200), st.tuples(header, st.binary(max_size=64)).map(lambda t: t[0] + t[1]))


@FUZZ
@given(frames())
def test_block_frame_decoder(payload: bytes) -> None:
    from agent.fleet.artifact_protocol import Block, MalformedBlockError, decode_block

    result = only_agent_errors(decode_block, payload)
    assert isinstance(result, (Block, MalformedBlockError))


@FUZZ
@given(payloads(near({"schema": 1, "kind": "artifact-req", "artifact_id": "a" * 64, "chunk_size": 1024, "blocks": [0, 1]}, ["artifact_id", "chunk_size", "blocks"])))
def test_block_request_decoder(payload: bytes) -> None:
    from agent.fleet.artifact_protocol import BlockRequest, decode_request

    result = only_agent_errors(decode_request, payload)
    assert isinstance(result, (BlockRequest, AgentError))
    if isinstance(result, BlockRequest):
        assert 1 <= len(result.blocks) <= 64 and all(0 <= b < 65536 for b in result.blocks)


# ------------------------------------------------------------------------------------------ the transfer's block handling
ARTIFACT = bytes(range(256)) * 20  # 5120 bytes: five 1 KiB blocks
CHUNK = 1024


def transfer_fixture(root: Path) -> Any:
    """A real ArtifactPuller (its link never connects: requests go nowhere, frames are handed in directly)
    and one `_Transfer` run of the artifact above, with a real partial file in a real store."""
    from agent.config import ArtifactsConfig, BrokerConfig
    from agent.fleet.artifact_protocol import describe_file
    from agent.fleet.link import MqttLink
    from agent.fleet.topics import Topics
    from agent.fleet.transfer import ArtifactPuller, PartialFile, TransferStats, _Transfer
    from agent.store.artifacts import ArtifactStore

    source = root / "source.bin"
    source.write_bytes(ARTIFACT)
    manifest = describe_file(source, "calib", "table.cache", CHUNK)
    link = MqttLink(BrokerConfig(host="127.0.0.1", port=1), "fuzz")
    store = ArtifactStore(root / "store")
    puller = ArtifactPuller(link, Topics("edge", "dev1"), store, ArtifactsConfig(allow_unsigned=True), min_free_mb=0)
    partial = PartialFile(store, manifest)
    have = partial.open()
    run = _Transfer(puller, manifest, partial, have, TransferStats(), None)
    return manifest, partial, run


def block_frames() -> st.SearchStrategy[bytes]:
    """Good blocks, bad ones of every kind the transfer must reject, and noise, in any order."""
    from agent.fleet.artifact_protocol import encode_block, encode_block_error

    artifact_id = hashlib.sha256(ARTIFACT).hexdigest()

    def good(index: int) -> bytes:
        offset = index * CHUNK
        return encode_block(artifact_id, index, offset, ARTIFACT[offset : offset + CHUNK])

    def flipped(index: int, at: int) -> bytes:  # corrupted on the way: does not match its own digest
        frame = bytearray(good(index))
        frame[88 + at % CHUNK] ^= 0xFF
        return bytes(frame)

    def forged(index: int) -> bytes:  # consistent digest, wrong content: must fail the signed block list
        offset = index * CHUNK
        return encode_block(artifact_id, index, offset, b"\x00" * len(ARTIFACT[offset : offset + CHUNK]))

    def misplaced(index: int, offset: int) -> bytes:
        return encode_block(artifact_id, index, offset, ARTIFACT[:CHUNK])

    index = st.integers(0, 4)
    return st.one_of(
        index.map(good), index.map(good), index.map(good),
        st.tuples(index, st.integers(0, 10_000)).map(lambda t: flipped(*t)),
        index.map(forged),
        st.tuples(st.integers(0, 70_000), st.integers(0, 2**40)).map(lambda t: misplaced(*t)),
        HEX64.map(lambda other: encode_block(other, 0, 0, ARTIFACT[:CHUNK])),  # another artifact's answer
        st.binary(max_size=120),
        st.just(encode_block_error(artifact_id, 0, "artifact not held by this server")),
    )


@FUZZ
@given(st.lists(block_frames(), min_size=1, max_size=25))
def test_transfer_block_handling_never_corrupts_the_partial_file(sequence: List[bytes]) -> None:
    from agent.fleet.artifact_protocol import ArtifactError

    with tempfile.TemporaryDirectory() as folder:
        manifest, partial, run = transfer_fixture(Path(folder))
        try:
            for frame in sequence:
                run.on_frame(frame)  # paho's thread in real life: must never raise
                if run.done.is_set():
                    break
            assert run.failure is None or isinstance(run.failure, ArtifactError), repr(run.failure)
            data = partial.part_path.read_bytes()
            for index in sorted(partial.have):
                offset, length = manifest.block_range(index)
                assert hashlib.sha256(data[offset : offset + length]).hexdigest() == manifest.block_sha256[index], (
                    f"block {index} on disk does not match the signed manifest"
                )
            if run.complete and run.failure is None:
                assert partial.finish() == manifest.artifact_id
        finally:
            partial.close()


# ------------------------------------------------------------------------------------------ the artifact server
@FUZZ
@given(
    st.sampled_from(["edge/dev1/artifact-req", "edge/group/artifact-req", "edge/artifacts/x/artifact-req", "other/dev1/artifact-req", "edge"]),
    payloads(near({"schema": 1, "kind": "artifact-req", "artifact_id": hashlib.sha256(ARTIFACT).hexdigest(), "chunk_size": 1024, "blocks": [0, 4]}, ["artifact_id", "chunk_size", "blocks"])),
)
def test_artifact_server_survives_any_request(topic: str, payload: bytes) -> None:
    """A hostile device writes whatever it likes on its own artifact-req topic; `fleet serve` must shrug."""
    from agent.config import BrokerConfig
    from agent.fleet.link import MqttLink
    from agent.operator.artifact_server import ArtifactServer

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / hashlib.sha256(ARTIFACT).hexdigest()).write_bytes(ARTIFACT)
        server = ArtifactServer(MqttLink(BrokerConfig(host="127.0.0.1", port=1), "fuzz-serve"), "edge", Path(folder))
        try:
            before = server.stats.requests + server.stats.bad_requests
            server._serve(topic, payload)
            assert server.stats.requests + server.stats.bad_requests == before + 1
        finally:
            server.stop()


# ------------------------------------------------------------------------------------------ what the operator reads
@FUZZ
@given(st.dictionaries(st.sampled_from(["online", "state", "serving", "applying", "last_error", "version"]), json_values, max_size=6),
       st.dictionaries(st.sampled_from(["pipeline", "jetson", "system", "gpu", "compact"]), json_values, max_size=5))
@example({"serving": "x"}, {})
@example({}, {"jetson": [1]})
def test_operator_reads_any_status_a_device_publishes(status: Dict[str, Any], telemetry: Dict[str, Any]) -> None:
    from agent.operator.client import DeviceRow
    from agent.telemetry.document import from_compact

    row = DeviceRow("dev1", status=status, telemetry=only_agent_errors(from_compact, telemetry))
    json.dumps(row.to_dict(), default=str)


# ------------------------------------------------------------------------------------------ calibration tables
def table_bytes() -> st.SearchStrategy[bytes]:
    name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=1, max_size=20)  # type: ignore[arg-type]
    hexes = st.one_of(st.integers(0, 2**32 - 1).map(lambda v: f"{v:08x}"), st.text("0123456789abcdefABCDEFxg", min_size=0, max_size=10))
    entry = st.tuples(name, hexes).map(lambda t: f"{t[0]}: {t[1]}")
    header = st.sampled_from(["TRT-8601-EntropyCalibration2", "TRT-100300-MinMaxCalibration", "TRT-x-y", "TRT-1-", "", "{"])
    text_table = st.builds(
        lambda h, lines, nl, final: (nl.join(([h] if h else []) + lines) + (nl if final else "")).encode("utf-8", "surrogatepass"),
        header, st.lists(entry, max_size=8), st.sampled_from(["\n", "\r\n"]), st.booleans(),
    )
    ort_text = st.lists(st.tuples(name, st.floats(allow_nan=True)).map(lambda t: f"{t[0]} {t[1]}"), max_size=6).map(lambda ls: "\n".join(ls).encode())
    ort_json = st.dictionaries(st.text(max_size=10), json_values, max_size=4).map(as_payload)
    return st.one_of(text_table, ort_text, ort_json, st.binary(max_size=300))


@FUZZ
@given(table_bytes())
@example(b"ftrt\x00\x00")
@example(b"\xef\xbb\xbfTRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
@example(b'{"a": ' + DEEP_JSON[:5000] + b"}")
def test_calibration_table_parser(data: bytes) -> None:
    from agent.calib.table import CalibTable, CalibTableError, parse_table, write_table

    result = only_agent_errors(parse_table, data)
    assert isinstance(result, (CalibTable, CalibTableError)), type(result)
    if isinstance(result, CalibTable):
        for name in result.entries:
            result.scale(name)
        written = only_agent_errors(write_table, result)
        if isinstance(written, bytes):
            again = parse_table(written)
            assert again.entries.keys() == result.entries.keys()
            assert all(struct.pack(">f", again.entries[k]) == struct.pack(">f", v) or (math.isnan(v) and math.isnan(again.entries[k]))
                       for k, v in result.entries.items())


# ------------------------------------------------------------------------------------------ tegrastats
TEGRASTATS_SEEDS = [
    "RAM 2000/7000MB (lfb 10x4MB) SWAP 0/3500MB (cached 0MB) CPU [10%@1200,off,3%@1200] EMC_FREQ 1%@1600 GR3D_FREQ 5%@300 "
    "APE 150 CPU@40.5C GPU@39C VDD_IN 3000/3100 VDD_CPU_GPU_CV 500/520",
    "01-10-2026 10:00:00 RAM 9000/125772MB (lfb 3x4MB) CPU [1%@972,off] EMC_FREQ 0%@2133 NVENC0 off cpu@52.9C/60.1C VIN 9000mW/9100mW",
]


@FUZZ
@given(st.one_of(
    st.text(max_size=300),
    st.tuples(st.sampled_from(TEGRASTATS_SEEDS), st.integers(0, 300), st.text(max_size=20)).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]),
    st.lists(st.sampled_from(["RAM", "CPU", "[", "]", "%", "@", "off", "C", "mW", "/", "12", "-1", "GR3D_FREQ", "VDD_IN", "x", " ", "cpu@"]), max_size=40).map("".join),
))
def test_tegrastats_parser_never_raises(line: str) -> None:
    from agent.telemetry.tegrastats import parse_line

    sample = parse_line(line)  # documented: never raises
    json.dumps(sample.to_dict(), allow_nan=True)


# ------------------------------------------------------------------------------------------ files the agent reads back
@FUZZ
@given(st.one_of(st.binary(max_size=200), json_values.map(as_payload),
                 st.dictionaries(st.sampled_from(["recent_commands", "blocked", "open_jobs", "keep_artifacts", "serving", "desired", "version"]),
                                 json_values, max_size=4).map(as_payload)))
@example(b"\xff\xfe{")
@example(b'{"recent_commands": [1, "x", null]}')
def test_corrupt_state_file_leaves_a_working_store(data: bytes) -> None:
    from agent.store.state import StateStore

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "state.json").write_bytes(data)
        store = StateStore(Path(folder))
        snapshot = store.snapshot()
        snapshot.command_seen("c-1")
        with store.mutate() as state:
            state.remember_command("c-1", "ping", "SUCCEEDED")
        assert StateStore(Path(folder)).snapshot().command_seen("c-1") is not None
        assert any(name.startswith("state.json") for name in os.listdir(folder))


@FUZZ
@given(st.binary(max_size=300))
@example(b"0\xad")
def test_corrupt_outbox_file_is_skipped_line_by_line(data: bytes) -> None:
    from agent.fleet.link import Outbox

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "outbox.jsonl"
        path.write_bytes(data)
        outbox = Outbox(max_messages=10, path=path)
        assert len(outbox) <= 10
        outbox.save()
