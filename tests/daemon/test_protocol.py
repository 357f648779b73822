"""The desired-state schema, command decoding and the job state machine: plain data, strict, fuzzed."""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.fleet.commands import (
    COMMANDS,
    CommandRejected,
    Job,
    JobState,
    JobTransitionError,
    RebuildArgs,
    SnapshotArgs,
    coerce_cli_args,
    decode_command,
    decode_reply,
    encode_command,
    reply_payload,
)
from agent.fleet.deployment import (
    Deployment,
    DeploymentError,
    decode_desired,
    deployment_from_dict,
    encode_desired,
    resolve_desired,
)
from agent.fleet.messages import MessageError

SHA_A = "a" * 64
SHA_B = "b" * 64


def good(**changes: Any) -> Dict[str, Any]:
    data: Dict[str, Any] = {"id": "effnet-v1", "model": SHA_A, "table": SHA_B, "precision": "int8", "target": "cpu"}
    data.update(changes)
    return data


def test_deployment_round_trips_through_the_retained_message() -> None:
    deployment = deployment_from_dict(
        good(cameras=["rtsp://cam/1"], preprocess="efficientnet_lite", postprocess="classification", accuracy={"top1_agreement": 0.9})
    )
    again = decode_desired(encode_desired(deployment))
    assert again == deployment
    assert again is not None and again.digest() == deployment.digest()
    assert [role for role, _ in deployment.artifact_ids()] == ["model", "table"]


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"model": "not-a-sha"}, "deployment.model"),
        ({"model": None}, "deployment.model"),
        ({"precision": "int4"}, "deployment.precision"),
        ({"target": "dla:x"}, "deployment.target"),
        ({"batch": 0}, "deployment.batch"),
        ({"batch": True}, "deployment.batch"),
        ({"table": None, "precision": "int8"}, "deployment.table"),
        ({"cameras": [""]}, "deployment.cameras[0]"),
        ({"accuracy": {"top1_agreement": 2}}, "deployment.accuracy.top1_agreement"),
        ({"accuracy": {"top1": 0.9}}, "deployment.accuracy"),
        ({"preprocess": {"resize": "zoom"}}, "deployment.preprocess.resize"),
        ({"postprocess": {"type": "nope"}}, "deployment.postprocess.type"),
        ({"telemetry_interval_s": 0}, "deployment.telemetry_interval_s"),
        ({"typo_key": 1}, "deployment.typo_key: unknown key"),
        ({"id": "has space"}, "deployment.id"),
    ],
)
def test_bad_deployments_name_the_key(changes: Dict[str, Any], key: str) -> None:
    with pytest.raises(DeploymentError) as exc:
        deployment_from_dict(good(**changes))
    assert key in str(exc.value)


def test_empty_or_null_desired_means_nothing_desired() -> None:
    assert decode_desired(b"") is None
    assert decode_desired(encode_desired(None)) is None
    with pytest.raises(DeploymentError, match="'deployment' is required"):
        decode_desired(b'{"schema": 1, "kind": "desired"}')
    with pytest.raises(DeploymentError, match="newer than this agent"):
        decode_desired(b'{"schema": 9, "kind": "desired", "deployment": null}')


def test_device_desired_state_wins_over_groups_and_group_order_decides() -> None:
    device = deployment_from_dict(good(id="own"))
    lobby = deployment_from_dict(good(id="lobby"))
    hall = deployment_from_dict(good(id="hall"))
    assert resolve_desired(device, {"lobby": lobby}, ["lobby"]).name == "device"  # type: ignore[union-attr]
    winner = resolve_desired(None, {"lobby": lobby, "hall": hall}, ["hall", "lobby"])
    assert winner is not None and winner.name == "group:hall" and winner.deployment.id == "hall"
    assert resolve_desired(None, {"lobby": None}, ["lobby"]) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_desired_decoding_never_raises_anything_but_deployment_error(payload: bytes) -> None:
    try:
        decode_desired(payload)
    except DeploymentError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*sorted(Deployment.__struct_fields__), "x"]), json_values, max_size=8))
def test_deployment_fields_of_any_json_type_give_clear_errors(data: Dict[str, Any]) -> None:
    payload = json.dumps({"schema": 1, "kind": "desired", "deployment": data}).encode()
    try:
        decode_desired(payload)
    except DeploymentError as exc:
        assert str(exc)


# commands ----------------------------------------------------------------------------------------------------
def test_command_decodes_with_defaults_and_typed_args() -> None:
    command = decode_command(encode_command("c-1", "rebuild", {"cold": True}), device_id="d1")
    assert (command.id, command.type, command.args, command.timeout_s) == ("c-1", "rebuild", RebuildArgs(cold=True), COMMANDS["rebuild"].timeout_s)
    assert decode_command(encode_command("c-2", "snapshot"), device_id="d1").args == SnapshotArgs(camera=0)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"\xff\xfe", "malformed command: payload is not UTF-8"),
        (b"[1, 2]", "malformed command: payload must be a JSON object"),
        (encode_command("c-1", "reboot"), "unknown command type 'reboot'"),
        (encode_command("c-1", "rebuild", {"cold": "yes"}), "bad arguments for 'rebuild'"),
        (encode_command("c-1", "set-log-level"), "args.level: required"),
        (encode_command("c-1", "set-log-level", {"level": "LOUD"}), "must be one of DEBUG"),
        (encode_command("c-1", "ping", {"x": 1}), "bad arguments for 'ping': args.x: unknown key"),
        (encode_command("c-1", "ping", device="other"), "unauthorised: the command is addressed to device 'other'"),
        (encode_command("c-1", "ping", reply_to="elsewhere/x"), "unauthorised: reply_to"),
        (encode_command("c-1", "ping", timeout_s=-1), "malformed command: timeout_s: expected float > 0.0, got -1"),
        (b'{"kind": "cmd", "type": "ping"}', "malformed command: id: required"),
    ],
)
def test_rejected_commands_name_the_problem(payload: bytes, reason: str) -> None:
    with pytest.raises(CommandRejected) as exc:
        decode_command(payload, device_id="d1", topic_prefix="edge")
    assert reason in exc.value.reason


def test_group_commands_that_change_serving_are_unauthorised() -> None:
    with pytest.raises(CommandRejected, match="unauthorised: 'rollback' is accepted on the device's own command topic only"):
        decode_command(encode_command("c-1", "rollback"), device_id="d1", source="group:lobby")
    assert decode_command(encode_command("c-2", "ping"), device_id="d1", source="group:lobby").source == "group:lobby"


def test_rejection_keeps_a_readable_id_for_the_reply() -> None:
    with pytest.raises(CommandRejected) as exc:
        decode_command(encode_command("c-9", "nope"), device_id="d1")
    assert exc.value.command_id == "c-9" and exc.value.command_type == "nope"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["id", "type", "args", "timeout_s", "reply_to", "device", "schema", "kind", "zz"]), json_values, max_size=7
    )
)
def test_command_decoding_only_ever_rejects(data: Dict[str, Any]) -> None:
    try:
        command = decode_command(json.dumps(data).encode(), device_id="d1", topic_prefix="edge")
    except CommandRejected as exc:
        assert exc.reason
    else:
        assert command.type in COMMANDS


def test_cli_arguments_are_coerced_by_the_schema() -> None:
    assert coerce_cli_args("rebuild", ["cold=true"]) == {"cold": True}
    assert coerce_cli_args("snapshot", ["camera=2"]) == {"camera": 2}
    assert coerce_cli_args("set-log-level", ["level=debug"]) == {"level": "debug"}
    with pytest.raises(MessageError, match=r"args\.nope: unknown key"):
        coerce_cli_args("ping", ["nope=1"])
    with pytest.raises(MessageError, match=r"args\.camera: expected int, got str 'front'"):
        coerce_cli_args("snapshot", ["camera=front"])


def test_job_state_machine_allows_only_the_jobs_transitions() -> None:
    job = Job(decode_command(encode_command("c-1", "ping"), device_id="d1"))
    job.advance(JobState.QUEUED)
    job.advance(JobState.IN_PROGRESS)
    job.advance(JobState.SUCCEEDED)
    with pytest.raises(JobTransitionError):
        job.advance(JobState.FAILED)
    fresh = Job(decode_command(encode_command("c-2", "ping"), device_id="d1"))
    with pytest.raises(JobTransitionError):
        fresh.advance(JobState.SUCCEEDED)
    fresh.advance(JobState.QUEUED)
    fresh.advance(JobState.CANCELED, "canceled by c-3")
    assert fresh.state == JobState.CANCELED and fresh.error == "canceled by c-3"


def test_reply_round_trip() -> None:
    reply = decode_reply(reply_payload("d1", "c-1", "ping", JobState.SUCCEEDED, result={"pong": True}))
    assert (reply.device, reply.job_id, reply.state, reply.result) == ("d1", "c-1", JobState.SUCCEEDED, {"pong": True})
