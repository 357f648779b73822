"""Fault injection on the whole agent: the broker killed and restarted during a transfer, a deployment and a
command; the agent SIGKILLed at each step of the reconcile loop; the disk full while an artifact or an engine
is written; the build child crashing or hanging; the clock jumping.

After each fault: the previous engine still serves (or the agent says it is degraded), nothing stored is
corrupted, and the work completes once the fault is gone. Everything is real: mosquitto, `edge-agent run`
processes, the onnxruntime backend, a tmpfs that really fills up, the build child really killed or stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pytest

from agent.config import BrokerConfig
from agent.fleet.local_broker import LocalBroker
from tests.hardening.harness import (
    AgentProcess,
    OperatorSide,
    SigningKeys,
    Watch,
    agent_env,
    cpu_deployment,
    serving_id,
    start_daemon,
)
from tests.helpers import tiny_classifier_onnx, wait_until

STEPS = ("fetch", "check_table", "build", "validate", "serve")


# ------------------------------------------------------------------------------------------ fixtures
def dense_model(path: Path, megabytes: float, seed: int = 0) -> Path:
    """A real ONNX classifier whose weights weigh `megabytes`: input [1, K] -> MatMul [K, 4] -> logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = max(1, int(megabytes * 1024 * 1024 / 16))
    weights = np.random.default_rng(seed).normal(0, 0.01, (k, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"], name="fc")],
        "dense",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edge-agent-hardening")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def persistent_broker(mosquitto_available: None, tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of the test's own that keeps retained messages and sessions across a kill (autosave 1 s)."""
    folder = tmp_path / "mosquitto-db"
    folder.mkdir()
    os.chmod(folder, 0o777)  # mosquitto started as root writes as the mosquitto user
    with LocalBroker(persistence_dir=str(folder)) as broker:
        yield broker


def plain(broker: LocalBroker) -> BrokerConfig:
    return BrokerConfig(host=broker.host, port=broker.port, reconnect_min_s=1, reconnect_max_s=1)


@pytest.fixture()
def operator_for(tmp_path: Path, signing_keys: SigningKeys) -> Iterator[Any]:
    made: List[OperatorSide] = []

    def make(broker: LocalBroker, **kwargs: Any) -> OperatorSide:
        side = OperatorSide(plain(broker), tmp_path / f"fleet-{len(made)}", signing_key=signing_keys.private_key, **kwargs)
        made.append(side)
        return side

    yield make
    for side in made:
        side.close()


@pytest.fixture()
def watch_for() -> Iterator[Any]:
    made: List[Watch] = []

    def make(broker: LocalBroker) -> Watch:
        # a persistent session: replies published while this watcher reconnects wait for it in the broker,
        # once mosquitto's autosave (every second) has written the session down
        watch = Watch(broker.port, clean=False, client_id=f"watch-{broker.port}-{len(made)}")
        made.append(watch)
        time.sleep(1.1)
        return watch

    yield make
    for watch in made:
        watch.close()


def device_env(broker: LocalBroker, state: Path, device: str, keys: SigningKeys, **extra: str) -> Dict[str, str]:
    return agent_env(plain(broker), state, device, artifacts_public_keys=keys.public_path, **extra)


def assert_store_intact(state_dir: Path) -> None:
    """Nothing stored is corrupted: every artifact matches its id, state.json is JSON, engines verify."""
    from agent.store.artifacts import ArtifactStore

    problems = ArtifactStore(state_dir / "artifacts").verify()
    assert not problems, f"artifact store problems: {problems}"
    state = json.loads((state_dir / "state.json").read_text())
    assert isinstance(state, dict)
    assert not [n for n in os.listdir(state_dir) if n.startswith("state.json.corrupt")]


def partial_blocks(state_dir: Path) -> int:
    """Blocks the transfer in progress has logged (agent/fleet/transfer.py: 16-byte header, 4 bytes a block)."""
    partial = state_dir / "artifacts" / ".partial"
    sizes = [p.stat().st_size for p in partial.glob("*.log")] if partial.is_dir() else []
    return max([(size - 16) // 4 for size in sizes], default=0)


# ------------------------------------------------------------------------------------------ the broker dies
@pytest.mark.slow
def test_broker_killed_during_a_transfer(persistent_broker: LocalBroker, operator_for: Any, watch_for: Any,
                                         signing_keys: SigningKeys, tmp_path: Path) -> None:
    fleet = operator_for(persistent_broker, rate_limit_bps=1.5e6)  # ~2 s for the 3 MB model: time to kill mid-way
    watch = watch_for(persistent_broker)
    model = fleet.publish(dense_model(tmp_path / "dense.onnx", 3.0), "model", chunk=64 * 1024)
    state = tmp_path / "state"
    agent = start_daemon(device_env(persistent_broker, state, "fault-xfer", signing_keys))
    try:
        fleet.deploy("fault-xfer", cpu_deployment("xfer-1", model))
        wait_until(lambda: partial_blocks(state) >= 12, 20, "the transfer to get going")
        persistent_broker.kill()
        got_before = partial_blocks(state)
        time.sleep(1.5)
        persistent_broker.start()
        watch.wait_serving("fault-xfer", "xfer-1", timeout=40)
        assert 0 < got_before < model.block_count
        stats = agent.steps.puller.last_stats
        assert stats.rejected_blocks == 0
        assert stats.received_bytes <= model.size, "blocks on disk before the broker died were fetched again"
        assert_store_intact(state)
    finally:
        agent.stop()


@pytest.mark.slow
def test_broker_killed_during_a_deployment_and_a_command(persistent_broker: LocalBroker, operator_for: Any, watch_for: Any,
                                                         signing_keys: SigningKeys, tmp_path: Path) -> None:
    fleet = operator_for(persistent_broker)
    watch = watch_for(persistent_broker)
    model = fleet.publish(tiny_classifier_onnx(tmp_path / "tiny.onnx"), "model")
    state = tmp_path / "state"
    # each build pauses 2 s (agent/daemon/failpoints.py): the broker dies while the agent is inside it
    agent = start_daemon(device_env(persistent_broker, state, "fault-deploy", signing_keys, failpoints="build=pause:2"))
    try:
        fleet.deploy("fault-deploy", cpu_deployment("deploy-1", model))
        watch.wait_status("fault-deploy", lambda s: (s.get("applying") or {}).get("step") == "build", timeout=20)
        persistent_broker.kill()
        time.sleep(1.0)
        persistent_broker.start()
        watch.wait_serving("fault-deploy", "deploy-1", timeout=30)

        fleet.operator.command("fault-deploy", "rebuild", {"cold": True}, wait=False, command_id="rebuild-during-outage")
        watch.wait_reply("fault-deploy", "rebuild-during-outage", "IN_PROGRESS", timeout=15)
        persistent_broker.kill()
        time.sleep(1.0)
        persistent_broker.start()
        reply = watch.wait_reply("fault-deploy", "rebuild-during-outage", "SUCCEEDED", timeout=30)
        assert reply["device"] == "fault-deploy"
        assert serving_id(watch.status("fault-deploy")) == "deploy-1"
        assert_store_intact(state)
    finally:
        agent.stop()


# ------------------------------------------------------------------------------------------ the agent dies
@pytest.mark.slow
def test_agent_sigkilled_at_each_step_recovers(broker: LocalBroker, operator_for: Any, signing_keys: SigningKeys, tmp_path: Path) -> None:
    """One agent per step, side by side: each is SIGKILLed while inside its step, then started again."""
    fleet = operator_for(broker)
    watch = Watch(broker.port)
    model = fleet.publish(tiny_classifier_onnx(tmp_path / "tiny.onnx"), "model")
    agents: Dict[str, AgentProcess] = {}
    try:
        for step in STEPS:
            device = f"kill-{step.replace('_', '-')}"
            env = device_env(broker, tmp_path / device, device, signing_keys, failpoints=f"{step}=pause:60")
            agents[step] = AgentProcess(env, tmp_path / f"{device}-1.log")
            fleet.deploy(device, cpu_deployment(f"{device}-dep", model))
        for step, agent in agents.items():
            agent.wait_log(f"failure point {step}: pause", timeout=60)
            agent.kill9()
        for step in STEPS:
            device = f"kill-{step.replace('_', '-')}"
            agents[step].close()
            agents[step] = AgentProcess(device_env(broker, tmp_path / device, device, signing_keys), tmp_path / f"{device}-2.log")
        for step in STEPS:
            device = f"kill-{step.replace('_', '-')}"
            status = watch.wait_serving(device, f"{device}-dep", timeout=60)
            assert status["online"] is True, step
            assert_store_intact(tmp_path / device)
    finally:
        for agent in agents.values():
            agent.close()
        watch.close()


def test_killed_while_applying_a_new_deployment_the_previous_one_serves(
    broker: LocalBroker, operator_for: Any, signing_keys: SigningKeys, tmp_path: Path
) -> None:
    fleet = operator_for(broker)
    watch = Watch(broker.port)
    first = fleet.publish(tiny_classifier_onnx(tmp_path / "a.onnx", seed=1), "model")
    second = fleet.publish(tiny_classifier_onnx(tmp_path / "b.onnx", seed=2), "model")
    device, state = "kill-previous", tmp_path / "state"
    agent = AgentProcess(device_env(broker, state, device, signing_keys), tmp_path / "1.log")
    try:
        fleet.deploy(device, cpu_deployment("prev-a", first))
        watch.wait_serving(device, "prev-a")
        assert agent.terminate() == 0
        agent.close()
        agent = AgentProcess(device_env(broker, state, device, signing_keys, failpoints="build=pause:60"), tmp_path / "2.log")
        fleet.deploy(device, cpu_deployment("prev-b", second))
        agent.wait_log("failure point build: pause")
        agent.kill9()
        agent.close()
        # back up with the build step failing for good: the previous engine serves, the status says why
        agent = AgentProcess(device_env(broker, state, device, signing_keys, failpoints="build=fail"), tmp_path / "3.log")
        status = watch.wait_status(device, lambda s: (s.get("last_error") or {}).get("deployment_id") == "prev-b", timeout=40)
        assert serving_id(status) == "prev-a" and status["state"] == "serving"
        assert status["last_error"]["step"] == "build"
        assert_store_intact(state)
    finally:
        agent.close()
        watch.close()


# ------------------------------------------------------------------------------------------ the disk fills up
@pytest.fixture()
def small_disk() -> Iterator[Path]:
    """A real 6 MB tmpfs (needs root with CAP_SYS_ADMIN, as on this CI machine); grown later by remount."""
    mount = shutil.which("mount")
    folder = Path(tempfile.mkdtemp(prefix="edge-agent-small-disk-"))
    if mount is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) for a small tmpfs")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=6m,mode=0755", "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        folder.rmdir()
        pytest.skip(f"needs root allowed to mount a tmpfs (CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def grow(folder: Path, size: str = "64m") -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["artifact", "engine"])
def test_disk_full_while_writing(small_disk: Path, broker: LocalBroker, operator_for: Any, signing_keys: SigningKeys,
                                 tmp_path: Path, what: str) -> None:
    """artifact: a 7 MB model cannot be stored on the 6 MB disk. engine: the 3.2 MB model is stored, its 3.2 MB
    engine does not fit beside it. Either way the first deployment serves on, nothing stored is damaged, and
    the second deployment completes once the disk is grown, without the operator."""
    fleet = operator_for(broker)
    watch = Watch(broker.port)
    device = f"full-{what}"
    first = fleet.publish(tiny_classifier_onnx(tmp_path / "tiny.onnx"), "model")
    big = fleet.publish(dense_model(tmp_path / "big.onnx", 7.0 if what == "artifact" else 3.2, seed=3), "model", chunk=256 * 1024)
    state = small_disk / "state"
    agent = start_daemon(device_env(broker, state, device, signing_keys))
    try:
        fleet.deploy(device, cpu_deployment("small", first))
        watch.wait_serving(device, "small")
        fleet.deploy(device, cpu_deployment("big", big))
        status = watch.wait_status(device, lambda s: (s.get("last_error") or {}).get("deployment_id") == "big", timeout=40)
        error = status["last_error"]
        assert error["step"] == ("fetch" if what == "artifact" else "build"), error
        assert serving_id(status) == "small", "the previous engine must serve on"
        assert_store_intact(state)
        # the reason says the disk is full (the build child cannot even write its result file), and the failure
        # is retryable: the deployment completes by itself once there is room
        assert "disk" in error["reason"].lower() or "space" in error["reason"].lower(), error
        grow(small_disk)
        watch.wait_status(device, lambda s: serving_id(s) == "big", timeout=40)
        assert_store_intact(state)
    finally:
        agent.stop()
        watch.close()


# ------------------------------------------------------------------------------------------ the build child fails
class ChildSaboteur:
    """Watches this process's children for the engine build worker and sends it `sig` the moment it exists:
    SIGKILL is a backend crash (or the OOM killer), SIGSTOP a build that hangs."""

    def __init__(self, sig: int) -> None:
        self.sig = sig
        self.hit: Optional[int] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set() and self.hit is None:
            for child in me.children(recursive=True):
                try:
                    if "agent.engine.worker" in " ".join(child.cmdline()):
                        child.send_signal(self.sig)
                        self.hit = child.pid
                        return
                except psutil.Error:
                    continue
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_build_child_crash_or_hang(broker: LocalBroker, operator_for: Any, signing_keys: SigningKeys, tmp_path: Path, fault: str) -> None:
    fleet = operator_for(broker)
    watch = Watch(broker.port)
    device = f"child-{fault}"
    first = fleet.publish(tiny_classifier_onnx(tmp_path / "a.onnx", seed=1), "model")
    second = fleet.publish(tiny_classifier_onnx(tmp_path / "b.onnx", seed=2), "model")
    agent = start_daemon(device_env(broker, tmp_path / "state", device, signing_keys, engine_build_timeout_s="2"))
    saboteur: Optional[ChildSaboteur] = None
    try:
        fleet.deploy(device, cpu_deployment("child-a", first))
        watch.wait_serving(device, "child-a")
        saboteur = ChildSaboteur(signal.SIGKILL if fault == "crash" else signal.SIGSTOP)
        fleet.deploy(device, cpu_deployment("child-b", second))
        status = watch.wait_status(device, lambda s: (s.get("last_error") or {}).get("deployment_id") == "child-b", timeout=30)
        assert saboteur.hit is not None, "the build child was never seen"
        assert status["last_error"]["step"] == "build"
        assert serving_id(status) == "child-a" and status["state"] == "serving", "the previous engine must serve on"
        if fault == "hang":
            assert "build_timeout_s" in status["last_error"]["reason"], status["last_error"]
        assert_store_intact(tmp_path / "state")
        # the fault is gone: the operator's rebuild completes the deployment
        fleet.operator.command(device, "rebuild", {"cold": True}, wait=False, command_id=f"rebuild-after-{fault}")
        watch.wait_reply(device, f"rebuild-after-{fault}", "SUCCEEDED", timeout=30)
        watch.wait_serving(device, "child-b")
    finally:
        if saboteur is not None:
            saboteur.stop()
        agent.stop()
        watch.close()


# ------------------------------------------------------------------------------------------ the clock jumps
def wall_clock_comparisons(source: str) -> List[int]:
    """Lines comparing time.time() (directly, or a local assigned from it) with something: a timeout or a
    deadline measured on the wall clock, which NTP moves (a Jetson without an RTC battery boots in the past
    and jumps years forward when NTP syncs)."""
    import ast

    def is_wall_clock(node: ast.AST) -> bool:
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "time"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "time")

    lines: List[int] = []
    tree = ast.parse(source)
    for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        wall_names = {t.id for n in ast.walk(function) if isinstance(n, ast.Assign) and is_wall_clock(n.value)
                      for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(function):
            if isinstance(node, ast.Compare):
                for part in [node.left, *node.comparators]:
                    if any(is_wall_clock(sub) or (isinstance(sub, ast.Name) and sub.id in wall_names) for sub in ast.walk(part)):
                        lines.append(node.lineno)
                        break
    return sorted(set(lines))


WALL_CLOCK_KNOWN: Dict[str, str] = {  # file -> why a wall-clock comparison there is right
    "agent/operator/exporter.py": "a retained message's age comes from the device's own `ts` (Unix time, another "
    "machine's clock); staleness compares it with the operator's wall clock, and the metric is a Unix timestamp",
    "agent/operator/rollout_runner.py": "a rollout's `finished_at` is persisted in the broker and read by other "
    "operator processes: only the wall clock means the same to all of them",
}


def test_timeouts_use_the_monotonic_clock() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = {}
    for path in sorted((root / "agent").rglob("*.py")):
        relative = str(path.relative_to(root))
        lines = wall_clock_comparisons(path.read_text(encoding="utf-8"))
        if lines and relative not in WALL_CLOCK_KNOWN:
            offenders[relative] = lines
    assert not offenders, f"timeouts or deadlines on the wall clock (use time.monotonic()): {offenders}"


class JumpingClock:
    """Stands in for the `time` module of one package module: the wall clock is shifted, monotonic is not."""

    def __init__(self) -> None:
        self.shift = 0.0

    def time(self) -> float:
        return _real_time() + self.shift

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds)


_real_time = time.time


@pytest.mark.parametrize("jump_s", [2 * 86400.0, -86400.0], ids=["forward-2-days", "back-1-day"])
def test_job_deadlines_survive_a_clock_jump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jump_s: float) -> None:
    from agent.daemon import jobs as jobs_module
    from agent.daemon.jobs import JobRunner, Pending
    from agent.fleet.commands import encode_command
    from agent.fleet.topics import Topics
    from agent.store.state import StateStore

    clock = JumpingClock()
    monkeypatch.setattr(jobs_module, "time", clock)
    replies: List[Dict[str, Any]] = []
    canceled = threading.Event()

    def cancel() -> bool:
        canceled.set()
        return True

    def pending(_job: Any) -> Pending:
        return Pending(cancel=cancel)

    runner = JobRunner(device_id="clock", topics=Topics("edge", "clock"), store=StateStore(tmp_path),
                       publish=lambda _t, payload, _p: replies.append(json.loads(payload)), handlers={"rebuild": pending})
    runner.start()
    try:
        timeout_s = 3600.0 if jump_s > 0 else 0.5
        runner.submit(encode_command("jump-1", "rebuild", {}, timeout_s=timeout_s))
        wait_until(lambda: any(r["state"] == "IN_PROGRESS" for r in replies), 5, "the job to start")
        clock.shift = jump_s
        time.sleep(1.6)  # the dispatch thread looks at deadlines every 0.5 s
        states = [r["state"] for r in replies if r.get("job_id") == "jump-1"]
        if jump_s > 0:
            assert "TIMED_OUT" not in states and not canceled.is_set(), f"a clock jump timed the job out: {states}"
        else:
            assert "TIMED_OUT" in states, f"a 0.5 s job still open 1.6 s later after the clock went back: {states}"
    finally:
        runner.stop()


# ------------------------------------------------------------------------------------------ the camera misbehaves
class MjpegCamera:
    """A network camera: MJPEG over HTTP (what many IP cameras serve), whose behaviour the test switches:
    `good` frames at 20 fps, `stall` (connection open, nothing sent), `corrupt` (parts that are not JPEG),
    `end` (connections closed at once)."""

    def __init__(self) -> None:
        import socket

        self.mode = "good"
        self.connections = 0
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/stream.mjpg"
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _jpeg(index: int) -> bytes:
        import cv2

        from tests.helpers import drawn_frames

        frame = drawn_frames(1 + index % 8)[-1]
        return bytes(cv2.imencode(".jpg", frame)[1].tobytes())

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Any) -> None:
        try:
            conn.recv(65536)
            if self.mode == "end":
                return
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            index = 0
            while not self._stop.is_set() and self.mode != "end":
                if self.mode == "stall":
                    time.sleep(0.05)
                    continue
                data = self._jpeg(index) if self.mode == "good" else np.random.default_rng(index).integers(0, 256, 800, dtype=np.uint8).tobytes()
                conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(data), data))
                index += 1
                time.sleep(0.05)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


@pytest.mark.slow
def test_camera_that_stalls_sends_garbage_or_ends(broker: LocalBroker, operator_for: Any, signing_keys: SigningKeys, tmp_path: Path) -> None:
    """The engine keeps serving through every camera fault, the agent stays up, and results resume each time the
    camera is back (the capture reopens it with backoff)."""
    fleet = operator_for(broker)
    watch = Watch(broker.port)
    watch.probe.subscribe("edge/+/results")
    camera = MjpegCamera()
    device = "camera-faults"
    agent = start_daemon(device_env(broker, tmp_path / "state", device, signing_keys))
    try:
        model = fleet.publish(tiny_classifier_onnx(tmp_path / "tiny.onnx"), "model")
        fleet.deploy(device, cpu_deployment("cam-1", model, cameras=(camera.url,), preprocess={"size": [8, 8]},
                                            camera_options={"read_timeout_s": 0.5, "open_timeout_s": 1.0}))
        watch.wait_serving(device, "cam-1")

        def results() -> int:
            return len(watch.documents(device, "results"))

        def flowing(what: str) -> None:
            before = results()
            wait_until(lambda: results() >= before + 5, 15, f"results to flow again after the camera {what}")

        flowing("started")
        for fault in ("stall", "corrupt", "end"):
            camera.mode = fault
            time.sleep(1.5)
            quiet_from = results()
            time.sleep(0.5)
            assert results() - quiet_from <= 1, f"results kept coming while the camera was {fault}"
            status = watch.status(device)
            assert status["state"] == "serving" and serving_id(status) == "cam-1", f"{fault}: {status.get('state')}"
            camera.mode = "good"
            flowing(f"{fault} ended")
        sources = (agent.serving.metrics() or {}).get("sources") or []
        assert sources and sources[0].get("disconnects", 0) >= 3, sources
        assert agent.reconciler.ready.is_set() and agent.jobs.alive
    finally:
        agent.stop()
        camera.close()
        watch.close()
