"""Postprocessing plugins, found by key: `create({"type": "classification", "top_k": 5, "labels": "..."})`.

Each plugin is one module here with `KEY` and its Postprocessor, exported with its config Struct (in
agent.vision.options, tagged with `type` = KEY, so its options are typed and checked by the Struct itself) as
`PLUGIN = (KEY, Config, Postprocessor)`. Adding one is adding its module to PLUGIN_MODULES and its config
to agent.vision.options.PostprocessConfig.

A deployment's `postprocess` object is parsed once, by `parse_config()` (agent.vision.options, where the
config Structs live so that parsing needs no numpy), into one of the config Structs (`PostprocessConfig`, the
union tagged on `type`); `create()` takes that (or, for tools and tests, a key or a document) and makes the
plugin.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple, Type, Union

from agent.vision.options import PostprocessConfig, parse_config
from agent.vision.postprocess import blazeface, classification, yolo
from agent.vision.postprocess.base import (
    Classification,
    Detection,
    Findings,
    PostprocessError,
    Postprocessor,
)

PLUGIN_MODULES = (classification, blazeface, yolo)

__all__ = [
    "Classification",
    "Detection",
    "Findings",
    "PostprocessConfig",
    "PostprocessError",
    "Postprocessor",
    "create",
    "parse_config",
    "registry",
]


def registry() -> Dict[str, Tuple[Type[Any], Type[Postprocessor]]]:
    """KEY -> (config Struct, postprocessor class) for every plugin module."""
    found: Dict[str, Tuple[Type[Any], Type[Postprocessor]]] = {}
    for module in PLUGIN_MODULES:
        key, config_cls, plugin_cls = module.PLUGIN
        found[key] = (config_cls, plugin_cls)
    return found


def create(spec: Union[str, Mapping[str, Any], Postprocessor, PostprocessConfig]) -> Postprocessor:
    """A postprocessor from a parsed config Struct, a key ('classification'), a document with 'type' and the
    plugin's options, or one already made."""
    if isinstance(spec, Postprocessor):
        return spec
    if isinstance(spec, (str, Mapping)):
        spec = parse_config(spec)
    for config_cls, plugin_cls in registry().values():
        if isinstance(spec, config_cls):
            return plugin_cls(spec)
    raise PostprocessError(f"postprocess: a plugin name, an object or a plugin config, got {type(spec).__name__}")
