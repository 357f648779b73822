"""TensorRT plugin libraries: loaded only from the configured folder, and only when the build spec names them
with the sha256 they must have. A plugin is native code running inside the agent; nothing else gets in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence

from agent.engine.spec import PluginLib
from agent.errors import AgentError
from agent.store.hashing import sha256_file


class PluginError(AgentError):
    """A plugin library is not allowed, missing, or not the file the spec names."""


def resolve_plugins(plugins: Sequence[PluginLib], plugin_dir: str) -> List[Path]:
    """The plugin files for a spec, each checked: inside `plugin_dir` (no path tricks, no symlink out of it),
    a regular file, and the sha256 the spec gives."""
    if not plugins:
        return []
    if not plugin_dir:
        raise PluginError("the build spec names plugin libraries but engine.plugin_dir is not configured: plugins load only from there")
    base = Path(plugin_dir)
    if not base.is_dir():
        raise PluginError(f"engine.plugin_dir {plugin_dir} is not a folder")
    real_base = base.resolve()
    out: List[Path] = []
    for plugin in plugins:
        if os.path.basename(plugin.name) != plugin.name or plugin.name in ("", ".", ".."):
            raise PluginError(f"plugin {plugin.name!r}: give a file name inside engine.plugin_dir, not a path")
        path = base / plugin.name
        if not path.is_file():
            raise PluginError(f"plugin {plugin.name} not found in {plugin_dir}")
        if path.resolve().parent != real_base:
            raise PluginError(f"plugin {plugin.name} is a link that leaves {plugin_dir}: refused")
        digest = sha256_file(path)
        if digest != plugin.sha256:
            raise PluginError(f"plugin {plugin.name}: sha256 is {digest}, the build spec says {plugin.sha256}: refused")
        out.append(path)
    return out
