"""Ops that answer: JSON, blob bytes, redirects, errors, and the HTTP preconditions."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote, urlencode

from werkzeug.http import parse_etags, quote_etag
from werkzeug.wrappers import Request, Response

from ..errors import PreconditionFailed, error_for
from ..storage.blob_http import blob_response, not_modified
from ..storage.kv import dumps
from .context import RequestContext
from .registry import Arg, Runner, op
from .runtime import Runtime
from .templates import Template, compile_string, compile_value


def etag_for(value: Any) -> str | None:
    """A strong entity tag (unquoted) for a JSON document; None for no document."""
    if value is None:
        return None
    return hashlib.sha256(dumps(value)).hexdigest()[:32]


def _absolute(ctx: RequestContext, location: str) -> str:
    # Paths in the schema are relative to where the app is mounted.
    if location.startswith("/"):
        return ctx.request.script_root + location
    return location


def next_link(request: Request, cursor: str) -> str:
    """The ``Link`` header value pointing at the next page of a listing."""
    query = [(k, v) for k, v in request.args.items(multi=True) if k != "cursor"]
    query.append(("cursor", cursor))
    # The path as sent may have held escaped characters (a space trimmed off later): the
    # link is a URI again, so escape the decoded path.
    path = quote(request.script_root + request.path, safe="/:@!$&'()*+,;=")
    url = path + "?" + urlencode(query)
    return f'<{url}>; rel="next"'


def _headers(args: dict[str, Any]) -> list[tuple[str, Template]]:
    return [(k, compile_string(v)) for k, v in (args.get("headers") or {}).items()]


@op(
    "respond.json",
    terminal=True,
    status=Arg("status"),
    body=Arg("value"),
    headers=Arg("headers"),
    etag_of=Arg("value"),
    paginate=Arg("ref"),
)
def _json(args: dict[str, Any], rt: Runtime) -> Runner:
    status = args.get("status", 200)
    body = compile_value(args.get("body"))
    headers = _headers(args)
    etag_of = compile_value(args["etag_of"]) if "etag_of" in args else None
    paginate = compile_value(args["paginate"]) if "paginate" in args else None

    def run(ctx: RequestContext) -> Response:
        tag = None if etag_of is None else etag_for(etag_of.render(ctx))
        if tag is not None and ctx.request.method in ("GET", "HEAD"):
            if not_modified(ctx.environ, tag):
                return Response(status=304, headers={"ETag": quote_etag(tag)})
        if status == 204:
            response = Response(status=204)
            del response.headers["Content-Type"]
        else:
            text = json.dumps(body.render(ctx), separators=(",", ":"))
            response = Response(text, status=status, mimetype="application/json")
        for name, value in headers:
            rendered = value.render(ctx)
            response.headers[name] = _absolute(ctx, rendered) if name == "Location" else rendered
        if paginate is not None:
            page = paginate.render(ctx)
            if isinstance(page, dict) and page.get("next_cursor"):
                response.headers["Link"] = next_link(ctx.request, page["next_cursor"])
        if tag is not None:
            response.set_etag(tag)
        return response

    return run


@op(
    "respond.bytes",
    terminal=True,
    store=Arg("name", required=True, ref="blob_store"),
    digest=Arg("value", required=True),
    filename=Arg("text"),
)
def _bytes(args: dict[str, Any], rt: Runtime) -> Runner:
    store = rt.blob_stores[args["store"]]
    digest = compile_value(args["digest"])
    filename = compile_value(args.get("filename"))

    def run(ctx: RequestContext) -> Response:
        response = blob_response(
            ctx.environ, store, digest.render(ctx), filename=filename.render(ctx)
        )
        if ctx.request.method == "GET" and response.status_code in (200, 206):
            ctx.count("blob_bytes_out", response.content_length or 0)
        return response

    return run


@op(
    "respond.redirect",
    terminal=True,
    location=Arg("text", required=True),
    status=Arg("status"),
)
def _redirect(args: dict[str, Any], rt: Runtime) -> Runner:
    location = compile_value(args["location"])
    status = args.get("status", 307)

    def run(ctx: RequestContext) -> Response:
        response = Response(status=status)
        response.headers["Location"] = _absolute(ctx, location.render(ctx))
        return response

    return run


@op(
    "respond.error",
    terminal=True,
    status=Arg("status", required=True),
    code=Arg("name", required=True),
    message=Arg("value", required=True),
    details=Arg("value"),
)
def _error(args: dict[str, Any], rt: Runtime) -> Runner:
    status, code = args["status"], args["code"]
    message = compile_value(args["message"])
    details = compile_value(args.get("details"))

    def run(ctx: RequestContext) -> None:
        raise error_for(code, status, message.render(ctx), details.render(ctx))

    return run


@op("http.check_preconditions", etag_of=Arg("value", required=True), etag=Arg("text"))
def _preconditions(args: dict[str, Any], rt: Runtime) -> Runner:
    etag_of = compile_value(args["etag_of"])
    # The entity tag of the target when it is not the document's own (a blob's), rendered
    # only when the document exists.
    etag = compile_string(args["etag"]) if args.get("etag") is not None else None

    def run(ctx: RequestContext) -> None:
        environ = ctx.environ
        if_match = environ.get("HTTP_IF_MATCH")
        if_none_match = environ.get("HTTP_IF_NONE_MATCH")
        if if_match is None and if_none_match is None:
            return
        document = etag_of.render(ctx)
        if etag is None or document is None:
            current = etag_for(document)
        else:
            current = str(etag.render(ctx))
        if if_match is not None:
            tags = parse_etags(if_match)
            if current is None or not (tags.star_tag or tags.contains(current)):
                raise PreconditionFailed("If-Match does not match the current entity tag")
        if if_none_match is not None and current is not None:
            tags = parse_etags(if_none_match)
            if tags.star_tag or tags.contains_weak(current):
                raise PreconditionFailed("If-None-Match matched the current entity tag")

    return run
