"""Configuration: one TOML file, environment overrides `EDGE_AGENT_<SECTION>_<KEY>`, validated at start.

Every error names the key and the problem (`broker.port: expected int <= 65535, got 70000`); the document is
the AgentConfig model (agent.models), parsed once here.
Defaults run on a laptop: a broker on localhost, state under ~/.local/state/edge-agent (or /var/lib/edge-agent
under systemd or as root).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Type

import msgspec

from agent.errors import ConfigError
from agent.models import Annotated, Meta, Model, dump, parse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.8 in CI
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.toml")
ENV_PREFIX = "EDGE_AGENT_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TOPIC_CHARS = "/+#"


class DeviceConfig(Model, kw_only=True):
    id: str = ""  # empty: default_device_id()
    groups: List[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if any(ch in self.id for ch in _TOPIC_CHARS):
            raise ValueError(f"id: must be non-empty without '/', '+' or '#', got {self.id!r}")
        for group in self.groups:
            if not group or any(ch in group for ch in _TOPIC_CHARS):
                raise ValueError(f"groups: a group name has '/', '+' or '#' or is empty: {group!r}")


class BrokerConfig(Model, kw_only=True):
    host: Annotated[str, Meta(min_length=1)] = "localhost"
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = ""
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: Annotated[int, Meta(ge=5)] = 30
    topic_prefix: str = "edge"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    max_payload: int = 0  # the broker's packet size limit in bytes (AWS IoT Core: 131072); 0: none

    def __post_init__(self) -> None:
        prefix = self.topic_prefix
        if "/" in prefix.strip("/") or "+" in prefix or "#" in prefix:
            raise ValueError(f"topic_prefix: one topic level without wildcards, got {prefix!r}")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file: set cert_file and key_file both for a client certificate, or neither")

    def __repr__(self) -> str:  # the password never reaches a log line
        shown = ", ".join(f"{name}={'***' if name == 'password' and value else repr(value)}" for name, value in _items(self))
        return f"BrokerConfig({shown})"


class StateConfig(Model, kw_only=True):
    dir: str = ""  # empty: chosen by default_state_dir()
    min_free_mb: int = 200
    outbox_max_messages: int = 10000


class ArtifactsConfig(Model, kw_only=True):
    public_keys: List[str] = msgspec.field(default_factory=list)  # paths to ed25519 public keys (PEM) or raw hex
    # "KEY=kind[,kind]": which keys may sign which kinds; engine plans only from keys named for them (agent.fleet.artifact_trust)
    key_kinds: List[str] = msgspec.field(default_factory=list)
    allow_unsigned: bool = False
    max_bytes: int = 2 * 1024**3
    chunk_bytes: Annotated[int, Meta(ge=1024)] = 256 * 1024
    window: Annotated[int, Meta(ge=1)] = 8
    block_timeout_s: float = 10.0


class EngineConfig(Model, kw_only=True):
    backend: Literal["auto", "tensorrt", "onnxruntime"] = "auto"
    plugin_dir: str = ""  # plugin libraries load only from here
    build_timeout_s: float = 3600.0
    build_memory_limit_mb: int = 0  # 0: no limit beyond the free-memory check
    workspace_mb: int = 1024
    timing_cache: bool = True
    threads: int = 0  # onnxruntime intra-op threads; 0: library default


class TelemetryConfig(Model, kw_only=True):
    interval_s: Annotated[float, Meta(gt=0)] = 10.0
    compact: bool = False
    tegrastats: bool = True
    nvml: bool = True


class LogConfig(Model, kw_only=True):
    level: str = "INFO"  # any case

    def __post_init__(self) -> None:
        if self.level.upper() not in LOG_LEVELS:
            raise ValueError(f"level: must be {', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}, got {self.level!r}")


class AgentConfig(Model, kw_only=True):
    device: DeviceConfig = msgspec.field(default_factory=DeviceConfig)
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    artifacts: ArtifactsConfig = msgspec.field(default_factory=ArtifactsConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    source: str = ""  # where the file came from, for messages (not a key of the file: sections are tables)

    @property
    def state_dir(self) -> Path:
        return Path(self.state.dir) if self.state.dir else default_state_dir()

    def redacted(self) -> Dict[str, Any]:
        """The configuration as a dict with secrets masked, for logs, doctor and telemetry."""
        data: Dict[str, Any] = dump(self)
        if data["broker"].get("password"):
            data["broker"]["password"] = "***"
        return data


SECTIONS: Dict[str, Type[Model]] = {
    "device": DeviceConfig,
    "broker": BrokerConfig,
    "state": StateConfig,
    "artifacts": ArtifactsConfig,
    "engine": EngineConfig,
    "telemetry": TelemetryConfig,
    "log": LogConfig,
}


def _items(obj: Model) -> List[Tuple[str, Any]]:
    return [(name, getattr(obj, name)) for name in obj.__struct_fields__]


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


def _check(config: AgentConfig) -> None:
    """What the document's types cannot say: files that must exist, a device id after defaults."""
    broker = config.broker
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(broker, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"broker.{key}: file not found: {path}")
    if broker.max_payload and broker.max_payload < 4096:
        raise ConfigError(f"broker.max_payload: 0 (no limit) or at least 4096 bytes, got {broker.max_payload}")
    if not config.device.id:
        raise ConfigError("device.id: must be non-empty without '/', '+' or '#', got ''")


def load_config(path: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> AgentConfig:
    """Read the TOML file (explicit path, $EDGE_AGENT_CONFIG, or /etc/edge-agent/agent.toml if present),
    apply environment overrides, fill defaults, validate."""
    environ = os.environ if env is None else env
    chosen = path or environ.get(ENV_PREFIX + "CONFIG") or ""
    if not chosen and DEFAULT_CONFIG_PATH.is_file():
        chosen = str(DEFAULT_CONFIG_PATH)
    data: Dict[str, Any] = {}
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
        parse(AgentConfig, data, origin=f"in {chosen}")  # the file's own values, strictly typed
        data = {section: dict(values) for section, values in data.items()}
        data["source"] = chosen
    from_env: Dict[str, str] = {}  # "broker.port" -> the variable that set it, for messages
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        where, key = _split_env_name(name[len(ENV_PREFIX) :])
        if where is None:
            continue
        text = value.strip()
        is_list = isinstance(getattr(SECTIONS[where](), key, None), list)  # a comma-separated list
        data.setdefault(where, {})[key] = [item.strip() for item in text.split(",") if item.strip()] if is_list else text
        from_env[f"{where}.{key}"] = name
    device = data.setdefault("device", {})
    if not device.get("id"):
        device["id"] = default_device_id()
    try:  # environment values are strings: converted, not strictly typed (the file's were checked above)
        config = parse(AgentConfig, data, strict=False)
    except ConfigError as exc:
        variable = from_env.get(str(exc).split(":", 1)[0])
        raise ConfigError(f"{exc} (environment variable {variable})" if variable else str(exc)) from None
    _check(config)
    return config


def _split_env_name(rest: str) -> Tuple[Optional[str], str]:
    lowered = rest.lower()
    for section in SECTIONS:
        if lowered.startswith(section + "_"):
            return section, lowered[len(section) + 1 :]
    return None, ""
