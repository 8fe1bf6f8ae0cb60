"""What the templates of a pipeline render to, as far as a schema alone tells.

The checker follows the variables a pipeline defines: ``parse.query`` gives an object
whose members have the types (and, for whole numbers, the bounds) of its parameters,
``time.now_iso8601`` a string, a scan a page ``{items, next_cursor}``, and so on. A
template's shape is then known when it is a literal, text with placeholders (always a
string), or a reference into such a variable; it is unknown (``None``) for anything read
from a document or a request body, which the ops check when they run.

An argument whose template can only render what its op refuses (a page size of ``"x"``,
an index row whose ``variant`` may be null) is refused at load, rather than answering
500 to every request that reaches it.

Usage::

    shapes = {"query": out_shape("parse.query", {"params": {...}})}
    problem = expectation_problem("index.scan", "limit", "$query.limit", shapes)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..pipeline.templates import reference

PAGE_MAX = 1000


@dataclass(frozen=True)
class Shape:
    """The JSON types a value may have; an integer's bounds and an object's members when
    they are known."""

    types: frozenset[str]
    lo: int | None = None
    hi: int | None = None
    members: Mapping[str, Shape | None] = field(default_factory=dict)
    closed: bool = False  # an object that has no members but ``members``

    def or_null(self) -> Shape:
        return replace(self, types=self.types | {"null"})


def _of(*types: str, **extra: Any) -> Shape:
    return Shape(frozenset(types), **extra)


NULL = _of("null")
STRING = _of("string")
_PAGE = _of(
    "object",
    members={"items": _of("array"), "next_cursor": _of("string", "null")},
    closed=True,
)
_JSON_TYPES = {type(None): "null", bool: "boolean", int: "integer", float: "number"}
_JSON_TYPES |= {str: "string", list: "array", dict: "object"}


def literal_shape(value: Any) -> Shape:
    """The shape of a literal JSON value."""
    kind = _JSON_TYPES.get(type(value), "null")
    if kind == "integer":
        return _of(kind, lo=value, hi=value)
    if kind == "object":
        return _of(kind, members={k: literal_shape(v) for k, v in value.items()}, closed=True)
    return _of(kind)


def template_shape(value: Any, shapes: Mapping[str, Shape | None]) -> Shape | None:
    """What ``value``, a template of an op's arguments, renders to; None when unknown.

    ``shapes`` maps each variable defined so far to its shape (None: unknown)."""
    if isinstance(value, str):
        ref = reference(value)
        return _ref_shape(*ref, shapes) if ref else STRING
    if isinstance(value, list):
        return _of("array")
    if isinstance(value, dict):
        members = {k: template_shape(v, shapes) for k, v in value.items()}
        return _of("object", members=members, closed=True)
    return literal_shape(value)


def _ref_shape(
    name: str, steps: tuple[str | int, ...], shapes: Mapping[str, Shape | None]
) -> Shape | None:
    shape = shapes.get(name)
    for step in steps:
        if shape is None or isinstance(step, int) or shape.types - {"object", "null"}:
            return None
        if step not in shape.members:  # a member an object lacks reads as null
            return NULL if shape.closed else None
        inner = shape.members[step]
        if inner is None:
            return None
        shape = inner.or_null() if "null" in shape.types else inner  # a member of null
    return shape


def _query_shape(spec: Any) -> Shape | None:
    """A ``parse.query`` parameter's value: its default when the query leaves it out."""
    if not isinstance(spec, dict):
        return None
    kind, default = spec.get("type", "string"), spec.get("default")
    if kind == "int":
        lo, hi = spec.get("min"), spec.get("max")
        if any(v is not None and type(v) is not int for v in (lo, hi, default)):
            return None  # reported with the parameter
        if default is not None:
            lo = None if lo is None else min(lo, default)
            hi = None if hi is None else max(hi, default)
        shape = _of("integer", lo=lo, hi=hi)
    else:
        shape = _of("boolean" if kind == "bool" else "string")
    return shape if default is not None else shape.or_null()


def union(a: Shape | None, b: Shape | None) -> Shape | None:
    """A value that has shape ``a`` or shape ``b``."""
    if a is None or b is None:
        return None
    lo = None if a.lo is None or b.lo is None else min(a.lo, b.lo)
    hi = None if a.hi is None or b.hi is None else max(a.hi, b.hi)
    return Shape(a.types | b.types, lo=lo, hi=hi)


def out_shape(op: str, args: dict[str, Any]) -> Shape | None:
    """The shape of the variable that ``op`` writes (``out``); None when unknown."""
    if op == "parse.query" and isinstance(args.get("params"), dict):
        params = args["params"].items()
        return _of("object", members={k: _query_shape(v) for k, v in params}, closed=True)
    if op in ("time.now_iso8601", "string.format"):
        return STRING
    if op in ("kv.scan", "index.scan", "index.groups"):
        return _PAGE
    if op == "kv.delete_where":
        return _of("array")
    return None


# What an op's argument must render to, where the op cannot take anything else:
# (op, argument) -> (JSON types allowed, what to say).
_OBJECT = (frozenset({"object"}), "must be an object or a $reference to one")
_CURSOR = (frozenset({"string", "null"}), "must be a cursor: text, or a $reference to one")
_PAGE_SIZE = (
    frozenset({"integer"}),
    f"must be a whole number from 1 to {PAGE_MAX}, or a $reference to an int query "
    f"parameter with a default, a min of at least 1 and a max of at most {PAGE_MAX}",
)
_TEXT_OR_NULL = (frozenset({"string", "null"}), "must be text, null, or a $reference to one")
EXPECTED: dict[tuple[str, str], tuple[frozenset[str], str]] = {
    ("kv.put", "value"): _OBJECT,
    ("kv.cas_put", "value"): _OBJECT,
    ("index.put", "row"): _OBJECT,
    ("index.delete", "row"): _OBJECT,
    ("emit.event", "payload"): _OBJECT,
    ("emit.event", "for_each"): (frozenset({"array"}), "must be a $reference to a list"),
    ("index.latest", "variant"): _TEXT_OR_NULL,
    ("index.latest", "prerelease"): (
        frozenset({"boolean", "null"}),
        "must be true, false, or a $reference to a bool query parameter",
    ),
    ("index.groups", "name_prefix"): _TEXT_OR_NULL,
    ("respond.json", "paginate"): (
        frozenset({"object"}),
        "must be a $reference to a page of a scan, whose next_cursor makes the Link header",
    ),
    **{(scan, "limit"): _PAGE_SIZE for scan in ("kv.scan", "index.scan", "index.groups")},
    **{(scan, "cursor"): _CURSOR for scan in ("kv.scan", "index.scan", "index.groups")},
}
INDEX_KEY_PART = (frozenset({"string"}), "must be text: it is part of the index's keys")


def shape_problem(
    expected: tuple[frozenset[str], str], shape: Shape | None, *, page_size: bool = False
) -> str | None:
    """What to say when ``shape`` may render something ``expected`` does not allow."""
    allowed, why = expected
    if shape is None:
        return None
    if not shape.types <= allowed:
        return f"{why}; it renders {_describe(shape.types)}"
    if page_size and not (
        shape.lo is not None and shape.lo >= 1 and shape.hi is not None and shape.hi <= PAGE_MAX
    ):
        return f"{why}; it may be outside 1 to {PAGE_MAX}"
    return None


def _describe(types: frozenset[str]) -> str:
    return " or ".join(sorted(types))
