"""The declarative schema: loading, load-time validation and the packaged default.

A schema is rejected as a whole, with every problem listed (its JSON path and a message):
first its shape (:data:`meta.META_SCHEMA`), then what a shape cannot say
(:func:`checks.check_all`). Nothing partially valid is ever used.

Usage::

    schema = load_file("schema.json")     # raises InvalidConfig listing every problem
    problems = problems_of(parse_text(text))
"""

from __future__ import annotations

import copy
import json
import os
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

from ..errors import InvalidConfig
from .checks import check_all
from .meta import META_SCHEMA

_META = Draft202012Validator(META_SCHEMA)


class _Duplicates(list[str]):
    pass


def _pairs_hook(duplicates: _Duplicates) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    return hook


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def parse_text(text: str | bytes) -> dict[str, Any]:
    """Parse schema JSON; malformed JSON and duplicate keys are problems too."""
    duplicates = _Duplicates()
    try:
        value = json.loads(
            text, object_pairs_hook=_pairs_hook(duplicates), parse_constant=_not_json
        )
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise InvalidConfig([{"path": "$", "message": f"not valid JSON: {why}"}]) from err
    if duplicates:
        raise InvalidConfig(
            [{"path": "$", "message": f"duplicate key {k!r}"} for k in sorted(set(duplicates))]
        )
    if not isinstance(value, dict):
        raise InvalidConfig([{"path": "$", "message": "a schema is a JSON object"}])
    return value


def _json_path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


MAX_DEPTH = 100


def _too_deep(value: Any) -> str | None:
    """The JSON path of the first value nested more than ``MAX_DEPTH`` levels deep, or
    None. Iterative: the checks that follow recurse, and must not run out of stack."""
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while pending:
        node, path = pending.pop()
        if len(path) > MAX_DEPTH:
            return _json_path(path)
        if isinstance(node, dict):
            pending.extend((v, (*path, k)) for k, v in node.items())
        elif isinstance(node, list):
            pending.extend((v, (*path, i)) for i, v in enumerate(node))
    return None


def problems_of(schema: Any) -> list[dict[str, str]]:
    """Every problem of ``schema``; an empty list means it is valid."""
    deep = _too_deep(schema)
    if deep is not None:
        return [{"path": deep, "message": f"nested more than {MAX_DEPTH} levels deep"}]
    try:
        json.dumps(schema, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return [{"path": "$", "message": "holds a lone surrogate (\\ud800-\\udfff): not text"}]
    except (TypeError, ValueError, RecursionError) as err:
        return [{"path": "$", "message": f"not JSON data: {err}"}]
    shape = [
        {"path": _json_path(e.absolute_path), "message": e.message}
        for e in sorted(_META.iter_errors(schema), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if not shape:
        return list(check_all(schema))
    if not isinstance(schema, dict):
        return shape
    return shape + [p for p in check_all(schema, shape_ok=False) if p not in shape]


def validate(schema: Any) -> dict[str, Any]:
    """Return ``schema`` if valid, else raise InvalidConfig with every problem."""
    problems = problems_of(schema)
    if problems:
        raise InvalidConfig(problems)
    return schema


def default_schema() -> dict[str, Any]:
    """A fresh copy of the packaged default schema."""
    return copy.deepcopy(_DEFAULT)


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read, parse and validate a schema file."""
    with open(path, "rb") as fh:
        return validate(parse_text(fh.read()))


_DEFAULT = parse_text(resources.files(__package__).joinpath("default.json").read_bytes())
