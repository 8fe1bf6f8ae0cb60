"""Semantic checks of a schema that already has the right shape.

Every check appends to one list of problems (JSON path and message) rather than stopping
at the first, so an integrator sees everything that is wrong with a schema at once.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError as JsonSchemaError
from referencing.jsonschema import DRAFT202012
from werkzeug.routing import Map, Rule

from ..pipeline.registry import OPS, PENDING, REFS, OpSpec
from ..pipeline.runtime import CACHE_DEFAULTS, rule_path
from ..pipeline.templates import (
    Template,
    TemplateError,
    compile_condition,
    compile_value,
    reference,
)
from ..storage.blobs import BlobStore
from .shapes import (
    EXPECTED,
    INDEX_KEY_PART,
    Shape,
    literal_shape,
    out_shape,
    shape_problem,
    template_shape,
    union,
)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
BUILTIN_VARS = frozenset({"features", "schema", "principal"})


class Problems(list[dict[str, str]]):
    """The problems found so far."""

    def add(self, path: str, message: str) -> None:
        self.append({"path": path, "message": message})


def check_all(schema: dict[str, Any], *, shape_ok: bool = True) -> Problems:
    """Every semantic problem of ``schema``.

    The checks read the schema as the meta-schema shapes it. With ``shape_ok=False``
    (the shape has problems of its own) each check still runs, and one that trips over
    a part with the wrong shape stops there: that part's shape problem is already
    listed, and the problems of the well-formed parts are found all the same.
    """
    problems = Problems()
    for check in _CHECKS:
        try:
            check(schema, problems)
        except Exception as err:  # a value of a type no check foresaw
            if shape_ok:
                problems.add("$", f"cannot be checked ({check.__name__[7:]}): {err!r}")
    return problems


def _check_entities(schema: dict[str, Any], problems: Problems) -> None:
    for name, entity in schema["entities"].items():
        for fname, spec in entity["fields"].items():
            try:
                re.compile(spec["pattern"])
            except (re.error, OverflowError, RecursionError) as err:
                problems.add(f"$.entities.{name}.fields.{fname}.pattern", f"bad regex: {err}")
        for i, key in enumerate(entity.get("primary_key", [])):
            if key not in entity["fields"]:
                problems.add(f"$.entities.{name}.primary_key[{i}]", f"unknown field {key!r}")
        versioning = entity.get("versioning")
        if versioning and versioning["field"] not in entity["fields"]:
            problems.add(
                f"$.entities.{name}.versioning.field", f"unknown field {versioning['field']!r}"
            )


def _check_caching(schema: dict[str, Any], problems: Problems) -> None:
    caching = {**CACHE_DEFAULTS, **schema.get("caching", {})}
    if caching["max_entry_bytes"] > caching["max_bytes"]:
        problems.add("$.caching.max_entry_bytes", "must not exceed max_bytes")
    ttl = caching["default_ttl_seconds"]
    if not (isinstance(ttl, float) and math.isfinite(ttl)) and not (
        isinstance(ttl, int) and ttl < 2**53
    ):
        problems.add("$.caching.default_ttl_seconds", "must be a finite number of seconds")


def _check_storage(schema: dict[str, Any], problems: Problems) -> None:
    storage = schema["storage"]
    for name, store in storage["blob_stores"].items():
        path = f"$.storage.blob_stores.{name}"
        root = PurePosixPath(store["root"])
        if "\x00" in store["root"]:
            problems.add(f"{path}.root", "a path cannot hold a NUL character")
        elif not root.is_absolute() and ".." in root.parts:
            problems.add(f"{path}.root", "a relative root must stay inside the data directory")
        try:
            BlobStore.parse_template(store["path_template"])
        except ValueError as err:
            problems.add(f"{path}.path_template", str(err))
        low, high = store.get("min_blob_bytes", 0), store.get("max_blob_bytes")
        if high is not None and low > high:
            problems.add(f"{path}.min_blob_bytes", "min_blob_bytes exceeds max_blob_bytes")
    if len(storage["kv_stores"]) == 0:
        problems.add("$.storage.kv_stores", "at least one KV store is needed")
    entities = schema["entities"]
    for name, doc in storage["documents"].items():
        path = f"$.storage.documents.{name}"
        if doc["store"] not in storage["kv_stores"]:
            problems.add(f"{path}.store", f"unknown KV store {doc['store']!r}")
        fields = _IDENT.findall(" ".join(_PLACEHOLDER.findall(doc["key"])))
        if not fields:
            problems.add(f"{path}.key", "a key template needs at least one {field}")
        if not doc["key"].isascii():
            problems.add(f"{path}.key", "must be ASCII (keys are stored as ASCII)")
        entity = doc.get("entity")
        if entity is not None:
            if entity not in entities:
                problems.add(f"{path}.entity", f"unknown entity {entity!r}")
            else:
                for f in fields:
                    if f not in entities[entity]["fields"]:
                        problems.add(f"{path}.key", f"{{{f}}} is not a field of {entity}")


def _check_indexes(schema: dict[str, Any], problems: Problems) -> None:
    seen: set[str] = set()
    for i, index in enumerate(schema.get("indexes", [])):
        path = f"$.indexes[{i}]"
        if index["name"] in seen:
            problems.add(f"{path}.name", f"duplicate index name {index['name']!r}")
        seen.add(index["name"])
        entity = schema["entities"].get(index["entity"])
        if entity is None:
            problems.add(f"{path}.entity", f"unknown entity {index['entity']!r}")
            continue
        if "versioning" not in entity:
            problems.add(f"{path}.entity", "a versions index needs an entity with versioning")
        elif index.get("version_field", "version") != entity["versioning"]["field"]:
            problems.add(f"{path}.version_field", "must be the entity's versioning field")
        doc = index.get("document")
        if doc is not None and doc not in schema["storage"]["documents"]:
            problems.add(f"{path}.document", f"unknown document {doc!r}")
        for j, f in enumerate([*index["group_by"], index.get("variant_field", "variant")]):
            if f not in entity["fields"]:
                where = f"group_by[{j}]" if j < len(index["group_by"]) else "variant_field"
                problems.add(f"{path}.{where}", f"unknown field {f!r} of {index['entity']}")


def _check_auth(schema: dict[str, Any], problems: Problems) -> None:
    auth = schema.get("auth", {})
    scopes = set(auth.get("scopes", []))
    for scope, implied in auth.get("implies", {}).items():
        for s in [scope, *implied]:
            if s not in scopes:
                problems.add(f"$.auth.implies.{scope}", f"unknown scope {s!r}")
        if scope != "admin" and "admin" in implied:
            problems.add(f"$.auth.implies.{scope}", "no scope implies admin: grant admin itself")


def _check_validation(schema: dict[str, Any], problems: Problems) -> None:
    for name, js in schema.get("validation", {}).get("json_schemas", {}).items():
        try:
            Draft202012Validator.check_schema(js)
            validator = Draft202012Validator(js)
            _check_refs(js, validator)
            samples: tuple[Any, ...] = (None, {}, [], "", 0)
            for sample in samples:  # a $ref cycle fails on any of them
                for _ in validator.iter_errors(sample):
                    pass
        except JsonSchemaError as err:
            problems.add(f"$.validation.json_schemas.{name}", f"not a valid JSON Schema: {err}")
        except RecursionError:
            problems.add(
                f"$.validation.json_schemas.{name}",
                "nested too deeply, or its $refs go round in a circle",
            )
        except _Unresolvable as err:
            problems.add(f"$.validation.json_schemas.{name}", f"unresolvable $ref {err}")
        except Exception as err:  # referencing errors, a $dynamicRef to no anchor, ...
            problems.add(f"$.validation.json_schemas.{name}", f"cannot be evaluated: {err!r}")


class _Unresolvable(Exception):
    """A ``$ref`` of a JSON Schema that leads nowhere."""


def _check_refs(root: Any, validator: Draft202012Validator) -> None:
    """Raise _Unresolvable for the first reference of a JSON Schema that would fail (or
    crash) every validation that reaches it: a ``$ref`` that is not local (``#...``),
    leads nowhere or to something that is not a schema; a ``$dynamicRef`` or
    ``$recursiveRef``. Only schema positions are walked (not ``const``, ``enum``, ...),
    and the schemas that refs lead to as well; the refs of an embedded resource (a
    subschema with an ``$id``) are resolved against it."""
    resolver = getattr(validator, "_resolver", None)  # jsonschema >= 4.18
    if resolver is None:
        return
    seen: set[int] = set()
    pending = [(root, resolver)]
    while pending:
        node, resolver = pending.pop()
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        for keyword in ("$dynamicRef", "$recursiveRef"):
            if keyword in node:
                raise _Unresolvable(f"{keyword} {node[keyword]!r}: not supported, use $ref")
        if node is not root and "$id" in node:
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        ref = node.get("$ref")
        if ref is not None:
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise _Unresolvable(f"{ref!r}: only local $refs (#...) are resolved here")
            try:
                resolved = resolver.lookup(ref)
            except Exception as err:  # referencing's Unresolvable and its kin
                raise _Unresolvable(repr(ref)) from err
            if not isinstance(resolved.contents, dict | bool):
                raise _Unresolvable(f"{ref!r}: leads to a value that is not a schema")
            pending.append((resolved.contents, resolved.resolver))
        pending.extend((sub, resolver) for sub in DRAFT202012.subresources_of(node))


def _unknown_op(name: str) -> str:
    if name in PENDING:
        return PENDING[name]
    return f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}"


def _check_ops_allowed(schema: dict[str, Any], problems: Problems) -> None:
    for i, name in enumerate(schema["ops"]["allowed"]):
        if name not in OPS:
            problems.add(f"$.ops.allowed[{i}]", _unknown_op(name))


def _check_features(schema: dict[str, Any], problems: Problems) -> None:
    features = schema.get("features", {})
    if features.get("proxy_enabled") and not schema.get("upstreams"):
        problems.add("$.features.proxy_enabled", "proxy_enabled needs at least one upstream")


def _check_upstreams(schema: dict[str, Any], problems: Problems) -> None:
    # The schema is readable by everyone who may read (GET /schema): no secrets in it.
    for name, upstream in schema.get("upstreams", {}).items():
        try:
            parts = urlsplit(upstream["url"])
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            parts, port_ok = None, False
        if parts is None or not parts.hostname or not port_ok:
            problems.add(f"$.upstreams.{name}.url", "not an http(s) URL with a host")
        elif "@" in parts.netloc:
            problems.add(
                f"$.upstreams.{name}.url",
                "holds credentials, which anyone who can read the schema would see: name "
                "an environment variable holding a token in token_env instead",
            )


def _ref_exists(schema: dict[str, Any], ref: str, name: str) -> bool:
    node: Any = schema
    for part in REFS[ref]:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, list):
        return name in node
    if isinstance(node, dict) and ref == "index":
        return False
    return isinstance(node, dict) and name in node


def _index_spec(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in schema.get("indexes", []) if s["name"] == name)


def _index_names(schema: dict[str, Any]) -> set[str]:
    return {index["name"] for index in schema.get("indexes", [])}


def _check_routes(schema: dict[str, Any], problems: Problems) -> None:
    ids: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    rules = []
    failure: Exception | None = None
    # What the built-in variables hold, known from the schema itself: once, for every route.
    builtins: dict[str, Shape | None] = {
        "features": literal_shape(schema.get("features", {})),
        "schema": literal_shape(schema),
    }
    for i, route in enumerate(schema["routes"]):
        try:
            path = f"$.routes[{i}]"
            if route["id"] in ids:
                problems.add(f"{path}.id", f"duplicate route id {route['id']!r}")
            ids.add(route["id"])
            pair = (route["method"], route["path"])
            if pair in pairs:
                problems.add(f"{path}.path", f"duplicate route {route['method']} {route['path']}")
            pairs.add(pair)
            params = _PLACEHOLDER.findall(route["path"])
            bad = [p for p in params if not _IDENT.fullmatch(p)]
            if bad or len(set(params)) != len(params):
                problems.add(f"{path}.path", "path placeholders must be unique {identifiers}")
                continue
            rules.append(
                Rule(rule_path(route["path"]), endpoint=route["id"], methods=[route["method"]])
            )
            _check_pipeline(schema, route, set(params), path, problems, builtins)
        except Exception as err:  # a malformed route: check the others all the same
            failure = failure or err
    try:
        Map(rules)
    except ValueError as err:
        problems.add("$.routes", f"routes cannot be mapped: {err}")
    if failure is not None:
        raise failure  # check_all reports it, or not when the shape is at fault


def _templates(spec: OpSpec, args: dict[str, Any]) -> Iterable[tuple[str, Template]]:
    for name, arg in spec.args.items():
        if name not in args:
            continue
        value = args[name]
        if arg.kind in ("value", "text", "headers", "ref"):
            yield name, compile_value(value)
        elif arg.kind == "object" and name in ("fields", "conflict"):
            yield name, compile_value(value)
        elif arg.kind == "strings" and name in ("group", "parent"):
            yield name, compile_value(value)


def _check_arg(kind: str, value: Any) -> str | None:
    ok = {
        "name": isinstance(value, str) and bool(value),
        "var": isinstance(value, str) and bool(_IDENT.fullmatch(value)),
        "varref": isinstance(value, str)
        and value.startswith("$")
        and bool(_IDENT.fullmatch(value[1:])),
        "ref": _is_ref(value),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "fields": (isinstance(value, list) and all(isinstance(v, str) for v in value))
        or (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())),
        "object": isinstance(value, dict),
        "value": True,
        "text": isinstance(value, str)
        and not _is_ref(value)
        and "\r" not in value
        and "\n" not in value,
        "status": isinstance(value, int) and not isinstance(value, bool) and 200 <= value <= 599,
        "headers": isinstance(value, dict)
        and all(
            isinstance(k, str)
            and _HEADER_NAME.fullmatch(k) is not None
            and k.lower() not in _SERVER_HEADERS
            and isinstance(v, str)
            and not _is_ref(v)
            and _HEADER_VALUE.fullmatch(v) is not None
            for k, v in value.items()
        ),
    }[kind]
    return None if ok else _KIND_NEEDS[kind]


def _is_ref(value: Any) -> bool:
    """Whether ``value`` is a whole ``$variable`` reference, as templates read one
    (``$var.a``, ``$rows[0].version``): it renders the value, whatever its type."""
    return isinstance(value, str) and reference(value) is not None


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers that frame the message or belong to one connection: the server writes them.
_SERVER_HEADERS = frozenset(
    {
        "connection",
        "content-encoding",
        "content-length",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")  # printable ASCII: no line breaks
_KIND_NEEDS = {
    "name": "must be a non-empty name",
    "var": "must be a variable name",
    "varref": "must be a $variable reference",
    "ref": "must be a $reference such as $page",
    "bool": "must be true or false",
    "int": "must be an integer",
    "strings": "must be a list of strings",
    "fields": "must be a list of field names or an object of them",
    "object": "must be an object",
    "text": "must be text: a template such as '{name}-{version}', not a $reference, "
    "without line breaks",
    "status": "must be an HTTP status code from 200 to 599",
    "headers": "must be an object of header names to printable ASCII text (templates, "
    "not $references); Connection, Content-Length, Content-Encoding, Transfer-Encoding "
    "and the other hop-by-hop headers are the server's",
    "value": "",
}


# The checker follows one path through a pipeline: these ops must be on every path.
_NEVER_CONDITIONAL = frozenset(
    {"txn.begin", "txn.commit", "txn.abort", "blob.put", "blob.verify_digest"}
)


def _check_pipeline(
    schema: dict[str, Any],
    route: dict[str, Any],
    params: set[str],
    path: str,
    problems: Problems,
    builtins: dict[str, Shape | None],
) -> None:
    allowed = set(schema["ops"]["allowed"])
    limit = schema["ops"]["limits"]["max_pipeline_ops"]
    pipeline = route["pipeline"]
    if len(pipeline) > limit:
        problems.add(f"{path}.pipeline", f"{len(pipeline)} ops exceed max_pipeline_ops={limit}")
    defined_vars = set(BUILTIN_VARS)
    shapes = dict(builtins)  # what each variable holds, when that is known
    defined_fields: set[str] = set()
    in_txn = False
    staged = False  # a write is staged in the open transaction
    unverified: dict[str, str] = {}  # blob var -> where it was put
    unstored: dict[str, str] = {}  # blob var -> where it was verified (txn.commit stores it)
    ended = False
    documents = schema["storage"]["documents"]
    for j, step in enumerate(pipeline):
        where = f"{path}.pipeline[{j}]"
        name = step["op"]
        if ended:
            problems.add(where, "unreachable: an earlier op always responds")
            break
        if name not in allowed:
            problems.add(f"{where}.op", f"op {name!r} is not in ops.allowed")
        spec = OPS.get(name)
        if spec is None:
            problems.add(f"{where}.op", _unknown_op(name))
            continue
        args = {k: v for k, v in step.items() if k not in ("op", "when")}
        if "when" in step and name in _NEVER_CONDITIONAL:
            problems.add(
                f"{where}.when",
                f"{name} cannot be conditional: the checks of a pipeline's transaction and "
                "blobs must hold on every path",
            )
        arg_ok = True
        for key in args:
            if key not in spec.args:
                problems.add(
                    f"{where}.{key}",
                    f"unknown argument of {name}; known: {', '.join(sorted(spec.args)) or 'none'}",
                )
                arg_ok = False
        for key, arg in spec.args.items():
            if key not in args:
                if arg.required:
                    problems.add(where, f"{name} needs the argument {key!r}")
                    arg_ok = False
                continue
            why = _check_arg(arg.kind, args[key])
            if why:
                problems.add(f"{where}.{key}", why)
                arg_ok = False
            elif arg.ref == "index" and args[key] not in _index_names(schema):
                problems.add(f"{where}.{key}", f"unknown index {args[key]!r}")
                arg_ok = False
            elif arg.ref and arg.ref != "index" and not _ref_exists(schema, arg.ref, args[key]):
                problems.add(
                    f"{where}.{key}", f"unknown {arg.ref.replace('_', ' ')} {args[key]!r}"
                )
                arg_ok = False
        reads_vars: set[str] = set()
        reads_fields: set[str] = set()
        try:
            if "when" in step:
                cond = compile_condition(step["when"])
                reads_vars |= cond.vars
                reads_fields |= cond.fields
            for _, t in _templates(spec, args):
                reads_vars |= t.vars
                reads_fields |= t.fields
        except TemplateError as err:
            problems.add(where, f"bad template or condition: {err}")
        if arg_ok and "document" in args and args["document"] in documents:
            key_fields = _IDENT.findall(
                " ".join(_PLACEHOLDER.findall(documents[args["document"]]["key"]))
            )
            if name in ("kv.scan", "kv.delete_where"):
                key_fields = key_fields[: len(args.get("fields", []))]
                if args.get("fields") != key_fields:
                    problems.add(f"{where}.fields", "must be the leading fields of the key")
            raw_fields = args.get("fields")
            overrides: dict[str, Any] = raw_fields if isinstance(raw_fields, dict) else {}
            reads_fields |= {f for f in key_fields if f not in overrides}
        if name.startswith("index."):
            texts = [*args.get("group", []), *args.get("parent", [])]
            texts += [args[k] for k in ("name_prefix", "variant") if k in args]
            if any(isinstance(t, str) and not t.isascii() for t in texts):
                problems.add(
                    where, "index keys are ASCII: group, parent, name_prefix and variant too"
                )
        if arg_ok and name in ("index.latest", "index.scan", "index.groups"):
            depth = len(_index_spec(schema, args["index"])["group_by"])
            if name == "index.groups" and len(args["parent"]) >= depth:
                problems.add(f"{where}.parent", "must be shorter than the index's group_by")
            elif name != "index.groups" and len(args["group"]) != depth:
                problems.add(
                    f"{where}.group", "must give one value per field of the index's group_by"
                )
        if name == "parse.query" and arg_ok:
            for pname, pspec in args["params"].items():
                why = _query_param_problem(schema, pname, pspec)
                if why:
                    problems.add(f"{where}.params.{pname}", why)
        if name in ("index.put", "index.delete") and arg_ok and isinstance(args["row"], dict):
            index = _index_spec(schema, args["index"])
            needed = [
                *index["group_by"],
                index.get("version_field", "version"),
                index.get("variant_field", "variant"),
            ]
            missing = [f for f in needed if f not in args["row"]]
            if missing:
                problems.add(f"{where}.row", f"needs the index's fields {missing}")
            for f in needed:
                shape = template_shape(args["row"].get(f, ""), shapes)
                why = shape_problem(INDEX_KEY_PART, shape)
                if why:
                    problems.add(f"{where}.row.{f}", why)
        if (
            name == "cache.put"
            and "ttl" in args
            and not (isinstance(args["ttl"], int) and 0 < args["ttl"] < 2**31)
        ):
            problems.add(f"{where}.ttl", "must be a number of seconds from 1 to 2147483647")
        for key, value in args.items():
            expected = EXPECTED.get((name, key))
            why = expected and shape_problem(
                expected, template_shape(value, shapes), page_size=key == "limit"
            )
            if why:
                problems.add(f"{where}.{key}", why)
        for key in ("fields", "conflict"):
            member = args.get(key)
            if isinstance(member, dict) and not all(
                isinstance(v, str) for k, v in member.items() if k != "compare"
            ):
                problems.add(f"{where}.{key}", "its members must be strings (templates)")
        conflict = args.get("conflict")
        if isinstance(conflict, dict) and not isinstance(conflict.get("compare", ""), str):
            problems.add(f"{where}.conflict.compare", "must be the name of a field")
        if name == "kv.delete_where" and not (
            isinstance(args.get("where"), dict) and args["where"]
        ):
            problems.add(f"{where}.where", "must be a non-empty object of field: value")
        if name == "blob.verify_digest" and isinstance(args.get("blob"), str):
            reads_vars.add(args["blob"].lstrip("$"))
            unverified.pop(args["blob"].lstrip("$"), None)
            unstored[args["blob"].lstrip("$")] = where
        if name in ("validate.entity", "normalize.entity") and arg_ok:
            known = schema["entities"][args["entity"]]["fields"]
            for _, f in _pairs(args["fields"]):
                if f not in known:
                    problems.add(
                        f"{where}.fields", f"entity {args['entity']!r} has no field {f!r}"
                    )
        if name == "validate.entity" and arg_ok:
            reads_fields |= {t for t, _ in _pairs(args["fields"])}
        if name == "normalize.entity" and arg_ok and "source" not in args:
            reads_fields |= {t for t, _ in _pairs(args["fields"])}
        if name == "emit.event" and "for_each" in args:
            item = args.get("as", "item")
            if not isinstance(item, str) or not _IDENT.fullmatch(item):
                problems.add(f"{where}.as", "must be a variable name")
                item = "item"
            reads_vars.discard(item)  # bound to each element in turn, for the payload
            with contextlib.suppress(TemplateError):  # reported above
                reads_vars |= compile_value(args["for_each"]).vars  # the list: not the item
            if item in defined_vars:
                problems.add(
                    f"{where}.as", f"${item} is already a variable; name the element anew"
                )
        for v in sorted(reads_vars - defined_vars):
            problems.add(where, f"${v} is read before it is defined")
        for f in sorted(reads_fields - defined_fields):
            problems.add(where, f"field {{{f}}} is read before it is defined")
        # effects of the op
        if name == "parse.path":
            defined_fields |= params
        if name == "normalize.entity" and arg_ok:
            defined_fields |= {t for t, _ in _pairs(args["fields"])}
        if isinstance(args.get("out"), str):
            out = args["out"]
            if out in unverified or out in unstored:
                problems.add(f"{where}.out", f"overwrites ${out}, a blob not yet stored")
            shape = out_shape(name, args)
            if "when" in step:
                # Skipped, the op leaves the variable as it was. Unset, it would read as
                # null, but only where a condition that the checker does not follow may
                # hold: the shape is left unknown rather than refuse a sound pipeline.
                shape = union(shape, shapes.get(out)) if out in defined_vars else None
            shapes[out] = shape
            defined_vars.add(out)
        if name == "blob.put" and isinstance(args.get("out"), str):
            unverified[args["out"]] = where
        if name == "txn.begin":
            if in_txn:
                problems.add(where, "txn.begin inside an open transaction")
            if unverified:
                problems.add(
                    where,
                    "a blob.put must be followed by blob.verify_digest before the transaction",
                )
            in_txn, staged = True, False
        elif name in ("txn.commit", "txn.abort"):
            if not in_txn:
                problems.add(where, f"{name} without txn.begin")
            in_txn = False
            if name == "txn.commit":
                unstored.clear()
        elif spec.kv_write and not in_txn:
            problems.add(where, f"{name} writes and must be inside txn.begin ... txn.commit")
        elif spec.kv_write:
            staged = True
        if spec.terminal and in_txn and name != "respond.error" and ("when" not in step or staged):
            # The open transaction would be discarded, its writes with it, unseen.
            problems.add(where, "responds while a transaction is still open")
        if spec.terminal and "when" not in step:
            ended = True
            for var in unverified:
                problems.add(unverified[var], "blob.put is never followed by blob.verify_digest")
            unverified.clear()
            for var in unstored:
                problems.add(
                    unstored[var],
                    "blob.verify_digest is never followed by txn.commit, which stores the blob",
                )
            unstored.clear()
    if not ended:
        problems.add(f"{path}.pipeline", "the pipeline must end with an unconditional respond op")


_QUERY_TYPES = ("string", "prefix", "int", "bool", "cursor")


def _query_param_problem(schema: dict[str, Any], name: str, spec: Any) -> str | None:
    """What is wrong with the parameter ``name`` of ``parse.query``, if anything."""
    if not isinstance(spec, dict):
        return 'must be an object such as {"type": "int", "default": 100}'
    kind = spec.get("type", "string")
    if kind not in _QUERY_TYPES:
        return f"type must be one of {list(_QUERY_TYPES)}"
    default = spec.get("default")
    if kind == "int":
        lo, hi = spec.get("min"), spec.get("max")
        if any(
            v is not None and (type(v) is not int or abs(v) >= 2**63) for v in (lo, hi, default)
        ):
            return "min, max and default must be whole numbers"
        if lo is not None and hi is not None and lo > hi:
            return "min exceeds max"
        if default is not None and (
            lo is not None and default < lo or hi is not None and default > hi
        ):
            return "the default must lie between min and max"
    elif kind == "bool":
        if default is not None and not isinstance(default, bool):
            return "the default must be true or false"
    elif default is not None and not isinstance(default, str):
        return "the default must be a string"
    if kind in ("string", "prefix") and "entity" in spec:
        entity = (
            schema["entities"].get(spec["entity"]) if isinstance(spec["entity"], str) else None
        )
        if entity is None:
            return f"unknown entity {spec['entity']!r}"
        field = spec.get("field", name)
        if not isinstance(field, str) or field not in entity["fields"]:
            return f"entity {spec['entity']!r} has no field {field!r}"
        pattern = entity["fields"][field].get("pattern")
        if (
            kind == "string"
            and isinstance(default, str)
            and isinstance(pattern, str)
            and not re.fullmatch(pattern, default)
        ):
            return f"the default {default!r} is not a valid {field}"
    if (
        kind == "prefix"
        and isinstance(default, str)
        and not (default.isascii() and default.isprintable())
    ):
        return "the default must be printable ASCII"
    return None


def _pairs(fields: Any) -> list[tuple[str, str]]:
    if isinstance(fields, list):
        return [(f, f) for f in fields]
    return list(fields.items())


def _check_invariants(schema: dict[str, Any], problems: Problems) -> None:
    ids: set[str] = set()
    for i, inv in enumerate(schema.get("invariants", [])):
        path = f"$.invariants[{i}]"
        if inv["id"] in ids:
            problems.add(f"{path}.id", f"duplicate invariant id {inv['id']!r}")
        ids.add(inv["id"])
        kind = inv["kind"]
        if kind == "write_once":
            _write_once(schema, inv, path, problems)
        elif kind == "events_for_writes":
            for r, route in enumerate(schema["routes"]):
                ops = [s["op"] for s in route["pipeline"]]
                if "txn.commit" in ops and "emit.event" not in ops:
                    problems.add(
                        f"$.routes[{r}]", f"invariant {inv['id']}: a write that emits no event"
                    )
        elif kind == "scoped_routes":
            for r, route in enumerate(schema["routes"]):
                first = route["pipeline"][0]["op"] if route["pipeline"] else None
                if not route.get("public") and first != "auth.require_scopes":
                    problems.add(
                        f"$.routes[{r}].pipeline[0]",
                        f"invariant {inv['id']}: the "
                        "first op must be auth.require_scopes (or mark the route public)",
                    )


def _write_once(
    schema: dict[str, Any], inv: dict[str, Any], path: str, problems: Problems
) -> None:
    doc = inv.get("document")
    if doc not in schema["storage"]["documents"]:
        problems.add(f"{path}.document", f"unknown document {doc!r}")
        return
    feature = inv.get("unless_feature")
    if feature is not None and feature not in schema.get("features", {}):
        problems.add(f"{path}.unless_feature", f"unknown feature {feature!r}")
    for r, route in enumerate(schema["routes"]):
        for j, step in enumerate(route["pipeline"]):
            if step.get("document") != doc:
                continue
            where = f"$.routes[{r}].pipeline[{j}]"
            if step["op"] == "kv.put":
                problems.add(where, f"invariant {inv['id']}: {doc} is write-once; use kv.cas_put")
            elif step["op"] == "kv.cas_put" and (
                step.get("if_absent", True) is not True or step.get("unless_feature") != feature
            ):
                problems.add(
                    where,
                    f"invariant {inv['id']}: {doc} must be written if_absent"
                    + (f" unless {feature}" if feature else ""),
                )


_CHECKS = (
    _check_entities,
    _check_storage,
    _check_indexes,
    _check_auth,
    _check_caching,
    _check_validation,
    _check_ops_allowed,
    _check_features,
    _check_upstreams,
    _check_routes,
    _check_invariants,
)
