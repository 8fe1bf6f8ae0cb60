"""The closed-world operation vocabulary: one table from op names to their definitions.

Each op declares its arguments (kind, whether required, what schema section a name refers
to) and a builder that turns the arguments into a callable of the request context, once
per schema. The schema validator reads the same table, so an op cannot be used in a way
its builder does not understand.

Usage::

    @op("time.now_iso8601", out=Arg("out", required=True))
    def _now(args, env):
        return lambda ctx: ctx.set(args["out"], now_iso8601())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import RequestContext
    from .runtime import Runtime

Runner = Callable[["RequestContext"], Any]
Builder = Callable[[dict[str, Any], "Runtime"], Runner]

# Argument kinds:
#   value     any JSON, compiled as a template (references, placeholders)
#   name      a literal string naming something in the schema (see ``ref``)
#   var       a literal variable name the op writes
#   bool/int  literal of that type
#   strings   a literal list of strings
#   fields    a list of field names, or an object {target field: entity field}
#   object    a literal JSON object
#   text      a string, compiled as a template that renders text
#   status    a literal HTTP status code, 100-599
#   headers   a literal object of header names to text templates
#   varref    a literal "$variable" reference
#   ref       a literal "$variable" or "$variable.path" reference
ARG_KINDS = (
    "value",
    "name",
    "var",
    "bool",
    "int",
    "strings",
    "fields",
    "object",
    "text",
    "status",
    "headers",
    "varref",
    "ref",
)

# What a ``name`` argument refers to, and where the validator looks it up.
REFS = {
    "entity": ("entities",),
    "document": ("storage", "documents"),
    "blob_store": ("storage", "blob_stores"),
    "index": ("indexes",),
    "json_schema": ("validation", "json_schemas"),
    "event_type": ("events", "types"),
    "feature": ("features",),
    "upstream": ("upstreams",),
}


@dataclass(frozen=True)
class Arg:
    """One argument of an op."""

    kind: str
    required: bool = False
    ref: str | None = None


@dataclass(frozen=True)
class OpSpec:
    """An op of the vocabulary: its arguments, its builder and its role in a pipeline."""

    name: str
    args: dict[str, Arg]
    build: Builder
    kv_write: bool = False
    terminal: bool = False
    reads_body: bool = False
    extra_vars: tuple[str, ...] = field(default_factory=tuple)


OPS: dict[str, OpSpec] = {}

# Ops whose implementation arrives with a later capability: named, so that a schema that
# uses them gets a clear message rather than "unknown op".
PENDING: dict[str, str] = {
    "proxy.fetch": "proxy.fetch (pull-through from upstreams) is not available in this "
    "version of goodrepo",
}


def op(
    name: str,
    *,
    kv_write: bool = False,
    terminal: bool = False,
    reads_body: bool = False,
    **args: Arg,
) -> Callable[[Builder], Builder]:
    """Register the decorated builder as op ``name`` with the given arguments.

    A trailing underscore names an argument after a Python keyword: ``as_`` is ``as``.
    """

    def register(build: Builder) -> Builder:
        if name in OPS:
            raise RuntimeError(f"op {name} registered twice")
        OPS[name] = OpSpec(
            name=name,
            args={key.removesuffix("_"): arg for key, arg in args.items()},
            build=build,
            kv_write=kv_write,
            terminal=terminal,
            reads_body=reads_body,
        )
        return build

    return register
