"""Ops that read and check the request: scopes, path, query, JSON body, identifiers."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from werkzeug.wrappers import Request

from ..entities import is_unicode_text
from ..errors import Forbidden, InvalidRequest, PayloadTooLarge, Unauthorized, ValidationError
from ..storage.events import now_iso8601
from .context import RequestContext
from .registry import Arg, Runner, op
from .runtime import Runtime, compile_fields
from .templates import compile_string, compile_value

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_MAX_DIGITS = 19  # 2**63 - 1, the largest bound any parameter has, has 19 digits


def flag(raw: str) -> bool | None:
    """``raw`` as a query flag: ``true``/``1``/``yes`` or ``false``/``0``/``no``, in any
    case; None for anything else."""
    low = raw.lower()
    return True if low in _TRUE else False if low in _FALSE else None


def whole_number(raw: str) -> int | None:
    """``raw`` as a non-negative int if it is 1 to 19 ASCII digits, else None.

    ``str.isdigit`` alone also accepts other scripts' digits and superscripts (which
    ``int`` then refuses or reads), and ``int`` refuses over 4300 digits.
    """
    if raw.isascii() and raw.isdigit() and len(raw) <= _MAX_DIGITS:
        return int(raw)
    return None


@op("auth.require_scopes", scopes=Arg("strings", required=True))
def _require_scopes(args: dict[str, Any], rt: Runtime) -> Runner:
    needed = frozenset(args["scopes"])

    def run(ctx: RequestContext) -> None:
        principal = ctx.principal
        if not principal:
            raise Unauthorized()
        held = set(principal.get("scopes") or ())
        for scope in list(held):
            held |= rt.scope_implies.get(scope, set())
        missing = sorted(needed - held)
        if missing:
            raise Forbidden(
                f"this operation needs the scope {', '.join(missing)}",
                details={"required": sorted(needed)},
            )

    return run


@op("parse.path")
def _parse_path(args: dict[str, Any], rt: Runtime) -> Runner:
    def run(ctx: RequestContext) -> None:
        ctx.fields.update(ctx.url_values)

    return run


def _query_param(name: str, spec: dict[str, Any], rt: Runtime) -> Any:
    kind = spec.get("type", "string")
    default = spec.get("default")

    def bad(why: str) -> ValidationError:
        return ValidationError(f"query parameter {name} {why}", details={"field": name})

    if kind == "int":
        lo, hi = spec.get("min"), spec.get("max")

        def conv(raw: str) -> Any:
            value = whole_number(raw)
            if value is None:
                raise bad("must be a whole number")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise bad(f"must be between {lo} and {hi}")
            return value

    elif kind == "bool":

        def conv(raw: str) -> Any:
            value = flag(raw)
            if value is None:
                raise bad("must be true or false")
            return value

    elif kind == "cursor":

        def conv(raw: str) -> Any:
            if len(raw) > 2048 or not (raw.isascii() and raw.isprintable()):
                raise bad("is not a valid cursor")
            return raw

    elif kind in ("string", "prefix"):
        entity = rt.entities[spec["entity"]] if "entity" in spec else None
        field = spec.get("field", name)

        def conv(raw: str) -> Any:
            if entity is None:
                if not raw.isascii() or not raw.isprintable() or len(raw) > 256:
                    raise bad("must be printable ASCII")
                return raw
            value = entity.normalize(field, raw, label=name)
            if kind == "string":
                entity.validate(field, value, label=name)
            return value

    else:  # the validator only lets the kinds above through
        raise ValueError(f"unknown query parameter type {kind}")
    return conv, default


@op("parse.query", params=Arg("object", required=True), out=Arg("var", required=True))
def _parse_query(args: dict[str, Any], rt: Runtime) -> Runner:
    params = {name: _query_param(name, spec, rt) for name, spec in args["params"].items()}
    out = args["out"]

    def run(ctx: RequestContext) -> None:
        query = ctx.request.args
        values = {}
        for name, (conv, default) in params.items():
            raw = query.get(name)
            values[name] = default if raw is None or raw == "" else conv(raw)
        ctx.set(out, values)

    return run


def read_body(request: Request, limit: int, what: str = "JSON bodies") -> bytes:
    """The whole request body, at most ``limit`` bytes (PAYLOAD_TOO_LARGE beyond, early
    from Content-Length), however few bytes each read of the stream returns."""
    too_large = PayloadTooLarge(f"{what} are limited to {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    parts, size = [], 0
    while size <= limit:
        chunk = request.stream.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    if size > limit:
        raise too_large
    return b"".join(parts)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return not value.isascii() and not is_unicode_text(value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _lone_surrogate_in(value: Any) -> bool:
    try:
        return _has_lone_surrogate(value)
    except RecursionError:  # nested nearly as deep as the decoder goes: refuse it too
        return True


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        raise _DuplicateKey(f"duplicate key {next(k for k, n in counts.items() if n > 1)!r}")
    return value


def parse_json_body(raw: bytes) -> Any:
    """Decode a JSON body; INVALID_REQUEST when it is not JSON (RFC 8259: no ``NaN`` or
    ``Infinity``), nests too deeply to decode, repeats a key in an object (parsers disagree
    on which one counts), or escapes a lone surrogate (``\\ud800``, which is no character
    and cannot be stored or hashed). JSON bodies are UTF-8 (RFC 8259): ``json.loads``
    would take UTF-16 and UTF-32 too, past the surrogate check below."""
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark may be ignored (RFC 8259)
    except UnicodeDecodeError as err:
        raise InvalidRequest("the request body is not valid JSON: not UTF-8") from err
    try:
        value = json.loads(text, parse_constant=_not_json, object_pairs_hook=_unique_keys)
    except _DuplicateKey as err:
        raise InvalidRequest(f"the request body is not valid JSON: {err}") from err
    except (ValueError, RecursionError) as err:
        raise InvalidRequest("the request body is not valid JSON") from err
    # Only an escape can make one: UTF-8 text never decodes to a surrogate.
    if (b"\\ud" in raw or b"\\uD" in raw) and _lone_surrogate_in(value):
        raise InvalidRequest("the request body is not valid JSON: a lone surrogate")
    return value


@op("parse.json", out=Arg("var", required=True), reads_body=True)
def _parse_json(args: dict[str, Any], rt: Runtime) -> Runner:
    limit = rt.limits["max_json_bytes"]
    out = args["out"]

    def run(ctx: RequestContext) -> None:
        ctx.set(out, parse_json_body(read_body(ctx.request, limit)))

    return run


@op(
    "normalize.entity",
    entity=Arg("name", required=True, ref="entity"),
    fields=Arg("fields", required=True),
    source=Arg("value"),
)
def _normalize(args: dict[str, Any], rt: Runtime) -> Runner:
    entity = rt.entities[args["entity"]]
    pairs = compile_fields(args["fields"])
    source = compile_value(args["source"]) if "source" in args else None

    def run(ctx: RequestContext) -> None:
        src = source.render(ctx) if source is not None else ctx.fields
        if not isinstance(src, dict):
            raise ValidationError("expected a JSON object")
        for target, field in pairs:
            raw = src.get(target)
            if raw is None:
                raise ValidationError(f"{target} is required", details={"field": target})
            ctx.fields[target] = entity.normalize(field, raw, label=target)

    return run


@op(
    "validate.entity",
    entity=Arg("name", required=True, ref="entity"),
    fields=Arg("fields", required=True),
)
def _validate(args: dict[str, Any], rt: Runtime) -> Runner:
    entity = rt.entities[args["entity"]]
    pairs = compile_fields(args["fields"])

    def run(ctx: RequestContext) -> None:
        for target, field in pairs:
            entity.validate(field, ctx.fields.get(target), label=target)

    return run


@op(
    "validate.json_schema",
    value=Arg("value", required=True),
    schema=Arg("name", required=True, ref="json_schema"),
)
def _json_schema(args: dict[str, Any], rt: Runtime) -> Runner:
    validator = rt.json_schemas[args["schema"]]
    value = compile_value(args["value"])

    def run(ctx: RequestContext) -> None:
        try:
            errors = sorted(validator.iter_errors(value.render(ctx)), key=lambda e: list(e.path))
        except (RecursionError, OverflowError) as err:  # a body nested too deep, a huge number
            raise InvalidRequest(
                "the request body cannot be checked: too deep or too large"
            ) from err
        if errors:
            problems = [
                {"path": "/" + "/".join(str(p) for p in e.path), "message": e.message}
                for e in errors[:20]
            ]
            raise ValidationError(
                f"the request body is not valid: {problems[0]['message']}",
                details={"problems": problems},
            )

    return run


@op("time.now_iso8601", out=Arg("var", required=True))
def _now(args: dict[str, Any], rt: Runtime) -> Runner:
    out = args["out"]
    return lambda ctx: ctx.set(out, now_iso8601())


@op("string.format", template=Arg("value", required=True), out=Arg("var", required=True))
def _format(args: dict[str, Any], rt: Runtime) -> Runner:
    template = args["template"]
    if not isinstance(template, str):
        raise ValueError("string.format takes a string template")
    compiled = compile_string(template)
    out = args["out"]
    return lambda ctx: ctx.set(out, compiled.render(ctx))
