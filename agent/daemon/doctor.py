"""`edge-agent doctor`: one report of everything that blocks or degrades the agent, each line with a fix.

Every check returns a Check (ok | warn | fail | skip) and never raises: a doctor that crashes on the broken
machine it was called to diagnose is no doctor. `fail` means the agent cannot do its job (exit code 1);
`warn` means it runs, degraded or at risk; `skip` means the check does not apply here (and says why).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig
from agent.device.versions import JETPACK_STACK, major_minor, reported_dla_support
from agent.fleet.signing import load_public_keys
from agent.lazy import import_problem, probe
from agent.store.state import read_state

from .pipeline_steps import inspect_engine_cache, probe_camera
from .reported import STATUS_FILE, device_fingerprint, live_status

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
UNIT_NAME = "edge-agent.service"
UNIT_PATHS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))

@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> Dict[str, str]:
        return asdict(self)


def summarize(checks: List[Check]) -> Dict[str, int]:
    counts = {OK: 0, WARN: 0, FAIL: 0, SKIP: 0}
    for check in checks:
        counts[check.status] = counts.get(check.status, 0) + 1
    return counts


# software -----------------------------------------------------------------------------------------------------
def check_python() -> List[Check]:
    version = ".".join(str(v) for v in sys.version_info[:3])
    checks = []
    if (3, 8) <= sys.version_info[:2] <= (3, 12):
        checks.append(Check("python", OK, f"Python {version} ({sys.executable})"))
    elif sys.version_info[:2] > (3, 12):
        checks.append(Check("python", WARN, f"Python {version} is newer than the tested 3.8 to 3.12", "use JetPack's python3 (3.8 or 3.10)"))
    else:
        checks.append(Check("python", FAIL, f"Python {version} is older than 3.8", "install Python 3.8 or newer"))
    return checks


# Python packages: "not installed" and "installed but fails to import" (with the cause) are told apart by
# agent.lazy.probe, the same classification the runners' and the camera's lazy imports report.
REQUIRED_PACKAGES = ("numpy", "onnx", "msgspec", "paho.mqtt", "psutil", "cryptography")
OPTIONAL_PACKAGES = {
    "onnxruntime": ("the CPU backend and the accuracy gate's reference", "pip install 'edge-agent[cpu]' (onnxruntime)"),
    "cv2": ("cameras and snapshots", "JetPack: apt install python3-opencv (keep its GStreamer build); elsewhere pip install opencv-python-headless"),
}
JETSON_PACKAGES = {
    "tensorrt": "sudo apt install python3-libnvinfer (JetPack's TensorRT; never pip install tensorrt on a Jetson); a virtual environment needs --system-site-packages",
    "pycuda": "pip install 'edge-agent[jetson]' (builds pycuda against JetPack's CUDA: PATH=/usr/local/cuda/bin:$PATH)",
}


def check_packages(fingerprint: Optional[Dict[str, Any]] = None) -> List[Check]:
    is_jetson = bool((fingerprint or {}).get("is_jetson"))
    checks: List[Check] = []
    for module in (*REQUIRED_PACKAGES, *OPTIONAL_PACKAGES, *JETSON_PACKAGES):
        found, problem = probe(module)
        name = f"package {module}"
        if problem is not None and problem.installed:
            checks.append(Check(name, FAIL, problem.detail, problem.fix))
        elif problem is not None and module in REQUIRED_PACKAGES:
            checks.append(Check(name, FAIL, problem.detail, problem.fix if module != "paho.mqtt" else "pip install 'paho-mqtt>=2'"))
        elif problem is not None and module in OPTIONAL_PACKAGES:
            purpose, fix = OPTIONAL_PACKAGES[module]
            checks.append(Check(name, WARN, f"{problem.detail}: no {purpose}", fix))
        elif problem is not None:
            if is_jetson and module == "tensorrt":
                checks.append(Check(name, SKIP, f"{problem.detail}: the check 'tensorrt' below says what this costs"))
            elif is_jetson:
                checks.append(Check(name, WARN, f"{problem.detail}: no TensorRT engines", JETSON_PACKAGES[module]))
            else:
                checks.append(Check(name, SKIP, f"{problem.detail} (not a Jetson: engines build with onnxruntime)"))
        else:
            version = str(getattr(found, "__version__", "") or getattr(found, "VERSION_TEXT", "") or "")
            if module == "paho.mqtt" and version and int(version.split(".")[0]) < 2:
                checks.append(Check(name, FAIL, f"paho-mqtt {version} is older than 2.0", "pip install 'paho-mqtt>=2'"))
            else:
                checks.append(Check(name, OK, f"{module} {version or '(no version)'} ({getattr(found, '__file__', None) or '?'})"))
    return checks


def check_accelerator(fingerprint: Dict[str, Any]) -> List[Check]:
    checks: List[Check] = []
    trt = fingerprint.get("tensorrt")
    cuda = fingerprint.get("cuda")
    cudnn = fingerprint.get("cudnn")
    jetpack = fingerprint.get("jetpack")
    is_jetson = bool(fingerprint.get("is_jetson"))
    trt_problem = import_problem("tensorrt")
    have_trt_module = trt_problem is None
    if not is_jetson:
        detail = f"not a Jetson ({fingerprint.get('cpu_arch') or '?'}): TensorRT {trt or 'absent'}, CUDA {cuda or 'absent'}"
        if trt and not have_trt_module:
            checks.append(Check("tensorrt", WARN, detail + "; the tensorrt Python module does not import", "install TensorRT's Python bindings"))
        else:
            checks.append(Check("tensorrt", OK if have_trt_module else SKIP, detail + ("" if have_trt_module else "; engines build with onnxruntime (target cpu)")))
        return checks
    expected = JETPACK_STACK.get(major_minor(jetpack) or "")
    if trt_problem is not None and trt_problem.installed:
        checks.append(Check("tensorrt", FAIL, trt_problem.detail, trt_problem.fix))
    elif not trt or not have_trt_module:
        checks.append(
            Check(
                "tensorrt",
                FAIL,
                f"JetPack {jetpack or '?'} without a usable TensorRT Python module (found {trt or 'none'})",
                "sudo apt install python3-libnvinfer (JetPack's TensorRT; never pip install tensorrt on a Jetson); "
                "a virtual environment needs --system-site-packages",
            )
        )
    elif expected and major_minor(trt) != expected[0]:
        checks.append(
            Check(
                "tensorrt",
                WARN,
                f"TensorRT {trt} on JetPack {jetpack}, which ships {expected[0]}: engines will not match the rest of the fleet",
                "use JetPack's own TensorRT (apt reinstall nvidia-tensorrt), remove pip-installed tensorrt wheels",
            )
        )
    else:
        checks.append(Check("tensorrt", OK, f"TensorRT {trt} matches JetPack {jetpack or '?'}"))
    if expected and cuda and major_minor(cuda) != expected[1]:
        checks.append(Check("cuda", WARN, f"CUDA {cuda} on JetPack {jetpack} (ships {expected[1]})", "fine if you installed the CUDA compat package on purpose; otherwise reinstall JetPack's CUDA"))
    else:
        checks.append(Check("cuda", OK if cuda else WARN, f"CUDA {cuda or 'not found'}", "" if cuda else "install JetPack's CUDA (apt install nvidia-jetpack)"))
    if expected and expected[2] and cudnn and major_minor(cudnn) != expected[2]:
        checks.append(Check("cudnn", WARN, f"cuDNN {cudnn} on JetPack {jetpack} (ships {expected[2]})", "reinstall JetPack's cuDNN"))
    else:
        checks.append(Check("cudnn", OK if cudnn else SKIP, f"cuDNN {cudnn or 'not found (TensorRT 10 does not need it)'}"))
    return checks


def check_dla(fingerprint: Dict[str, Any]) -> Check:
    module = fingerprint.get("module")
    cores = fingerprint.get("dla_cores")
    trt_text = fingerprint.get("tensorrt")
    if not fingerprint.get("is_jetson"):
        return Check("dla", SKIP, "not a Jetson: no DLA")
    support = reported_dla_support(trt_text, cores, module)
    detail = f"{module or 'unknown module'}: {cores if cores is not None else '?'} DLA cores; {support.reason}"
    if support.available:
        return Check("dla", OK, detail + (" (Q/DQ networks only)" if support.qdq_only else ""))
    if cores:
        return Check("dla", WARN, detail, "deploy with target gpu (or upgrade to a TensorRT that supports DLA here)")
    return Check("dla", SKIP, detail)


# the state folder, the engine cache --------------------------------------------------------------------------
def check_state_dir(config: AgentConfig) -> List[Check]:
    folder = config.state_dir
    checks: List[Check] = []
    if not folder.exists():
        parent = next((p for p in folder.parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK):
            return [Check("state folder", WARN, f"{folder} does not exist yet (the agent creates it)")]
        return [Check("state folder", FAIL, f"{folder} does not exist and {parent} is not writable", f"sudo install -d -m 0750 {folder} (or set state.dir)")]
    if not os.access(folder, os.W_OK | os.X_OK):
        checks.append(Check("state folder", FAIL, f"{folder} is not writable by uid {os.getuid()}", "chown the folder to the agent's user, or set state.dir"))
    else:
        mode = stat.S_IMODE(folder.stat().st_mode)
        if mode & 0o002:
            checks.append(Check("state folder", WARN, f"{folder} is world-writable (mode {mode:o})", f"chmod o-w {folder}"))
        else:
            checks.append(Check("state folder", OK, f"{folder} (mode {mode:o})"))
    try:
        free_mb = shutil.disk_usage(str(folder)).free // (1024 * 1024)
    except OSError as exc:
        return [*checks, Check("disk space", WARN, f"cannot read free space of {folder}: {exc}")]
    floor = config.state.min_free_mb
    if free_mb < floor:
        checks.append(Check("disk space", FAIL, f"{free_mb} MB free under {folder}, below state.min_free_mb = {floor}", "edge-agent store gc, or free space"))
    elif free_mb < 2 * floor:
        checks.append(Check("disk space", WARN, f"{free_mb} MB free under {folder} (floor {floor} MB)", "edge-agent store gc"))
    else:
        checks.append(Check("disk space", OK, f"{free_mb} MB free under {folder}"))
    return checks


def check_engine_cache(config: AgentConfig, fingerprint: Dict[str, Any]) -> Check:
    try:
        info = inspect_engine_cache(config, fingerprint)
    except Exception as exc:  # a broken cache must be reported, not crash the doctor
        return Check("engine cache", WARN, f"cannot read the engine cache: {type(exc).__name__}: {exc}", "edge-agent engine ls; remove unreadable entries")
    entries, incompatible = int(info.get("entries", 0)), int(info.get("incompatible", 0))
    detail = f"{entries} engines in {info.get('root')}, {incompatible} incompatible with this device"
    if incompatible:
        return Check("engine cache", WARN, detail + f" ({info.get('why', 'built on another device or TensorRT')})", "they rebuild when needed; edge-agent engine gc frees the space")
    return Check("engine cache", OK, detail)


def check_signing(config: AgentConfig) -> Check:
    if config.artifacts.allow_unsigned:
        return Check("artifact signatures", WARN, "artifacts.allow_unsigned is on: unsigned artifacts are accepted", "set artifacts.public_keys and turn allow_unsigned off")
    if not config.artifacts.public_keys:
        return Check("artifact signatures", FAIL, "no artifacts.public_keys: every artifact will be refused", "edge-agent fleet keys generate; put the .pub path in artifacts.public_keys")
    try:
        keys = load_public_keys(config.artifacts.public_keys)
    except Exception as exc:
        return Check("artifact signatures", FAIL, f"cannot load artifacts.public_keys: {exc}", "fix the key paths in the configuration")
    return Check("artifact signatures", OK, f"{len(keys)} trusted signing keys")


# the broker ---------------------------------------------------------------------------------------------------
def check_broker(config: AgentConfig, timeout_s: float = 5.0) -> List[Check]:
    """TCP reachability, TLS handshake and certificate, then an MQTT CONNECT with the configured credentials."""
    broker = config.broker
    where = f"{broker.host}:{broker.port}"
    try:
        with socket.create_connection((broker.host, broker.port), timeout=timeout_s) as sock:
            if broker.tls:
                context = ssl.create_default_context(cafile=broker.ca_file or None)
                if broker.cert_file:
                    context.load_cert_chain(broker.cert_file, broker.key_file or None)
                with context.wrap_socket(sock, server_hostname=broker.host) as tls:
                    tls_detail = f"{tls.version()}, certificate verified"
    except ssl.SSLError as exc:
        return [
            Check("broker reachable", OK, f"TCP {where} answers"),
            Check("broker TLS", FAIL, f"TLS handshake with {where} failed: {exc.reason or exc}", "check broker.ca_file (the CA that signed the broker's certificate) and the host name in it"),
        ]
    except OSError as exc:
        fix = "start the broker or fix broker.host/port; the agent keeps retrying meanwhile"
        return [Check("broker reachable", FAIL, f"cannot reach {where}: {exc.strerror or exc}", fix)]
    checks = [Check("broker reachable", OK, f"TCP {where} answers")]
    if broker.tls:
        checks.append(Check("broker TLS", OK, tls_detail))
    else:
        checks.append(Check("broker TLS", WARN, "plain TCP: credentials and artifacts travel unencrypted", "enable broker.tls with a CA (deploy/mosquitto/make-certs.sh)"))
    checks.append(_mqtt_connect(config, timeout_s))
    return checks


def _mqtt_connect(config: AgentConfig, timeout_s: float) -> Check:
    broker = config.broker
    result: Dict[str, Any] = {}
    done = threading.Event()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"edge-agent-doctor-{os.getpid()}",
        protocol=mqtt.MQTTv5 if broker.protocol == "5" else mqtt.MQTTv311,
    )
    if broker.username:
        client.username_pw_set(broker.username, broker.password or None)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file or None, certfile=broker.cert_file or None, keyfile=broker.key_file or None)

    def on_connect(_c: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        result["rc"] = reason_code
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(broker.host, broker.port, keepalive=10)
        client.loop_start()
        done.wait(timeout_s)
    except (OSError, ValueError) as exc:
        return Check("broker auth", FAIL, f"MQTT connect failed: {exc}", "check the broker address and TLS settings")
    finally:
        try:
            client.disconnect()
            client.loop_stop()
        except Exception:
            pass
    code = result.get("rc")
    who = f"as {broker.username!r}" if broker.username else "anonymously"
    if code is None:
        return Check("broker auth", FAIL, f"no CONNACK within {timeout_s:g} s", "is it an MQTT broker on that port?")
    if getattr(code, "is_failure", False):
        return Check("broker auth", FAIL, f"the broker refused the connection {who}: {code}", "check broker.username/password or the client certificate, and the broker's ACL for this device")
    return Check("broker auth", OK, f"MQTT {broker.protocol} connection accepted {who}")


# cameras, the unit, the running agent --------------------------------------------------------------------------
def check_cameras(config: AgentConfig, timeout_s: float = 5.0) -> List[Check]:
    state = read_state(config.state_dir)
    record = (state.serving or state.desired) if state else None
    cameras = list(((record or {}).get("deployment") or {}).get("cameras") or [])
    if not cameras:
        return [Check("cameras", SKIP, "the current deployment names no cameras")]
    checks = []
    for index, uri in enumerate(cameras):
        try:
            fps, detail = probe_camera(uri, timeout_s)
        except Exception as exc:
            checks.append(Check(f"camera {index}", FAIL, f"{_redact(uri)}: {exc}", "check the URI, the cable or network, and that the agent's user is in the video group"))
            continue
        checks.append(Check(f"camera {index}", OK if fps else WARN, f"{_redact(uri)}: {detail}", "" if fps else "the camera opened but delivered no frames"))
    return checks


def _redact(uri: str) -> str:
    """rtsp://user:secret@host -> rtsp://user:***@host"""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.split("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return uri


def check_systemd_unit(env: Optional[Dict[str, str]] = None) -> List[Check]:
    environ = os.environ if env is None else env
    unit = next((folder / UNIT_NAME for folder in UNIT_PATHS if (folder / UNIT_NAME).is_file()), None)
    if unit is None:
        if not Path("/run/systemd/system").is_dir():
            return [Check("systemd unit", SKIP, "systemd is not running here (container or another init)")]
        return [Check("systemd unit", WARN, f"{UNIT_NAME} is not installed", "sudo deploy/install.sh (installs and enables the unit)")]
    text = unit.read_text(errors="replace")
    settings = _unit_settings(text)
    checks = []
    if settings.get("Type") != "notify":
        checks.append(Check("systemd unit", WARN, f"{unit}: Type={settings.get('Type', 'simple')}, so READY and the watchdog are unused", "use the unit in systemd/edge-agent.service"))
    else:
        checks.append(Check("systemd unit", OK, f"{unit} (Type=notify)"))
    watchdog = settings.get("WatchdogSec")
    if not watchdog or watchdog in ("0", "off", "infinity"):
        checks.append(Check("systemd watchdog", WARN, "no WatchdogSec: a hung agent is never restarted", "set WatchdogSec=60 in the unit"))
    else:
        under = "WATCHDOG_USEC" in environ
        checks.append(Check("systemd watchdog", OK, f"WatchdogSec={watchdog}" + (" (active for this process)" if under else "")))
    return checks


def _unit_settings(text: str) -> Dict[str, str]:
    settings: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def check_running_agent(config: AgentConfig, live: Optional[Dict[str, Any]] = None) -> Check:
    if live is not None:
        return Check("agent", OK if live.get("healthy") else WARN, f"running (pid {live.get('pid')}), {live.get('ready_summary') or 'starting'}")
    report = live_status(config.state_dir)
    if report["running"]:
        status, found = report["status"] or {}, report["live"] or {}
        broker = "connected" if (found.get("broker") or {}).get("connected") else "away"
        return Check("agent", OK, f"running (pid {found.get('pid')}): {status.get('state')}, broker {broker}")
    if report["status_age_s"] is None:
        return Check("agent", WARN, f"not running (no {config.state_dir / STATUS_FILE})", "systemctl start edge-agent, or edge-agent run")
    return Check("agent", WARN, f"not running (status file {report['status_age_s']:.0f} s old)", "systemctl start edge-agent; journalctl -u edge-agent for why it stopped")


# the report ------------------------------------------------------------------------------------------------
def run_checks(
    config: AgentConfig,
    *,
    live: Optional[Dict[str, Any]] = None,
    fingerprint: Optional[Dict[str, Any]] = None,
    include_broker: bool = True,
    include_cameras: bool = True,
) -> List[Check]:
    """Every check, in the order a person would fix things. Never raises."""
    checks: List[Check] = [Check("config", OK, f"{config.source or 'defaults and environment'}; device id {config.device.id}")]
    steps: List[Callable[[], Any]] = []
    fp = fingerprint if fingerprint is not None else device_fingerprint()
    steps += [check_python, lambda: check_packages(fp), lambda: check_accelerator(fp), lambda: check_dla(fp), lambda: check_state_dir(config)]
    steps += [lambda: check_engine_cache(config, fp), lambda: check_signing(config)]
    if include_broker:
        steps.append(lambda: check_broker(config))
    if include_cameras:
        steps.append(lambda: check_cameras(config))
    steps += [check_systemd_unit, lambda: check_running_agent(config, live)]
    for step in steps:
        try:
            found = step()
        except Exception as exc:  # a doctor never crashes on the machine it diagnoses
            found = Check(getattr(step, "__name__", "check"), WARN, f"the check itself failed: {type(exc).__name__}: {exc}")
        checks.extend(found if isinstance(found, list) else [found])
    return checks
