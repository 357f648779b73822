"""Postprocessing plugins, found by key: `create({"type": "classification", "top_k": 5, "labels": "..."})`.

Each plugin is one module here with `KEY`, its config Struct (agent.models.Model tagged with `type` = KEY, so
its options are typed and checked by the Struct itself) and its Postprocessor, exported as
`PLUGIN = (KEY, Config, Postprocessor)`. Adding one is adding its module name to PLUGIN_MODULES.

A deployment's `postprocess` object is parsed once, by `parse_config()`, into one of the config Structs
(`PostprocessConfig`, the union tagged on `type`); `create()` takes that (or, for tools and tests, a key or a
document) and makes the plugin.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Mapping, Tuple, Type, Union

from agent.errors import AgentError
from agent.models import parse
from agent.vision.postprocess.base import (
    Classification,
    Detection,
    Findings,
    PostprocessError,
    Postprocessor,
)
from agent.vision.postprocess.gate_adapter import gate_decoder

PLUGIN_MODULES = ("classification", "blazeface", "yolo")

__all__ = [
    "Classification",
    "Detection",
    "Findings",
    "PostprocessConfig",
    "PostprocessError",
    "Postprocessor",
    "create",
    "gate_decoder",
    "parse_config",
    "registry",
]


def registry() -> Dict[str, Tuple[Type[Any], Type[Postprocessor]]]:
    """KEY -> (config Struct, postprocessor class) for every plugin module."""
    found: Dict[str, Tuple[Type[Any], Type[Postprocessor]]] = {}
    for module_name in PLUGIN_MODULES:
        module = importlib.import_module(f"agent.vision.postprocess.{module_name}")
        key, config_cls, plugin_cls = module.PLUGIN
        found[key] = (config_cls, plugin_cls)
    return found


# Every plugin's config Struct, tagged on "type": the type of a deployment's `postprocess`.
PostprocessConfig: Any = Union[tuple(config for config, _plugin in registry().values())]


def parse_config(data: Union[str, Mapping[str, Any]], *, error: Type[AgentError] = PostprocessError, root: str = "postprocess") -> Any:
    """A plugin key or a `{"type": KEY, ...options}` document -> that plugin's config Struct; `error` names the key."""
    document = {"type": data} if isinstance(data, str) else data
    return parse(PostprocessConfig, document, error=error, root=root)


def create(spec: Union[str, Mapping[str, Any], Postprocessor, Any]) -> Postprocessor:
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
