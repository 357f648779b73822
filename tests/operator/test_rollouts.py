"""Staged rollouts against a real mosquitto: simulated devices speaking the agent's protocol (tests/operator/
simfleet.py), the real runner, and the real CLI for the killed-and-resumed operator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from agent.config import BrokerConfig
from agent.fleet.local_broker import LocalBroker
from agent.operator.rollout import RolloutBusy, parse_criteria, parse_waves
from agent.operator.rollout_runner import RolloutRunner
from tests.helpers import REPO_ROOT, wait_until
from tests.operator.conftest import GROUP, NEW, OLD, all_pass, bad_on
from tests.operator.simfleet import SimFleet, Verdict


def runner_for(broker_config: BrokerConfig, lines: List[str]) -> RolloutRunner:
    return RolloutRunner(broker_config, "edge", GROUP, tick_s=0.1, say=lines.append).open(settle_s=0.5)


def retained(broker: LocalBroker, topics: List[str], wait_s: float = 0.8) -> Dict[str, bytes]:
    from tests.helpers import Collector

    collector = Collector(broker.host, broker.port, topics)
    time.sleep(wait_s)
    collector.close()
    out: Dict[str, bytes] = {}
    while not collector.messages.empty():
        msg = collector.messages.get()
        out[msg.topic] = bytes(msg.payload)
    return out


def test_a_good_rollout_completes_wave_by_wave(broker: LocalBroker, broker_config: BrokerConfig, make_fleet: Any) -> None:
    fleet: SimFleet = make_fleet(12, all_pass)
    lines: List[str] = []
    with runner_for(broker_config, lines) as runner:
        state = runner.start(NEW, waves=parse_waves("1,25%,100%"), criteria=parse_criteria([]), bake_s=0.3)
        state = runner.run(state, timeout_s=60)
    assert state.status == "completed", lines
    assert [len(w.devices) for w in state.waves] == [1, 2, 9]
    for device in fleet.devices:
        assert device.serving is not None and device.serving.id == NEW.id and device.previous is not None and device.previous.id == OLD.id
    # wave by wave: no device of a wave got the new deployment before the previous wave was done and baked
    by_id = fleet.by_id()
    for earlier, later in zip(state.waves, state.waves[1:]):
        assert earlier.completed_at is not None
        first_served = min(by_id[d].served_at[NEW.digest()] for d in later.devices)
        assert first_served >= earlier.completed_at + 0.3
    # the group now desires NEW and no device keeps a per-device desired state that would shadow the next deploy
    seen = retained(broker, ["edge/+/desired", f"edge/group/{GROUP}/desired"])
    assert json.loads(seen.pop(f"edge/group/{GROUP}/desired"))["deployment"]["id"] == NEW.id
    assert len(seen) == 12 and all(json.loads(p)["deployment"] is None for p in seen.values())
    assert any("completed" in line for line in lines)


def test_a_bad_rollout_aborts_on_the_gate_and_rolls_back(broker: LocalBroker, broker_config: BrokerConfig, make_fleet: Any) -> None:
    fleet: SimFleet = make_fleet(40, bad_on(0.3))
    lines: List[str] = []
    with runner_for(broker_config, lines) as runner:
        state = runner.start(NEW, waves=parse_waves("1,10%,50%,100%"), criteria=parse_criteria([]), rollout_id="ro-bad")
        state = runner.run(state, timeout_s=60)
    assert state.status == "aborted", lines
    assert state.abort is not None and state.abort.metric == "gate_failures" and "accuracy gate" in state.abort.detail
    reached = set(state.devices_so_far())
    assert len(reached) <= 4, "at most the first two waves got the bad deployment"
    for device in fleet.devices:
        got_new = NEW.digest() in device.received
        assert got_new == (device.id in reached)
        wait_until(lambda d=device: d.serving is not None and d.serving.id == OLD.id, 10, f"{device.id} serving {OLD.id} again")
    # the per-device desired states say "nothing" again (the group's, OLD, is what they follow)
    seen = retained(broker, ["edge/+/desired"])
    assert sorted(t.split("/")[1] for t in seen) == sorted(reached) and all(json.loads(p)["deployment"] is None for p in seen.values())
    assert any("ABORT" in line and "gate_failures>10%" in line for line in lines)


def test_an_abort_on_devices_gone_offline_and_their_convergence(broker: LocalBroker, broker_config: BrokerConfig, make_fleet: Any) -> None:
    crashing: List[str] = []
    holder: Dict[str, SimFleet] = {}

    def verdict(device: str, chosen: Any) -> Verdict:
        if chosen.id == NEW.id and device in crashing:  # the new deployment takes these devices down
            threading.Timer(0.3, holder["fleet"].by_id()[device].stop, kwargs={"clean": False}).start()
        return all_pass(device, chosen)

    fleet: SimFleet = make_fleet(10, verdict)
    holder["fleet"] = fleet
    lines: List[str] = []
    with runner_for(broker_config, lines) as runner:
        state = runner.start(NEW, waves=parse_waves("2,100%"), criteria=parse_criteria(["offline>=1"]), bake_s=1.0, rollout_id="ro-off")
        crashing.extend(state.waves[0].devices[:1])
        state = runner.run(state, timeout_s=60)
    assert state.status == "aborted" and state.abort is not None and state.abort.metric == "offline", lines
    assert crashing[0] in state.abort.detail
    down = fleet.by_id()[crashing[0]]
    assert down.serving is not None and down.serving.id == NEW.id  # it served NEW, then went away
    crashing.clear()
    down.start()  # back: its own desired state was restored (cleared), so the group's OLD wins
    wait_until(lambda: down.serving is not None and down.serving.id == OLD.id, 15, "the returning device converging to OLD")
    assert all(d.serving is not None and d.serving.id == OLD.id for d in fleet.devices)


def cli(env: Dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "fleet", "rollout", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_killed_operator_resumes_and_a_second_rollout_is_refused(broker: LocalBroker, broker_config: BrokerConfig, make_fleet: Any, tmp_path: Path) -> None:
    fleet: SimFleet = make_fleet(8, all_pass)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update({"EDGE_AGENT_BROKER_HOST": broker.host, "EDGE_AGENT_BROKER_PORT": str(broker.port), "EDGE_AGENT_DEVICE_ID": "operator",
                "EDGE_AGENT_STATE_DIR": str(tmp_path / "op"), "PYTHONPATH": str(REPO_ROOT)})
    spec = tmp_path / "deployment.json"
    spec.write_text(json.dumps({"deployment": NEW.to_dict()}))
    log = open(tmp_path / "rollout.log", "w")  # noqa: SIM115 - the child writes to it until it is killed
    first = subprocess.Popen([sys.executable, "-m", "agent", "fleet", "rollout", "start", "--deployment", str(spec), "--group", GROUP,
                              "--waves", "1,50%,100%", "--bake", "8s", "--id", "ro-first"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: sum(1 for d in fleet.devices if d.serving is not None and d.serving.id == NEW.id) >= 1, 30, "the canary serving NEW")
        time.sleep(1.0)  # in the bake now
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    # a second rollout on the group is refused, naming the first (whose runner is gone)
    refused = cli(env, "start", "--deployment", str(spec), "--group", GROUP, "--id", "ro-second", "--json")
    assert refused.returncode == 2, refused.stderr
    answer = json.loads(refused.stdout)
    assert answer["rollout"] == "ro-first" and "runner is gone" in answer["error"]
    status = cli(env, "status", "--group", GROUP, "--json")
    assert json.loads(status.stdout)[0]["status"] == "running" and json.loads(status.stdout)[0]["reached"] == 1
    watch = subprocess.run([sys.executable, "-m", "agent", "fleet", "watch", "--duration", "1.2", "--interval", "1"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert "rollout ro-first [lobby] effnet-v2: running, wave 1/3" in watch.stdout, watch.stdout + watch.stderr
    # resume: this process drives it to the end
    resumed = subprocess.Popen([sys.executable, "-m", "agent", "fleet", "rollout", "resume", "--group", GROUP, "--json"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # while it runs, a rollout started in this process is refused too (the runner is alive)
        with RolloutRunner(broker_config, "edge", GROUP, say=lambda _t: None).open(settle_s=0.5) as other:
            wait_until(lambda: other.runner_alive(), 10, "the resumed runner announcing itself")
            with pytest.raises(RolloutBusy) as busy:
                other.start(NEW, waves=parse_waves("100%"), criteria=parse_criteria([]))
            assert busy.value.rollout_id == "ro-first"
            other.send_control("resume")  # harmless: it is running
        out, err = resumed.communicate(timeout=120)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode == 0, err
    result = json.loads(out)
    assert result["status"] == "completed" and result["id"] == "ro-first" and result["reached"] == 8
    assert all(d.serving is not None and d.serving.id == NEW.id for d in fleet.devices)
    assert all(d.served.count(NEW.id) == 1 for d in fleet.devices)  # nothing applied twice


def test_pause_and_resume_from_another_operator(broker: LocalBroker, broker_config: BrokerConfig, make_fleet: Any) -> None:
    fleet: SimFleet = make_fleet(6, all_pass)
    lines: List[str] = []
    with runner_for(broker_config, lines) as runner:
        state = runner.start(NEW, waves=parse_waves("1,100%"), criteria=parse_criteria([]), bake_s=1.5, rollout_id="ro-pause")
        done: Dict[str, Any] = {}
        driver = threading.Thread(target=lambda: done.setdefault("state", runner.run(state, timeout_s=60)))
        driver.start()
        with RolloutRunner(broker_config, "edge", GROUP, say=lambda _t: None).open(settle_s=0.3) as other:
            wait_until(lambda: other.runner_alive().get("rollout") == "ro-pause", 10, "the runner")
            other.send_control("pause")
            wait_until(lambda: (other.docs.state() or state).status == "paused", 10, "the rollout paused")
            time.sleep(2.5)  # longer than the bake: a paused rollout sends nothing
            assert sum(1 for d in fleet.devices if NEW.digest() in d.received) == 1
            other.send_control("resume")
        driver.join(60)
    assert done["state"].status == "completed", lines
    assert any("paused by" in line for line in lines) and any("resumed by" in line for line in lines)


def test_a_device_away_during_the_whole_rollout_gets_what_it_should_when_back(broker: LocalBroker, broker_config: BrokerConfig, make_fleet: Any) -> None:
    fleet: SimFleet = make_fleet(5, all_pass)
    away = fleet.devices[2]
    away.stop(clean=False)
    lines: List[str] = []
    with runner_for(broker_config, lines) as runner:
        assert away.id in runner.fleet.members(GROUP)  # its last will still names its groups
        state = runner.start(NEW, waves=parse_waves("2,100%"), criteria=parse_criteria([]), rollout_id="ro-away")
        state = runner.run(state, timeout_s=60)
    assert state.status == "completed" and state.outcomes[away.id] == "absent", lines
    assert away.serving is not None and away.serving.id == OLD.id
    away.start()  # back after the rollout: its own desired says none, the group's says NEW
    wait_until(lambda: away.serving is not None and away.serving.id == NEW.id, 15, "the returning device converging to NEW")


def test_an_fps_drop_after_the_bake_aborts(broker: LocalBroker, broker_config: BrokerConfig, make_fleet: Any) -> None:
    def verdict(device: str, chosen: Any) -> Verdict:  # the new engine passes its gate but runs at half the speed
        return Verdict(gate={"passed": True}, fps=15.0 if chosen.id == NEW.id else 30.0, temp_c=50.0)

    fleet: SimFleet = make_fleet(6, verdict)
    lines: List[str] = []
    with runner_for(broker_config, lines) as runner:
        state = runner.start(NEW, waves=parse_waves("2,100%"), criteria=parse_criteria(["gate_failures>0", "fps_drop>20%"]), bake_s=0.5,
                             rollout_id="ro-fps")
        state = runner.run(state, timeout_s=60)
    assert state.status == "aborted" and state.abort is not None and state.abort.metric == "fps_drop", lines
    assert "mean fps 15.0 against 30.0" in state.abort.detail
    assert len(state.devices_so_far()) == 2
    wait_until(lambda: all(d.serving is not None and d.serving.id == OLD.id for d in fleet.devices), 10, "all back on OLD")
