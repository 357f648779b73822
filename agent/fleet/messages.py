"""Message envelopes: every payload is a JSON object with a `schema` version field.

`decode` checks what every message shares (size, JSON, object, schema, kind); each document is then a Struct
that subclasses `Envelope` (which holds the keys `encode` adds), parsed with `agent.models.parse`.

Decoding is strict and never raises anything but MessageError, whose text says what is wrong, so a
malformed message from the network becomes a clear REJECTED reply or a log line, never a traceback.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Mapping, Optional

from agent.errors import AgentError
from agent.models import FrozenModel

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
ENVELOPE_KEYS = frozenset({"schema", "kind", "ts"})  # what `encode` adds to every body


class MessageError(AgentError):
    """A payload is not valid JSON, not an object, or lacks or mistypes a field."""


def encode(kind: str, body: Mapping[str, Any], *, ts: Optional[float] = None) -> bytes:
    """Serialize a message: {'schema': 1, 'kind': kind, 'ts': epoch seconds, ...body}."""
    message: Dict[str, Any] = {"schema": SCHEMA_VERSION, "kind": kind, "ts": round(time.time() if ts is None else ts, 3)}
    message.update(body)
    return json.dumps(message, separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")


def decode(payload: bytes, expected_kind: Optional[str] = None) -> Dict[str, Any]:
    """Parse a payload into a dict, checking size, JSON, object-ness, schema and (optionally) kind."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise MessageError("payload is not UTF-8 text") from None
    except ValueError as exc:
        raise MessageError(f"payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise MessageError("payload nests too deeply") from None
    if not isinstance(data, dict):
        raise MessageError(f"payload must be a JSON object, got {type(data).__name__}")
    schema = data.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise MessageError(f"'schema' must be an integer, got {schema!r}")
    if schema > SCHEMA_VERSION:
        raise MessageError(f"schema {schema} is newer than this agent understands ({SCHEMA_VERSION}); upgrade the agent")
    if expected_kind is not None and data.get("kind", expected_kind) != expected_kind:
        raise MessageError(f"expected a '{expected_kind}' message, got kind {data.get('kind')!r}")
    return data


class Envelope(FrozenModel, frozen=True, kw_only=True):
    """The keys `encode` adds to every body (`decode` has checked `schema` and `kind`); a message's Struct
    subclasses it and adds its own fields."""

    schema: int = SCHEMA_VERSION
    kind: str = ""
    ts: float = 0.0  # the sender's clock (informational)
