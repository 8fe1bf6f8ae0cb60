"""Ops on the repository's state: transactions, documents, indexes, cache and events."""

from __future__ import annotations

from typing import Any

from ..errors import GoodrepoError, InvalidRequest, PayloadTooLarge, StoreError, error_for
from ..storage.index import scan_page
from ..storage.kv import dumps, loads
from .context import RequestContext
from .registry import Arg, Runner, op
from .runtime import Runtime, compile_overrides
from .templates import Template, compile_string, compile_value


def _txn(ctx: RequestContext, name: str) -> Any:
    if ctx.txn is None or ctx.txn.done:
        raise StoreError(f"{name} needs an open transaction")
    return ctx.txn


# -- transactions ---------------------------------------------------------------------


@op("txn.begin")
def _begin(args: dict[str, Any], rt: Runtime) -> Runner:
    def run(ctx: RequestContext) -> None:
        if ctx.txn is not None and not ctx.txn.done:
            raise StoreError("a transaction is already open")
        ctx.txn = rt.kv.transaction()

    return run


@op("txn.commit")
def _commit(args: dict[str, Any], rt: Runtime) -> Runner:
    def run(ctx: RequestContext) -> None:
        txn = _txn(ctx, "txn.commit")
        # Verified blobs first, durably in place, so no committed document names a blob
        # that a crash could take back.
        blobs, ctx.verified = ctx.verified, []
        for staged in blobs:
            staged.commit()
        txn.commit()
        for staged in blobs:
            ctx.count("blob_bytes_in", staged.size)

    return run


@op("txn.abort")
def _abort(args: dict[str, Any], rt: Runtime) -> Runner:
    def run(ctx: RequestContext) -> None:
        if ctx.txn is not None:
            ctx.txn.abort()

    return run


# -- documents ------------------------------------------------------------------------

_DOC = Arg("name", required=True, ref="document")


def _value_limit(rt: Runtime, value: Any) -> bytes:
    raw = dumps(value)
    if len(raw) > rt.limits["max_kv_value_bytes"]:
        raise PayloadTooLarge(
            f"the document is larger than {rt.limits['max_kv_value_bytes']} bytes"
        )
    return raw


@op("kv.get", document=_DOC, fields=Arg("object"), out=Arg("var", required=True))
def _kv_get(args: dict[str, Any], rt: Runtime) -> Runner:
    doc = rt.documents[args["document"]]
    overrides = compile_overrides(args.get("fields"))
    out = args["out"]

    def run(ctx: RequestContext) -> None:
        key = doc.key(ctx, overrides)
        if ctx.txn is not None and not ctx.txn.done:
            ctx.set(out, ctx.txn.get_json(key, lock=True))
        else:
            ctx.set(out, rt.kv.get_json(key))

    return run


@op(
    "kv.put",
    kv_write=True,
    document=_DOC,
    fields=Arg("object"),
    value=Arg("value", required=True),
    out=Arg("var"),
)
def _kv_put(args: dict[str, Any], rt: Runtime) -> Runner:
    doc = rt.documents[args["document"]]
    overrides = compile_overrides(args.get("fields"))
    value = compile_value(args["value"])
    out = args.get("out")

    def run(ctx: RequestContext) -> None:
        txn = _txn(ctx, "kv.put")
        rendered = value.render(ctx)
        txn.put(doc.key(ctx, overrides), _value_limit(rt, rendered))
        if out:
            ctx.set(out, rendered)

    return run


@op(
    "kv.cas_put",
    kv_write=True,
    document=_DOC,
    fields=Arg("object"),
    value=Arg("value", required=True),
    if_absent=Arg("bool"),
    unless_feature=Arg("name", ref="feature"),
    conflict=Arg("object"),
    out=Arg("var"),
)
def _kv_cas_put(args: dict[str, Any], rt: Runtime) -> Runner:
    doc = rt.documents[args["document"]]
    overrides = compile_overrides(args.get("fields"))
    value = compile_value(args["value"])
    if_absent = args.get("if_absent", True)
    unless = args.get("unless_feature")
    conflict = args.get("conflict") or {}
    code = conflict.get("code", "ALREADY_EXISTS")
    message = compile_string(conflict.get("message", "the record already exists"))
    compare = conflict.get("compare")
    out = args.get("out")

    def run(ctx: RequestContext) -> None:
        txn = _txn(ctx, "kv.cas_put")
        rendered = value.render(ctx)
        raw = _value_limit(rt, rendered)
        only_new = if_absent and not (unless and rt.features.get(unless))
        existing = txn.cas_put(doc.key(ctx, overrides), raw, if_absent=only_new)
        if existing is not None and only_new:
            details = None
            if compare:
                details = {
                    compare: existing.get(compare),
                    "identical": existing.get(compare) == rendered.get(compare),
                }
            raise error_for(code, 409, message.render(ctx), details)
        if out:
            ctx.set(out, rendered)

    return run


@op("kv.delete", kv_write=True, document=_DOC, fields=Arg("object"))
def _kv_delete(args: dict[str, Any], rt: Runtime) -> Runner:
    doc = rt.documents[args["document"]]
    overrides = compile_overrides(args.get("fields"))

    def run(ctx: RequestContext) -> None:
        _txn(ctx, "kv.delete").delete(doc.key(ctx, overrides))

    return run


@op(
    "kv.scan",
    document=_DOC,
    fields=Arg("strings", required=True),
    limit=Arg("value", required=True),
    cursor=Arg("value"),
    out=Arg("var", required=True),
)
def _kv_scan(args: dict[str, Any], rt: Runtime) -> Runner:
    doc = rt.documents[args["document"]]
    depth = len(args["fields"])
    if doc.fields[:depth] != list(args["fields"]):
        raise ValueError("kv.scan fields must be the leading fields of the document key")
    limit = compile_value(args["limit"])
    cursor = compile_value(args.get("cursor"))
    out = args["out"]

    def run(ctx: RequestContext) -> None:
        prefix = doc.key(ctx, upto=depth)
        size, after = _page(ctx, limit, cursor)
        rows, nxt = scan_page(rt.kv, prefix, limit=size, cursor=after)
        ctx.set(out, {"items": [value for _, value in rows], "next_cursor": nxt})

    return run


@op(
    "kv.delete_where",
    kv_write=True,
    document=_DOC,
    fields=Arg("strings", required=True),
    where=Arg("value", required=True),
    out=Arg("var"),
)
def _kv_delete_where(args: dict[str, Any], rt: Runtime) -> Runner:
    doc = rt.documents[args["document"]]
    depth = len(args["fields"])
    if doc.fields[:depth] != list(args["fields"]):
        raise ValueError("kv.delete_where fields must be the leading fields of the document key")
    if not isinstance(args["where"], dict) or not args["where"]:
        raise ValueError("kv.delete_where where must be a non-empty object")
    where = compile_value(args["where"])
    out = args.get("out")

    def run(ctx: RequestContext) -> None:
        txn = _txn(ctx, "kv.delete_where")
        wanted = where.render(ctx).items()

        def matches(document: Any) -> bool:
            return isinstance(document, dict) and all(document.get(k) == v for k, v in wanted)

        candidates = [
            key for key, raw in rt.kv.scan(doc.key(ctx, upto=depth)) if matches(loads(raw))
        ]
        deleted = []
        for key in candidates:
            # Read again under the key's lock: a concurrent write may have changed it since.
            current = txn.get_json(key, lock=True)
            if matches(current):
                txn.delete(key)
                deleted.append(current)
        if out:
            ctx.set(out, deleted)

    return run


# -- indexes --------------------------------------------------------------------------

_INDEX = Arg("name", required=True, ref="index")


def _page(ctx: RequestContext, limit: Template, cursor: Template) -> tuple[int, str | None]:
    """The page size and cursor of a listing, as the schema's templates render them; a
    schema fault (not the client's) when they are not a size and a cursor."""
    size, after = limit.render(ctx), cursor.render(ctx)
    if type(size) is not int or not 1 <= size < 2**31:
        raise GoodrepoError("the route's page size is not a whole number (a schema fault)")
    if after is not None and not isinstance(after, str):
        raise GoodrepoError("the route's cursor is not text (a schema fault)")
    return size, after


def _group(args: dict[str, Any], key: str) -> list[Template]:
    return [compile_string(v) for v in args.get(key, [])]


@op("index.put", kv_write=True, index=_INDEX, row=Arg("value", required=True))
def _index_put(args: dict[str, Any], rt: Runtime) -> Runner:
    index = rt.indexes[args["index"]]
    row = compile_value(args["row"])

    def run(ctx: RequestContext) -> None:
        index.put(_txn(ctx, "index.put"), row.render(ctx))

    return run


@op("index.delete", kv_write=True, index=_INDEX, row=Arg("value", required=True))
def _index_delete(args: dict[str, Any], rt: Runtime) -> Runner:
    index = rt.indexes[args["index"]]
    row = compile_value(args["row"])

    def run(ctx: RequestContext) -> None:
        index.delete(_txn(ctx, "index.delete"), row.render(ctx))

    return run


@op(
    "index.latest",
    index=_INDEX,
    group=Arg("strings", required=True),
    prerelease=Arg("value"),
    variant=Arg("value"),
    out=Arg("var", required=True),
)
def _index_latest(args: dict[str, Any], rt: Runtime) -> Runner:
    index = rt.indexes[args["index"]]
    group = _group(args, "group")
    prerelease = compile_value(args.get("prerelease", False))
    variant = compile_value(args.get("variant"))
    out = args["out"]

    def run(ctx: RequestContext) -> None:
        row = index.latest(
            [g.render(ctx) for g in group],
            prerelease=bool(prerelease.render(ctx)),
            variant=variant.render(ctx) or None,
        )
        ctx.set(out, row)

    return run


@op(
    "index.scan",
    index=_INDEX,
    group=Arg("strings", required=True),
    limit=Arg("value", required=True),
    cursor=Arg("value"),
    out=Arg("var", required=True),
)
def _index_scan(args: dict[str, Any], rt: Runtime) -> Runner:
    index = rt.indexes[args["index"]]
    group = _group(args, "group")
    limit = compile_value(args["limit"])
    cursor = compile_value(args.get("cursor"))
    out = args["out"]
    keep = ("version", "variant", "blob_digest", "blob_size", "created_at")

    def run(ctx: RequestContext) -> None:
        size, after = _page(ctx, limit, cursor)
        rows, nxt = index.versions([g.render(ctx) for g in group], limit=size, cursor=after)
        items = [{k: row.get(k) for k in keep} for row in rows]
        ctx.set(out, {"items": items, "next_cursor": nxt})

    return run


@op(
    "index.groups",
    index=_INDEX,
    parent=Arg("strings", required=True),
    name_prefix=Arg("value"),
    limit=Arg("value", required=True),
    cursor=Arg("value"),
    with_latest=Arg("bool"),
    out=Arg("var", required=True),
)
def _index_groups(args: dict[str, Any], rt: Runtime) -> Runner:
    index = rt.indexes[args["index"]]
    parent = _group(args, "parent")
    if len(parent) >= len(index.group_by):
        raise ValueError("index.groups parent must be shorter than the index's group_by")
    name_prefix = compile_value(args.get("name_prefix"))
    limit = compile_value(args["limit"])
    cursor = compile_value(args.get("cursor"))
    with_latest = bool(args.get("with_latest")) and len(parent) == len(index.group_by) - 1
    out = args["out"]

    def run(ctx: RequestContext) -> None:
        values = [p.render(ctx) for p in parent]
        size, after = _page(ctx, limit, cursor)
        groups, nxt = index.groups(
            values, limit=size, cursor=after, name_prefix=name_prefix.render(ctx) or ""
        )
        items: list[Any]
        if with_latest:
            items = []
            for name, count in groups:
                group = [*values, name]
                row = index.latest(group) or index.latest(group, prerelease=True)
                items.append(
                    {
                        "name": name,
                        "latest": row[index.version_field] if row else None,
                        "versions_count": count,
                    }
                )
        else:
            items = [name for name, _ in groups]
        ctx.set(out, {"items": items, "next_cursor": nxt})

    return run


# -- cache ----------------------------------------------------------------------------


@op("cache.get", key=Arg("text", required=True), out=Arg("var", required=True))
def _cache_get(args: dict[str, Any], rt: Runtime) -> Runner:
    key = compile_value(args["key"])
    out = args["out"]

    def run(ctx: RequestContext) -> None:
        cache = rt.cache
        if cache is None:
            return
        k = key.render(ctx)
        hit, value, token = cache.get(k)
        if hit:
            ctx.cache_hits.add(k)
            ctx.set(out, value)
            ctx.count("response_cache_hits")
        else:
            ctx.cache_tokens[k] = (cache, token)

    return run


@op(
    "cache.put",
    key=Arg("text", required=True),
    value=Arg("value", required=True),
    ttl=Arg("int"),
)
def _cache_put(args: dict[str, Any], rt: Runtime) -> Runner:
    key = compile_value(args["key"])
    value = compile_value(args["value"])
    ttl = args.get("ttl")

    def run(ctx: RequestContext) -> None:
        cache = rt.cache
        k = key.render(ctx)
        seen = ctx.cache_tokens.get(k)
        # Only what this request read after a miss, from the cache that is still current.
        if cache is None or seen is None or seen[0] is not cache or k in ctx.cache_hits:
            return
        v = value.render(ctx)
        if v is not None:
            cache.put(k, v, ttl=ttl, token=seen[1])

    return run


@op("cache.invalidate", prefix=Arg("text", required=True))
def _cache_invalidate(args: dict[str, Any], rt: Runtime) -> Runner:
    prefix = compile_value(args["prefix"])

    def run(ctx: RequestContext) -> None:
        cache = rt.cache
        if cache is not None:
            cache.invalidate_prefix(prefix.render(ctx))

    return run


# -- events ---------------------------------------------------------------------------

# Application counters of the metrics middleware bumped when an event commits.
EVENT_COUNTERS = {"artifact.published": "publishes"}


@op(
    "emit.event",
    kv_write=True,
    type=Arg("name", required=True, ref="event_type"),
    payload=Arg("value", required=True),
    for_each=Arg("value"),
    as_=Arg("var"),
)
def _emit(args: dict[str, Any], rt: Runtime) -> Runner:
    type_ = args["type"]
    payload = compile_value(args["payload"])
    counter = EVENT_COUNTERS.get(type_)
    each = compile_value(args["for_each"]) if "for_each" in args else None
    name = args.get("as", "item")

    def emit(ctx: RequestContext, txn: Any) -> None:
        body = payload.render(ctx)
        if not isinstance(body, dict):
            raise InvalidRequest("an event payload must be an object")
        rt.events.emit(txn, type_, body)
        if counter is not None:
            txn.after_commit(lambda: ctx.count(counter))

    def run(ctx: RequestContext) -> None:
        txn = _txn(ctx, "emit.event")
        if each is None:
            emit(ctx, txn)
            return
        items = each.render(ctx)
        if not isinstance(items, list):
            raise StoreError("emit.event for_each needs a list")
        for item in items:
            ctx.set(name, item)
            emit(ctx, txn)
        ctx.vars.pop(name, None)  # the checker keeps it a name of its own

    return run
