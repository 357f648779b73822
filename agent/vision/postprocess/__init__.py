"""Postprocessing plugins, found by key: `create({"type": "classification", "top_k": 5, "labels": "..."})`.

Each plugin is one module here with `KEY`, its config dataclass and its Postprocessor, exported as
`PLUGIN = (KEY, Config, Postprocessor)`. Adding one is adding its module to PLUGIN_MODULES.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple, Type, Union

from agent.vision.config_schema import from_mapping
from agent.vision.postprocess import blazeface, classification, yolo
from agent.vision.postprocess.base import (
    Classification,
    Detection,
    Findings,
    PostprocessError,
    Postprocessor,
)

PLUGIN_MODULES = (classification, blazeface, yolo)

__all__ = ["Classification", "Detection", "Findings", "PostprocessError", "Postprocessor", "create", "registry"]


def registry() -> Dict[str, Tuple[Type[Any], Type[Postprocessor]]]:
    """KEY -> (config class, postprocessor class) for every plugin module."""
    found: Dict[str, Tuple[Type[Any], Type[Postprocessor]]] = {}
    for module in PLUGIN_MODULES:
        key, config_cls, plugin_cls = module.PLUGIN
        found[key] = (config_cls, plugin_cls)
    return found


def create(spec: Union[str, Mapping[str, Any], Postprocessor]) -> Postprocessor:
    """A postprocessor from a key ('classification'), a dict with 'type' and the plugin's options, or one
    already made."""
    if isinstance(spec, Postprocessor):
        return spec
    if isinstance(spec, str):
        data: Mapping[str, Any] = {"type": spec}
    elif isinstance(spec, Mapping):
        data = spec
    else:
        raise PostprocessError(f"postprocess must be a plugin name or an object, got {type(spec).__name__}")
    key = str(data.get("type", ""))
    plugins = registry()
    if key not in plugins:
        raise PostprocessError(f"postprocess.type {key!r} unknown (known: {sorted(plugins)})")
    config_cls, plugin_cls = plugins[key]
    config = from_mapping(config_cls, data, f"postprocess ({key})", PostprocessError, ignore=("type",))
    return plugin_cls(config)
