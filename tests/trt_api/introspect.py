"""Run INSIDE a child interpreter, one per TensorRT version: import the real compiled bindings (linked against
empty stand-ins for libnvinfer, see tests/trt_api/bindings.py) and write their API to a JSON file.

    python tests/trt_api/introspect.py WHEEL_DIR OUT.json

Introspection only: `dir()`, `__doc__` and `__members__` are read; no TensorRT function, constructor or method
is ever called (every libnvinfer entry point is an empty stand-in and would crash or do nothing).
Standalone on purpose (no project imports): it runs under whichever Python the wheel was built for.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Dict, List, Optional

DEPRECATED = re.compile(r"(?<!\()\[DEPRECATED\]")  # "([DEPRECATED] ...)" cites another API: not a marker
IVAR = re.compile(r"^\s*:ivar\s+(\w+):(.*)$")
ENUM_MEMBER = re.compile(r"^  (\w+) :(.*)$")
MAX_DEPTH = 3


def _doc(obj: Any) -> str:
    try:
        text = obj.__doc__
    except Exception:
        return ""
    return text if isinstance(text, str) else ""


def _signatures(doc: str, name: str) -> List[str]:
    """pybind11 puts one signature per overload at the top: 'name(self: X, a: int) -> Y' or, for overloads,
    '1. name(...) -> Y'. Property getters have '(arg0: X) -> Y'."""
    out: List[str] = []
    for line in doc.splitlines():
        stripped = re.sub(r"^\d+\.\s*", "", line.strip())
        if stripped.startswith(name + "(") or (name == "" and stripped.startswith("(")):
            out.append(stripped[len(name):])
    if len(out) > 1 and out[0] == "(*args, **kwargs)":  # the header line of an overloaded function
        out = out[1:]
    return out


def _ivar_deprecations(doc: str) -> Dict[str, bool]:
    """':ivar name: ... [DEPRECATED] ...' lines of a class docstring (properties carry no doc of their own)."""
    found: Dict[str, bool] = {}
    current: Optional[str] = None
    for line in doc.splitlines():
        match = IVAR.match(line)
        if match:
            current = match.group(1)
            found[current] = bool(DEPRECATED.search(match.group(2)))
        elif current is not None and line.strip() and not line.strip().startswith(":"):
            found[current] = found[current] or bool(DEPRECATED.search(line))
    return found


def _enum_deprecations(doc: str) -> Dict[str, bool]:
    """The 'Members:' section of a pybind11 enum docstring: '  NAME : text', continued on indented lines."""
    found: Dict[str, bool] = {}
    current: Optional[str] = None
    in_members = False
    for line in doc.splitlines():
        if line.strip() == "Members:":
            in_members = True
            continue
        if not in_members:
            continue
        match = ENUM_MEMBER.match(line)
        if match:
            current = match.group(1)
            found[current] = bool(DEPRECATED.search(match.group(2)))
        elif current is not None and line.strip():
            found[current] = found[current] or bool(DEPRECATED.search(line))
    return found


def _class_deprecated(cls: type) -> bool:
    head = _doc(cls).split(":ivar", 1)[0].split("Members:", 1)[0]
    init = cls.__dict__.get("__init__")
    return bool(DEPRECATED.search(head)) or bool(init is not None and DEPRECATED.search(_doc(init)))


def _is_enum(cls: type) -> bool:
    return isinstance(getattr(cls, "__members__", None), dict)


def _walk_class(api: Dict[str, Dict[str, Any]], path: str, cls: type, depth: int, seen: List[type]) -> None:
    bases = [b.__name__ for b in cls.__mro__[1:] if b.__module__.startswith("tensorrt")]
    enum = _is_enum(cls)
    api[path] = {"kind": "enum" if enum else "class", "deprecated": _class_deprecated(cls), "bases": bases}
    ivars = _ivar_deprecations(_doc(cls))
    members = _enum_deprecations(_doc(cls)) if enum else {}
    for name in dir(cls):
        if name.startswith("_") and name != "__init__":
            continue
        try:
            raw = None
            for klass in cls.__mro__:
                if name in klass.__dict__:
                    raw = klass.__dict__[name]
                    break
            value = getattr(cls, name) if raw is None else raw
        except Exception:
            continue
        key = f"{path}.{name}"
        if enum and name in cls.__members__:
            api[key] = {"kind": "enum_value", "deprecated": members.get(name, False)}
        elif isinstance(value, property):
            getter = _doc(value.fget) if value.fget is not None else ""
            api[key] = {
                "kind": "property",
                "deprecated": ivars.get(name, False) or bool(DEPRECATED.search(_doc(value))),
                "writable": value.fset is not None,
                "signatures": _signatures(getter, ""),
            }
        elif isinstance(value, type):
            if depth < MAX_DEPTH and value not in seen:
                _walk_class(api, key, value, depth + 1, [*seen, value])
            else:
                api[key] = {"kind": "enum" if _is_enum(value) else "class", "deprecated": False, "bases": []}
        elif callable(value) or isinstance(value, (staticmethod, classmethod)):
            target = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            doc = _doc(target)
            api[key] = {"kind": "method", "deprecated": bool(DEPRECATED.search(doc)), "signatures": _signatures(doc, name)}
        else:
            api[key] = {"kind": "value", "deprecated": ivars.get(name, False)}


def dump(module: Any) -> Dict[str, Any]:
    api: Dict[str, Dict[str, Any]] = {}
    for name in dir(module):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if isinstance(value, type) and value.__module__.startswith("tensorrt"):
            _walk_class(api, name, value, 1, [value])
        elif callable(value) and type(value).__name__ == "builtin_function_or_method":
            doc = _doc(value)
            api[name] = {"kind": "function", "deprecated": bool(DEPRECATED.search(doc)), "signatures": _signatures(doc, name)}
    api["__version__"] = {"kind": "value", "deprecated": False}
    return {"version": str(module.__version__), "api": api}


def main() -> int:
    wheel_dir, out = sys.argv[1], sys.argv[2]
    sys.path.insert(0, wheel_dir)
    import tensorrt_bindings  # the real compiled module; its libnvinfer symbols are empty stand-ins

    data = dump(tensorrt_bindings)
    data["python"] = "{}.{}".format(*sys.version_info[:2])
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=0, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
