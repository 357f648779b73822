"""Configuration: one TOML file, environment overrides `EDGE_AGENT_<SECTION>_<KEY>`, validated at start.

Every error names the key and the problem (`broker.port: must be an integer from 1 to 65535, got 'abc'`).
Defaults run on a laptop: a broker on localhost, state under ~/.local/state/edge-agent (or /var/lib/edge-agent
under systemd or as root).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from agent.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.8 in CI
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.toml")
ENV_PREFIX = "EDGE_AGENT_"


@dataclass
class DeviceConfig:
    id: str = ""
    groups: List[str] = field(default_factory=list)


@dataclass
class BrokerConfig:
    host: str = "localhost"
    port: int = 1883
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    protocol: str = "5"  # "5" or "3.1.1"
    keepalive_s: int = 30
    topic_prefix: str = "edge"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    max_payload: int = 0  # the broker's packet size limit in bytes (AWS IoT Core: 131072); 0: none


@dataclass
class StateConfig:
    dir: str = ""  # empty: chosen by default_state_dir()
    min_free_mb: int = 200
    outbox_max_messages: int = 10000


@dataclass
class ArtifactsConfig:
    public_keys: List[str] = field(default_factory=list)  # paths to ed25519 public keys (PEM) or raw hex
    allow_unsigned: bool = False
    max_bytes: int = 2 * 1024**3
    chunk_bytes: int = 256 * 1024
    window: int = 8
    block_timeout_s: float = 10.0


@dataclass
class EngineConfig:
    backend: str = "auto"  # auto | tensorrt | onnxruntime
    plugin_dir: str = ""  # plugin libraries load only from here
    build_timeout_s: float = 3600.0
    build_memory_limit_mb: int = 0  # 0: no limit beyond the free-memory check
    workspace_mb: int = 1024
    timing_cache: bool = True
    threads: int = 0  # onnxruntime intra-op threads; 0: library default


@dataclass
class TelemetryConfig:
    interval_s: float = 10.0
    compact: bool = False
    tegrastats: bool = True
    nvml: bool = True


@dataclass
class LogConfig:
    level: str = "INFO"


@dataclass
class AgentConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    state: StateConfig = field(default_factory=StateConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = ""  # where the file came from, for messages

    @property
    def state_dir(self) -> Path:
        return Path(self.state.dir) if self.state.dir else default_state_dir()

    def redacted(self) -> Dict[str, Any]:
        """The configuration as a dict with secrets masked, for logs, doctor and telemetry."""
        data = dataclasses.asdict(self)
        if data["broker"].get("password"):
            data["broker"]["password"] = "***"
        return data


SECTIONS: Dict[str, type] = {
    "device": DeviceConfig,
    "broker": BrokerConfig,
    "state": StateConfig,
    "artifacts": ArtifactsConfig,
    "engine": EngineConfig,
    "telemetry": TelemetryConfig,
    "log": LogConfig,
}


def default_state_dir() -> Path:
    """systemd's StateDirectory, else /var/lib/edge-agent as root, else the user's XDG state folder."""
    from_systemd = os.environ.get("STATE_DIRECTORY")
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/edge-agent")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "edge-agent"


def default_device_id(machine_id_path: Path = Path("/etc/machine-id")) -> str:
    try:
        machine_id = machine_id_path.read_text().strip()
    except OSError:
        machine_id = ""
    if machine_id:
        return f"dev-{machine_id[:12]}"
    return socket.gethostname() or "edge-device"


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert `value` (TOML or an environment string) to the type of `default`, or raise ConfigError."""
    from_env = isinstance(value, str) and not isinstance(default, str)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if from_env and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if from_env and value.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if isinstance(default, int):
        try:
            if isinstance(value, (bool, float)):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: must be an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: must be a number, got {value!r}") from None
    if isinstance(default, list):
        if from_env:
            return [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{key}: must be a list of strings, got {value!r}")
        return list(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported value {value!r}")  # pragma: no cover


def _apply_section(section: str, obj: Any, values: Mapping[str, Any], origin: str) -> None:
    known = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key in {origin} (known: {', '.join(sorted(known))})")
        setattr(obj, key, _coerce(f"{section}.{key}", value, getattr(obj, key)))


def _validate(config: AgentConfig) -> None:
    broker = config.broker
    if not 1 <= broker.port <= 65535:
        raise ConfigError(f"broker.port: must be from 1 to 65535, got {broker.port}")
    if broker.protocol not in ("5", "3.1.1"):
        raise ConfigError(f"broker.protocol: must be '5' or '3.1.1', got {broker.protocol!r}")
    if not broker.host:
        raise ConfigError("broker.host: must not be empty")
    if broker.keepalive_s < 5:
        raise ConfigError(f"broker.keepalive_s: must be at least 5, got {broker.keepalive_s}")
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(broker, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"broker.{key}: file not found: {path}")
    if bool(broker.cert_file) != bool(broker.key_file):
        raise ConfigError("broker.cert_file and broker.key_file: set both for a client certificate, or neither")
    if broker.max_payload and broker.max_payload < 4096:
        raise ConfigError(f"broker.max_payload: 0 (no limit) or at least 4096 bytes, got {broker.max_payload}")
    if "/" in broker.topic_prefix.strip("/") or "+" in broker.topic_prefix or "#" in broker.topic_prefix:
        raise ConfigError(f"broker.topic_prefix: one topic level without wildcards, got {broker.topic_prefix!r}")
    device_id = config.device.id
    if any(ch in device_id for ch in "/+#") or not device_id:
        raise ConfigError(f"device.id: must be non-empty without '/', '+' or '#', got {device_id!r}")
    for group in config.device.groups:
        if not group or any(ch in group for ch in "/+#"):
            raise ConfigError(f"device.groups: a group name has '/', '+' or '#' or is empty: {group!r}")
    if config.engine.backend not in ("auto", "tensorrt", "onnxruntime"):
        raise ConfigError(f"engine.backend: must be auto, tensorrt or onnxruntime, got {config.engine.backend!r}")
    if config.telemetry.interval_s <= 0:
        raise ConfigError(f"telemetry.interval_s: must be positive, got {config.telemetry.interval_s}")
    if config.artifacts.window < 1 or config.artifacts.chunk_bytes < 1024:
        raise ConfigError("artifacts.window must be >= 1 and artifacts.chunk_bytes >= 1024")
    if config.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log.level: must be DEBUG, INFO, WARNING or ERROR, got {config.log.level!r}")


def load_config(path: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> AgentConfig:
    """Read the TOML file (explicit path, $EDGE_AGENT_CONFIG, or /etc/edge-agent/agent.toml if present),
    apply environment overrides, fill defaults, validate."""
    environ = os.environ if env is None else env
    config = AgentConfig()
    chosen = path or environ.get(ENV_PREFIX + "CONFIG") or ""
    if not chosen and DEFAULT_CONFIG_PATH.is_file():
        chosen = str(DEFAULT_CONFIG_PATH)
    if chosen:
        try:
            with open(chosen, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {chosen}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {chosen} is not valid TOML: {exc}") from None
        for section, values in data.items():
            if section not in SECTIONS:
                raise ConfigError(f"{section}: unknown section in {chosen} (known: {', '.join(SECTIONS)})")
            if not isinstance(values, dict):
                raise ConfigError(f"{section}: must be a table ([{section}]) in {chosen}")
            _apply_section(section, getattr(config, section), values, chosen)
        config.source = chosen
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        section, key = _split_env_name(name[len(ENV_PREFIX) :])
        if section is None:
            continue
        _apply_section(section, getattr(config, section), {key: value}, f"environment variable {name}")
    if not config.device.id:
        config.device.id = default_device_id()
    _validate(config)
    return config


def _split_env_name(rest: str) -> Tuple[Optional[str], str]:
    lowered = rest.lower()
    for section in SECTIONS:
        if lowered.startswith(section + "_"):
            return section, lowered[len(section) + 1 :]
    return None, ""
