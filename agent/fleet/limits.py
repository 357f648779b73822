"""Brokers with a packet size limit (`broker.max_payload`): AWS IoT Core takes 128 KB, Azure IoT Hub 256 KB,
mosquitto's `max_packet_size` whatever its operator set. A broker disconnects a client that sends more, so every
message is made to fit before it leaves:

- artifact blocks: `fleet publish` sizes them from the limit (`block_size_for`);
- JSON documents (status, results, replies, events, telemetry): `fit_json` trims the largest parts (halving
  lists, dropping the biggest values) and says so under `trimmed`, keeping the envelope and identifiers;
- documents that must arrive whole (the rollout state): `split` into retained parts and `join` them again;
- anything else (a snapshot JPEG) that does not fit is refused with a clear reason instead of being sent.

0 means no limit beyond MQTT's own (256 MB).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Optional, Tuple

PACKET_OVERHEAD = 64  # fixed header, topic length, packet id, MQTT 5 properties (response topic aside)
BLOCK_HEADER_BYTES = 88  # agent/fleet/artifacts.py BLOCK_HEADER.size
KEEP = frozenset({"schema", "kind", "ts", "device", "online", "state", "job_id", "type", "event", "deployment_id", "artifact_id",
                  "digest", "reason", "source", "frame", "compact", "trimmed", "parts", "sha256"})


def packet_size(topic: str, payload: bytes, extra: int = 0) -> int:
    """An upper bound of the MQTT PUBLISH packet carrying `payload` on `topic` (`extra`: property bytes)."""
    return len(payload) + len(topic.encode("utf-8")) + PACKET_OVERHEAD + extra


def fits(topic: str, payload: bytes, max_payload: int, extra: int = 0) -> bool:
    return not max_payload or packet_size(topic, payload, extra) <= max_payload


def payload_budget(topic: str, max_payload: int, extra: int = 0) -> int:
    """The largest payload that fits on `topic` (a very large number without a limit)."""
    if not max_payload:
        return 1 << 28
    return max_payload - len(topic.encode("utf-8")) - PACKET_OVERHEAD - extra


def block_size_for(max_payload: int, wanted: int, *, topic_bytes: int = 160) -> int:
    """The artifact block size to publish with: `wanted`, or less so that one block frame (header + block) on
    the longest device data topic fits the broker; a multiple of 1 KiB."""
    if not max_payload:
        return wanted
    room = max_payload - BLOCK_HEADER_BYTES - PACKET_OVERHEAD - topic_bytes
    size = min(wanted, (room // 1024) * 1024)
    if size < 1024:
        raise ValueError(f"broker.max_payload {max_payload} leaves no room for a 1 KiB artifact block")
    return size


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")


def _largest(doc: Dict[str, Any], path: Tuple[str, ...] = ()) -> Optional[Tuple[Tuple[str, ...], int]]:
    """The path of the part worth trimming first: the largest value outside KEEP, descending into an object
    while one child holds most of it."""
    best: Optional[Tuple[str, int]] = None
    for key, value in doc.items():
        if key in KEEP or value is None:
            continue
        size = len(_dumps(value))
        if best is None or size > best[1]:
            best = (key, size)
    if best is None:
        return None
    key, size = best
    child = doc[key]
    if isinstance(child, dict) and child:
        inner = _largest(child, (*path, key))
        if inner is not None and inner[1] * 2 >= size:
            return inner
    return (*path, key), size


def fit_json(payload: bytes, budget: int) -> Optional[bytes]:
    """`payload` (a JSON object) trimmed to at most `budget` bytes, with `trimmed: {note, fields}` saying what
    went; None if it is not a JSON object or cannot be made to fit."""
    if len(payload) <= budget:
        return payload
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    notes: List[str] = []
    for _ in range(400):
        doc["trimmed"] = {"note": f"trimmed to fit broker.max_payload (a payload of at most {budget} bytes here)", "fields": notes}
        encoded = _dumps(doc)
        if len(encoded) <= budget:
            return encoded
        found = _largest({k: v for k, v in doc.items() if k != "trimmed"})
        if found is None:
            break
        path, size = found
        parent: Dict[str, Any] = doc
        for key in path[:-1]:
            parent = parent[key]
        value = parent[path[-1]]
        dotted = ".".join(path)
        if isinstance(value, list) and len(value) > 1:
            keep = len(value) // 2
            parent[path[-1]] = value[:keep]
            notes[:] = [n for n in notes if not n.startswith(dotted + ":")] + [f"{dotted}: {keep} items kept"]
        elif isinstance(value, str) and len(value) > 64:
            parent[path[-1]] = value[: len(value) // 2] + "..."
            notes[:] = [n for n in notes if not n.startswith(dotted + ":")] + [f"{dotted}: shortened"]
        else:
            parent[path[-1]] = None
            notes.append(f"{dotted}: removed ({size} bytes)")
        if len(notes) > 20:
            del notes[:-20]
    return None


# whole documents in parts ---------------------------------------------------------------------------------
PARTS_KIND = "parts"


def split(topic: str, payload: bytes, max_payload: int) -> List[Tuple[str, bytes]]:
    """[(topic, payload)] to publish (retained) for a document: itself if it fits, else parts on
    `<topic>/part/<i>` and, last, a header on `<topic>` naming how many and the whole's sha256."""
    if fits(topic, payload, max_payload):
        return [(topic, payload)]
    size = payload_budget(f"{topic}/part/99999", max_payload)
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
    header = _dumps({"kind": PARTS_KIND, "parts": len(chunks), "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()})
    return [(f"{topic}/part/{i}", chunk) for i, chunk in enumerate(chunks)] + [(topic, header)]


def parts_header(payload: bytes) -> Optional[Dict[str, Any]]:
    if not payload.startswith(b'{"kind":"parts"'):
        return None
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("parts"), int) else None


def join(header: Dict[str, Any], parts: Dict[int, bytes]) -> Optional[bytes]:
    """The whole document once every part named by the header is there and the hash matches; else None."""
    count = int(header.get("parts", 0))
    if any(i not in parts for i in range(count)):
        return None
    whole = b"".join(parts[i] for i in range(count))
    return whole if hashlib.sha256(whole).hexdigest() == header.get("sha256") else None
