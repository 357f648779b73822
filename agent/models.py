"""Typed documents: every document the agent reads (configuration, deployment, command, thresholds, plugin
options, telemetry) is a `msgspec.Struct`, parsed once where it arrives with `parse()`; the rest of the code
receives typed objects.

    class BrokerConfig(Model, kw_only=True):
        port: Annotated[int, Meta(ge=1, le=65535)] = 1883

    parse(BrokerConfig, {"port": "x"})  ->  ConfigError("port: expected int, got str 'x'")

Models subclass `Model`, or `FrozenModel` for a document that must not change once parsed, and repeat
`kw_only=True` (and `frozen=True`) in their own class line: msgspec applies those to the fields a class defines
and type checkers read them there. A tagged union's members pass `tag_field`/`tag` as well. A check that spans
fields goes in `__post_init__` and raises ValueError; a message that starts with a field name
(`"cert_file: ..."`, `"cameras[2]: ..."`) is reported at that field. Error messages name the key path
(`broker.port: ...`), the value given, and for Literal/Enum fields and tagged unions the allowed values.
"""

from __future__ import annotations

import enum
import re
import sys
from typing import Any, List, Tuple, Type, TypeVar

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

from agent.errors import AgentError, ConfigError

if sys.version_info >= (3, 9):
    from typing import Annotated
else:  # pragma: no cover - Python 3.8
    from typing_extensions import Annotated

__all__ = ["Annotated", "FrozenModel", "Meta", "Model", "dump", "explain", "parse"]

T = TypeVar("T")


class Model(msgspec.Struct, forbid_unknown_fields=True):
    """The base of the project's documents: unknown keys refused."""


class FrozenModel(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A document that must not change once parsed (hashable; change a copy with msgspec.structs.replace).
    Subclasses say `frozen=True` again, for type checkers."""


def parse(
    model_type: Type[T],
    data: Any,
    *,
    error: Type[AgentError] = ConfigError,
    strict: bool = True,
    root: str = "",
    origin: str = "",
) -> T:
    """`data` (decoded JSON/TOML, or strings with `strict=False`) -> a `model_type`, or `error` naming the key.

    `root` prefixes the key path in messages (`deployment` -> `deployment.precision: ...`); `origin` says
    where the document came from (`in /etc/edge-agent/agent.toml`)."""
    try:
        return msgspec.convert(data, model_type, strict=strict)
    except msgspec.ValidationError as exc:
        try:
            message = explain(model_type, data, str(exc), root)
        except Exception:  # explaining must never hide the error itself
            message = f"{root}: {exc}" if root else str(exc)
        raise error(f"{message} ({origin})" if origin else message) from None


def _plain(value: Any) -> Any:
    """Validated str subclasses (agent.device.target.Target) travel as the text they hold."""
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def dump(obj: Any) -> Any:
    """A Struct (or anything holding Structs) as plain dicts, lists and scalars, ready for JSON."""
    return msgspec.to_builtins(obj, enc_hook=_plain)


# error messages --------------------------------------------------------------------------------------------
_AT = re.compile(r"^(?P<text>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_MISSING = object()


def _segments(path: str) -> List[str]:
    return [name if name else index for name, index in _SEGMENT.findall(path)]


def _unwrap(node: Any, value: Any) -> Any:
    """The concrete type behind Annotated and Optional/unions, picked to fit `value` where it can."""
    while True:
        if isinstance(node, mi.Metadata):
            node = node.type
        elif isinstance(node, mi.UnionType):
            options = [t for t in node.types if not isinstance(t, mi.NoneType)]
            pick: Any = None
            if isinstance(value, dict):
                structs = [t for t in options if isinstance(t, mi.StructType)]
                for struct in structs:
                    if struct.tag_field and value.get(struct.tag_field) == struct.tag:
                        pick = struct
                if pick is None and structs and not any(s.tag_field for s in structs):
                    pick = structs[0]
                if pick is None and not structs:
                    pick = next((t for t in options if isinstance(t, mi.DictType)), None)
            elif isinstance(value, (list, tuple)):
                pick = next((t for t in options if isinstance(t, (mi.ListType, mi.TupleType, mi.VarTupleType))), None)
            if pick is None:
                if len(options) == 1 or all(isinstance(t, mi.StructType) and t.tag_field for t in options):
                    return node if len(options) > 1 else options[0]
                pick = options[0] if options else node
            node = pick
        else:
            return node


def _walk(model_type: Any, data: Any, segments: List[str]) -> Tuple[Any, Any, Any]:
    """(parent type, type, value) at the path, as far as they can be told."""
    parent: Any = None
    node: Any = mi.type_info(model_type)
    value = data
    for segment in segments:
        node = _unwrap(node, value)
        parent = node
        if isinstance(node, mi.UnionType):  # a tagged union without a readable tag: only the tag is known
            tags = [t.tag for t in node.types if isinstance(t, mi.StructType)]
            field = next((t.tag_field for t in node.types if isinstance(t, mi.StructType)), None)
            if segment == field:
                return node, mi.LiteralType(tuple(tags)), value.get(segment, _MISSING) if isinstance(value, dict) else _MISSING
            return node, None, _MISSING
        if isinstance(node, mi.StructType):
            if node.tag_field and segment == node.tag_field:
                return node, None, value.get(segment, _MISSING) if isinstance(value, dict) else _MISSING
            found = next((f for f in node.fields if f.encode_name == segment), None)
            node = found.type if found else None
            value = value.get(segment, _MISSING) if isinstance(value, dict) else _MISSING
        elif isinstance(node, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
            node = node.item_type
            value = value[int(segment)] if isinstance(value, (list, tuple)) and segment.isdigit() and int(segment) < len(value) else _MISSING
        elif isinstance(node, mi.TupleType):
            index = int(segment) if segment.isdigit() else -1
            node = node.item_types[index] if 0 <= index < len(node.item_types) else None
            value = value[index] if isinstance(value, (list, tuple)) and 0 <= index < len(value) else _MISSING
        elif isinstance(node, mi.DictType):
            node = node.value_type
            value = _MISSING
        else:
            return parent, None, _MISSING
    return parent, node, value


def _allowed(node: Any) -> List[Any]:
    node = _unwrap(node, _MISSING) if node is not None else None
    if isinstance(node, mi.LiteralType):
        return list(node.values)
    if isinstance(node, mi.EnumType):
        return [m.value for m in node.cls]
    if isinstance(node, mi.UnionType):
        values: List[Any] = []
        for option in node.types:
            if isinstance(option, mi.StructType) and option.tag is not None:
                values.append(option.tag)
            else:
                values += _allowed(option)
        return values
    return []


def _show(values: List[Any]) -> str:
    return ", ".join(str(v.value if isinstance(v, enum.Enum) else v) for v in values)


def _join(root: str, segments: List[str]) -> str:
    out = root
    for segment in segments:
        if segment.isdigit():
            out += f"[{segment}]"
        elif segment == "...":
            out += "[...]"
        else:
            out += f".{segment}" if out else segment
    return out


def explain(model_type: Any, data: Any, raw: str, root: str = "") -> str:
    """msgspec's validation message -> `key.path: what is wrong, got <value> (allowed: ...)`."""
    match = _AT.match(raw)
    text = match.group("text") if match else raw
    segments = _segments(match.group("path") or "") if match else []
    try:
        parent, node, value = _walk(model_type, data, segments)
    except Exception:  # explaining must never hide the error itself
        parent, node, value = None, None, _MISSING
    struct = _unwrap(node, value) if node is not None else None
    unknown = re.match(r"Object contains unknown field `(.+)`$", text)
    missing = re.match(r"Object missing required field `(.+)`$", text)
    if unknown:
        known = [f.encode_name for f in struct.fields] if isinstance(struct, mi.StructType) else []
        if isinstance(struct, mi.StructType) and struct.tag_field:
            known.insert(0, struct.tag_field)
        return f"{_join(root, [*segments, unknown.group(1)])}: unknown key" + (f" (known: {', '.join(known)})" if known else "")
    if missing:
        name = missing.group(1)
        sub_parent, sub_node, _ = _walk(model_type, data, [*segments, name])
        allowed = _allowed(sub_node) or (_allowed(sub_parent) if isinstance(sub_parent, mi.UnionType) else [])
        return f"{_join(root, [*segments, name])}: required" + (f" (one of {_show(allowed)})" if allowed else "")
    if text.startswith("Invalid enum value") or text.startswith("Invalid value"):
        allowed = _allowed(node) or _allowed(parent)
        got = text.split(" ", 3)[-1] if text.startswith("Invalid enum value") else text.split(" ", 2)[-1]
        return f"{_join(root, segments)}: one of {_show(allowed)}, got {got}" if allowed else f"{_join(root, segments)}: {text}"
    if text.startswith("Expected "):
        what = text[len("Expected ") :].replace("`", "")
        shown = f" {value!r}" if value is not _MISSING and not isinstance(value, (dict, list)) else ""
        if ", got " in what:
            expected, got = what.split(", got ", 1)
            message = f"expected {expected}, got {got}{shown}"
        else:
            message = f"expected {what}, got{shown}" if shown else f"expected {what}"
        allowed = _allowed(node)
        if allowed:
            message += f" (one of {_show(allowed)})"
        return f"{_join(root, segments) or root or 'document'}: {message}"
    # a check of our own (__post_init__): a leading 'field: ' is a key under the path
    own = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*): (.*)$", text, re.DOTALL)
    if own and isinstance(struct, mi.StructType) and own.group(1) in {f.encode_name for f in struct.fields}:
        return f"{_join(root, [*segments, own.group(1)])}{own.group(2)}: {own.group(3)}"
    where = _join(root, segments)
    return f"{where}: {text}" if where else text
