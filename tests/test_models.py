"""agent.models.parse: one validated model per document, errors that name the key path and the allowed values."""

from __future__ import annotations

from typing import List, Literal, Optional, Union

import msgspec
import pytest

from agent.errors import ConfigError, UsageError
from agent.models import Annotated, FrozenModel, Meta, Model, dump, parse


class Box(FrozenModel, frozen=True, kw_only=True, tag_field="type", tag="box"):
    side: Annotated[int, Meta(ge=1)] = 1


class Ring(FrozenModel, frozen=True, kw_only=True, tag_field="type", tag="ring"):
    radius: float = 1.0


class Doc(Model, kw_only=True):
    name: str
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    mode: Literal["fast", "safe"] = "safe"
    tags: List[str] = msgspec.field(default_factory=list)
    shape: Optional[Union[Box, Ring]] = None

    def __post_init__(self) -> None:
        if self.mode == "fast" and self.shape is None:
            raise ValueError("shape: a fast document needs a shape")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "n", "port": "x"}, "doc.port: expected int, got str 'x'"),
        ({"name": "n", "port": 70000}, "doc.port: expected int <= 65535, got 70000"),
        ({"name": "n", "mode": "turbo"}, "doc.mode: one of fast, safe, got 'turbo'"),
        ({"name": "n", "colour": 1}, "doc.colour: unknown key (known: name, port, mode, tags, shape)"),
        ({"port": 1}, "doc.name: required"),
        ({"name": "n", "tags": ["a", 2]}, "doc.tags[1]: expected str, got int 2"),
        ({"name": "n", "shape": {"type": "cube"}}, "doc.shape.type: one of box, ring, got 'cube'"),
        ({"name": "n", "shape": {"side": 2}}, "doc.shape.type: required (one of box, ring)"),
        ({"name": "n", "shape": {"type": "box", "side": 0}}, "doc.shape.side: expected int >= 1, got 0"),
        ({"name": "n", "shape": {"type": "ring", "side": 1}}, "doc.shape.side: unknown key (known: type, radius)"),
        ({"name": "n", "mode": "fast"}, "doc.shape: a fast document needs a shape"),
        ([1], "doc: expected object, got array"),
    ],
)
def test_errors_name_the_key_path_and_the_allowed_values(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(Doc, data, root="doc")
    assert str(exc.value) == message


def test_error_type_and_origin_are_the_callers() -> None:
    with pytest.raises(UsageError, match=r"^port: expected int, got str 'x' \(in agent\.toml\)$"):
        parse(Doc, {"name": "n", "port": "x"}, error=UsageError, origin="in agent.toml")


def test_strings_convert_only_when_not_strict() -> None:
    with pytest.raises(ConfigError):
        parse(Doc, {"name": "n", "port": "80"})
    assert parse(Doc, {"name": "n", "port": "80"}, strict=False).port == 80


def test_dump_gives_plain_data_with_the_tag() -> None:
    doc = parse(Doc, {"name": "n", "mode": "fast", "shape": {"type": "box", "side": 3}})
    assert isinstance(doc.shape, Box)
    assert dump(doc) == {"name": "n", "port": 1883, "mode": "fast", "tags": [], "shape": {"type": "box", "side": 3}}
