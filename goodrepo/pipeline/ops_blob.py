"""Ops on blobs: streaming uploads, digest verification, existence checks."""

from __future__ import annotations

from typing import Any

from werkzeug.wsgi import get_input_stream

from ..errors import LengthRequired, PayloadTooLarge, StoreError, ValidationError
from ..storage.blob_http import expected_digest_from_environ
from .context import RequestContext
from .registry import Arg, Runner, op
from .runtime import Runtime
from .templates import compile_value

_STORE = Arg("name", required=True, ref="blob_store")


def _hex(digest: Any) -> str:
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise ValidationError("digest must be written sha256:<hex>", details={"field": "digest"})
    return digest[len("sha256:") :]


def _chunked(environ: dict[str, Any]) -> bool:
    """Whether a body without ``Content-Length`` has a length all the same: the client
    sent it chunked and the server ends ``wsgi.input`` where the body ends.

    A request with neither header has no body (RFC 9112), which a PUT of a blob may not
    take for an empty one: waitress says ``wsgi.input_terminated`` for every request, so
    the ``Transfer-Encoding`` header decides (waitress itself passes chunked bodies with
    the ``Content-Length`` it counted).
    """
    return (
        bool(environ.get("wsgi.input_terminated"))
        and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    )


@op("blob.put", store=_STORE, out=Arg("var", required=True), reads_body=True)
def _blob_put(args: dict[str, Any], rt: Runtime) -> Runner:
    store = rt.blob_stores[args["store"]]
    body_limit = rt.limits["max_request_body_bytes"]
    out = args["out"]

    def run(ctx: RequestContext) -> None:
        length = ctx.request.content_length
        if length is not None and length > body_limit:
            raise PayloadTooLarge(f"request bodies are limited to {body_limit} bytes")
        if length is None and not _chunked(ctx.environ):
            raise LengthRequired()
        stream = get_input_stream(ctx.environ, max_content_length=body_limit)
        staged = store.put_stream(stream, content_length=length)
        ctx.staged[out] = staged
        ctx.set(out, {"digest": staged.digest, "size": staged.size, "verified": False})

    return run


@op("blob.verify_digest", blob=Arg("varref", required=True))
def _blob_verify(args: dict[str, Any], rt: Runtime) -> Runner:
    name = args["blob"].lstrip("$")

    def run(ctx: RequestContext) -> None:
        staged = ctx.staged.get(name)
        if staged is None:
            raise StoreError(f"no blob staged as ${name}")
        staged.verify(expected_digest_from_environ(ctx.environ))
        # Stored by the next txn.commit, once the transaction's checks have passed: a
        # refused write (409) leaves no blob behind.
        ctx.verified.append(staged)
        ctx.vars[name]["verified"] = True

    return run


@op("blob.stat", store=_STORE, digest=Arg("value", required=True), out=Arg("var", required=True))
def _blob_stat(args: dict[str, Any], rt: Runtime) -> Runner:
    store = rt.blob_stores[args["store"]]
    digest = compile_value(args["digest"])
    out = args["out"]

    def run(ctx: RequestContext) -> None:
        size = store.size(_hex(digest.render(ctx)))
        ctx.set(out, {"exists": size is not None, "size": size})

    return run
