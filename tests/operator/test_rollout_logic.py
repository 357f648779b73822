"""The rollout's plain logic: waves, outcomes, criteria, the state machine, payload limits (no broker)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import pytest

from agent.fleet.limits import block_size_for, fit_json, join, parts_header, split
from agent.operator.rollout import (
    GATE_FAILED,
    PULL_FAILED,
    SERVING,
    RolloutError,
    View,
    classify,
    control,
    decode_state,
    encode_state,
    new_state,
    parse_criteria,
    parse_criterion,
    parse_duration,
    parse_waves,
    plan_waves,
    step,
)

DIGEST = "0123456789abcdef"


def test_waves_are_cumulative_spread_and_cover_the_group() -> None:
    devices = [f"cam-{i:03d}" for i in range(200)]
    waves = plan_waves(devices, parse_waves("1,5%,25%,100%"), salt="ro-1")
    assert [len(w) for w in waves] == [1, 9, 40, 150]
    assert sorted(d for w in waves for d in w) == devices
    assert waves[0] != ["cam-000"] or waves[1][0] != "cam-001"  # a stable shuffle, not alphabetical
    assert plan_waves(devices, parse_waves("1,5%,25%,100%"), salt="ro-1") == waves
    canary = plan_waves(devices, parse_waves("10%,50%"), canary=["cam-007", "cam-008"], salt="x")
    assert canary[0] == ["cam-007", "cam-008"] and [len(w) for w in canary] == [2, 18, 80, 100]
    assert [len(w) for w in plan_waves(devices[:3], parse_waves("1,5%,25%,100%"))] == [1, 1, 1]
    with pytest.raises(RolloutError, match="not in the group"):
        plan_waves(devices, [(1, False)], canary=["nope"])
    with pytest.raises(RolloutError, match="no devices"):
        plan_waves([], [(1, False)])
    for bad in ("0", "150%", "x", "1.5", ""):
        with pytest.raises(RolloutError):
            parse_waves(bad)


def test_durations_and_criteria() -> None:
    assert parse_duration("10m") == 600 and parse_duration("90") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(RolloutError):
        parse_duration("soon")
    assert parse_criterion("gate_failures>10%").percent and parse_criterion("gate_failures>=2").value == 2
    assert parse_criterion("fps_drop>20%").text == "fps_drop>20%"
    for bad, why in (("fps_drop>20", "percentage"), ("temp_rise>5%", "degrees"), ("nonsense>1", "unknown metric"), ("gate_failures", "METRIC>VALUE")):
        with pytest.raises(RolloutError, match=why):
            parse_criterion(bad)
    assert [c.text for c in parse_criteria([])] == ["gate_failures>10%", "build_failures>10%", "pull_failures>25%", "offline>25%"]


def status(serving: Optional[str] = None, *, blocked: Optional[List[Dict[str, Any]]] = None, online: bool = True, error: Any = None) -> Dict[str, Any]:
    return {"online": online, "serving": {"digest": serving} if serving else None, "blocked": blocked or [], "last_error": error}


def test_classify_reads_the_reported_state() -> None:
    assert classify({}, DIGEST) == "pending"
    assert classify(status(DIGEST), DIGEST) == SERVING
    assert classify(status("old", blocked=[{"digest": DIGEST, "step": "validate"}]), DIGEST) == GATE_FAILED
    assert classify(status("old", error={"digest": DIGEST, "step": "fetch"}), DIGEST) == PULL_FAILED
    assert classify(status("old", online=False), DIGEST) == "offline"
    assert classify("garbage", DIGEST) == "pending"


def telemetry(fps: float, temp: float) -> Dict[str, Any]:
    return {"pipeline": {"fps": fps, "frames": 1000, "drops": 0}, "jetson": {"tegrastats": {"temps_c": {"tj": temp}}}}


def make(devices: List[str], criteria: List[str], bake_s: float = 0.0) -> Any:
    waves = plan_waves(devices, parse_waves("1,50%,100%"), salt="t")
    return new_state(rollout_id="ro-t", group="g", deployment={"id": "new", "model": "0" * 64}, digest=DIGEST, waves=waves,
                     criteria=parse_criteria(criteria), bake_s=bake_s, wave_timeout_s=100.0, pins={}, owner="test", now=0.0)


def test_state_machine_good_rollout_and_its_round_trip() -> None:
    devices = [f"d{i}" for i in range(10)]
    state = make(devices, [], bake_s=5.0)
    view = View(statuses={d: status("old") for d in devices}, telemetry={d: telemetry(30, 50) for d in devices})
    sent: List[str] = []
    now = 0.0
    for _ in range(60):
        actions = step(state, view, now)
        for action in actions:
            if action.kind == "send":
                sent += action.devices
                for d in action.devices:
                    view.statuses[d] = status(DIGEST)
        state = decode_state(encode_state(state))  # what a resumed runner reads
        now += 1.0
        if state.status == "completed":
            break
    assert state.status == "completed" and sorted(sent) == devices
    assert actions[-1].kind == "complete" and sorted(actions[-1].devices) == devices
    assert all(w.completed_at is not None and w.baseline is not None and w.baseline.fps == 30 for w in state.waves)


def test_gate_failures_abort_and_the_rollback_plan() -> None:
    devices = [f"d{i}" for i in range(10)]
    state = make(devices, ["gate_failures>=1"])
    view = View(statuses={d: status("old") for d in devices})
    first = step(state, view, 0.0)
    canary = first[0].devices[0]
    view.statuses[canary] = status(DIGEST)  # the canary passes; no bake: the next wave goes at once
    second = step(state, view, 1.0)
    assert second[0].kind == "send"
    bad, good = second[0].devices[0], second[0].devices[1]
    view.statuses[bad] = status("old", blocked=[{"digest": DIGEST, "step": "validate"}])
    for d in second[0].devices[1:]:
        view.statuses[d] = status(DIGEST)
    actions = step(state, view, 3.0)
    assert state.status == "aborting" and state.abort is not None and state.abort.metric == "gate_failures"
    assert "1 of 5 devices" in state.abort.detail and bad in state.abort.detail
    rollback = {a.kind: set(a.devices) for a in actions}
    assert bad in rollback["restore"] and canary in rollback["rollback"] and good in rollback["rollback"]
    for d in rollback["rollback"]:
        view.statuses[d] = status("old")
    final = step(state, view, 4.0)
    assert {a.kind for a in final} == {"restore"} and state.status == "aborted"
    assert set(state.rollback) == set(state.devices_so_far()) and len(state.devices_so_far()) == 5


def test_telemetry_criteria_after_the_bake_and_operator_controls() -> None:
    devices = [f"d{i}" for i in range(4)]
    state = make(devices, ["fps_drop>20%", "temp_rise>5"], bake_s=10.0)
    view = View(statuses={d: status("old") for d in devices}, telemetry={d: telemetry(30, 50) for d in devices})
    canary = step(state, view, 0.0)[0].devices[0]
    view.statuses[canary] = status(DIGEST)
    view.telemetry[canary] = telemetry(20, 51)
    step(state, view, 1.0)
    assert state.phase == "bake" and state.status == "running"
    assert control(state, "pause", 2.0) and step(state, view, 20.0) == [] and state.status == "paused"
    assert control(state, "resume", 21.0)
    step(state, view, 21.0)
    assert state.status == "aborting" and state.abort is not None and state.abort.metric == "fps_drop"
    assert "20.0 against 30.0" in state.abort.detail
    other = make(devices, [])
    step(other, view, 0.0)
    assert control(other, "abort", 1.0) and other.abort is not None and other.abort.by == "operator"


def test_offline_devices_at_start_are_not_waited_for() -> None:
    devices = [f"d{i}" for i in range(2)]
    state = make(devices, ["offline>=1"])
    view = View(statuses={devices[0]: status("old"), devices[1]: status("old", online=False)})
    first = step(state, view, 0.0)[0].devices[0]
    view.statuses[first] = status(DIGEST) if view.online(first) else view.statuses[first]
    for t in range(1, 6):
        step(state, view, float(t))
    assert state.status in ("completed",), state.history


def test_fit_json_trims_with_a_note_and_split_joins() -> None:
    doc = {"schema": 1, "kind": "result", "device": "d", "detections": [{"label": "x" * 50, "box": [1, 2, 3, 4]}] * 400, "frame": 3}
    payload = json.dumps(doc).encode()
    fitted = fit_json(payload, 4096)
    assert fitted is not None and len(fitted) <= 4096
    back = json.loads(fitted)
    assert back["device"] == "d" and back["frame"] == 3 and 0 < len(back["detections"]) < 400
    assert "detections" in back["trimmed"]["fields"][0] and "max_payload" in back["trimmed"]["note"]
    assert fit_json(b"\xff\xd8 jpeg", 4) is None
    big = json.dumps({"kind": "rollout", "waves": [[f"cam-{i:05d}" for i in range(20000)]]}).encode()
    pieces = split("edge/fleet/rollout/g/state", big, 131072)
    assert len(pieces) > 2 and all(len(p) + len(t) + 64 <= 131072 for t, p in pieces)
    header = parts_header(pieces[-1][1])
    assert header is not None and pieces[-1][0] == "edge/fleet/rollout/g/state"
    parts = {int(t.rsplit("/", 1)[1]): p for t, p in pieces[:-1]}
    assert join(header, parts) == big
    assert block_size_for(131072, 256 * 1024) == 127 * 1024 and block_size_for(0, 4096) == 4096
