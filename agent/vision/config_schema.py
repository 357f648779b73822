"""Small config dataclasses from deployment dicts: unknown keys and wrong types become errors naming the key."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Dict, Mapping, Optional, Type, TypeVar

from agent.errors import AgentError, ConfigError

T = TypeVar("T")


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def from_mapping(cls: Type[T], data: Optional[Mapping[str, Any]], section: str, error: Type[AgentError] = ConfigError, ignore: tuple = ()) -> T:
    """`cls(**data)` with each value coerced to the type of the field's default; keys in `ignore` are skipped
    (for example the plugin `type` key). Fields must have defaults of type bool, int, float or str."""
    values: Dict[str, Any] = {}
    if data:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known - set(ignore))
        if unknown:
            raise error(f"{section}: unknown keys {unknown} (known: {sorted(known)})")
        defaults = cls()
        for key, raw in data.items():
            if key in ignore:
                continue
            default = getattr(defaults, key)
            try:
                if isinstance(default, bool):
                    values[key] = to_bool(raw)
                elif isinstance(default, int):
                    if isinstance(raw, float) and not raw.is_integer():
                        raise ValueError(raw)
                    values[key] = int(raw)
                elif isinstance(default, float):
                    values[key] = float(raw)
                elif isinstance(default, str):
                    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                        raise ValueError(raw)
                    values[key] = str(raw)
                else:
                    values[key] = raw
            except (TypeError, ValueError):
                raise error(f"{section}.{key}: expected {type(default).__name__}, got {raw!r}") from None
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config
