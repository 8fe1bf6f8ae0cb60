"""The compiled form of a validated schema: entities, stores, indexes and route pipelines.

A :class:`Runtime` is built once per schema and never changes afterwards; replacing the
schema builds a new one and swaps a single reference, so requests in flight finish on the
runtime they started with.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from werkzeug.routing import Map, Rule

from ..entities import Entity
from ..errors import ValidationError
from ..storage.blobs import BlobStore
from ..storage.cache import ResponseCache
from ..storage.index import VersionIndex
from ..versions import get_scheme
from .registry import OPS, Runner
from .templates import Template, compile_condition, compile_string

if TYPE_CHECKING:
    from ..storage.events import EventLog
    from ..storage.kv import KV
    from .context import RequestContext

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# What one component of a document key may hold, whatever the entity rules say:
# no separators, no traversal, nothing outside printable ASCII.
_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:-]*")


# What a ``caching`` section that leaves a bound out gets.
CACHE_DEFAULTS: dict[str, Any] = {
    "max_entries": 4096,
    "max_bytes": 32 << 20,
    "default_ttl_seconds": 30,
    "max_entry_bytes": 256 << 10,
}


class CacheSlot:
    """The response cache of a repository, shared by the runtimes of successive schemas.

    Every runtime reads the cache through the slot when a request runs, so a write that
    started under an old schema still invalidates the cache the new schema fills.
    """

    def __init__(self) -> None:
        self.current: ResponseCache | None = None
        self._config: dict[str, Any] | None = None

    def configure(self, caching: dict[str, Any]) -> None:
        """Apply a schema's ``caching`` section; the cached entries are dropped."""
        self.install(self.prepare(caching))

    def prepare(self, caching: dict[str, Any]) -> tuple[dict[str, Any], ResponseCache | None]:
        """What :meth:`install` puts in place for ``caching``, built without changing
        anything (``ValueError`` for inconsistent bounds), so that a schema swap can fail
        before it stores anything."""
        if caching == self._config and self.current is not None:
            return self._config, self.current
        cache = None
        if caching.get("enabled", False):
            cache = ResponseCache(
                max_entries=caching.get("max_entries", CACHE_DEFAULTS["max_entries"]),
                max_bytes=caching.get("max_bytes", CACHE_DEFAULTS["max_bytes"]),
                default_ttl=float(
                    caching.get("default_ttl_seconds", CACHE_DEFAULTS["default_ttl_seconds"])
                ),
                max_entry_bytes=caching.get("max_entry_bytes", CACHE_DEFAULTS["max_entry_bytes"]),
            )
        return dict(caching), cache

    def install(self, prepared: tuple[dict[str, Any], ResponseCache | None]) -> None:
        """Put in place what :meth:`prepare` built; a kept cache is cleared."""
        config, cache = prepared
        if cache is not None and cache is self.current:
            cache.clear()
        self._config, self.current = config, cache


@dataclass(frozen=True)
class Services:
    """What outlives a schema: the data directory, the KV store, the event log and the
    response cache slot."""

    data_dir: Path
    kv: KV
    events: EventLog
    cache: CacheSlot = field(default_factory=CacheSlot)


DOCUMENTS = b"d:"  # the KV prefix of every document of every store


class Document:
    """A kind of JSON document in a KV store, with its key template."""

    def __init__(self, name: str, store: str, key_template: str) -> None:
        self.name = name
        self.prefix = DOCUMENTS + store.encode("ascii") + b"\x00"
        self.template = key_template
        self.parts: list[str | tuple[str]] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(key_template):
            if m.start() > pos:
                self.parts.append(key_template[pos : m.start()])
            self.parts.append((m.group(1),))
            pos = m.end()
        if pos < len(key_template):
            self.parts.append(key_template[pos:])
        self.fields = [p[0] for p in self.parts if isinstance(p, tuple)]

    def key(
        self,
        ctx: RequestContext,
        overrides: dict[str, Template] | None = None,
        *,
        upto: int | None = None,
    ) -> bytes:
        """The KV key for the request's fields; ``upto`` stops after that many fields."""
        out: list[str] = []
        seen = 0
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            if upto is not None and seen == upto:
                break
            seen += 1
            name = part[0]
            value = overrides[name].render(ctx) if overrides and name in overrides else None
            if value is None:
                value = ctx.fields.get(name)
            if not isinstance(value, str) or not _KEY_PART.fullmatch(value):
                raise ValidationError(f"{name} is not valid", details={"field": name})
            out.append(value)
        return self.prefix + "".join(out).encode("ascii")


@dataclass
class Step:
    """One compiled op of a pipeline."""

    name: str
    run: Runner
    when: Template | None


@dataclass
class Route:
    """A compiled route: its id, method, path template and pipeline."""

    id: str
    method: str
    path: str
    steps: list[Step]

    @cached_property
    def writes(self) -> bool:
        """Whether the route may store something (a blob, or a transaction's writes)."""
        return any(step.name in _WRITING_OPS for step in self.steps)

    def run(self, ctx: RequestContext) -> Any:
        for step in self.steps:
            if step.when is not None and not step.when.render(ctx):
                continue
            result = step.run(ctx)
            if result is not None:
                return result
        raise RuntimeError(f"route {self.id} ended without a response")


_WRITING_OPS = frozenset({"blob.put", "txn.begin"})


def rule_path(path: str) -> str:
    """A schema path (``/v1/{namespace}``) as a werkzeug rule (``/v1/<namespace>``)."""
    return _PLACEHOLDER.sub(lambda m: f"<{m.group(1)}>", path)


class Runtime:
    """A schema compiled against the repository's services."""

    def __init__(self, schema: dict[str, Any], services: Services) -> None:
        self.schema = schema
        self.services = services
        self.kv = services.kv
        self.events = services.events
        self.writers = 0  # requests of writing routes running on it (Repository counts)
        self.features: dict[str, Any] = dict(schema.get("features", {}))
        self.limits: dict[str, int] = dict(schema["ops"]["limits"])
        auth = schema.get("auth", {})
        self.scope_implies: dict[str, set[str]] = {
            k: set(v) for k, v in auth.get("implies", {}).items()
        }
        # admin implies every scope, whatever the schema's implies says
        self.scope_implies["admin"] = set(auth.get("scopes", ())) | {"admin"}
        self.entities = {
            name: Entity.from_schema(name, spec) for name, spec in schema["entities"].items()
        }
        storage = schema["storage"]
        self.blob_stores = {
            name: BlobStore(
                self._resolve(spec["root"]),
                spec["path_template"],
                min_blob_bytes=spec.get("min_blob_bytes", 0),
                max_blob_bytes=spec.get("max_blob_bytes"),
            )
            for name, spec in storage["blob_stores"].items()
        }
        self.documents = {
            name: Document(name, spec["store"], spec["key"])
            for name, spec in storage["documents"].items()
        }
        self.indexes: dict[str, VersionIndex] = {}
        for spec in schema.get("indexes", []):
            entity = schema["entities"][spec["entity"]]
            self.indexes[spec["name"]] = VersionIndex(
                self.kv,
                spec["name"],
                get_scheme(entity["versioning"]["scheme"]),
                spec["group_by"],
                version_field=spec.get("version_field", "version"),
                variant_field=spec.get("variant_field", "variant"),
            )
        self.json_schemas = {
            name: Draft202012Validator(s)
            for name, s in schema.get("validation", {}).get("json_schemas", {}).items()
        }
        self.routes: dict[str, Route] = {}
        rules = []
        for spec in schema["routes"]:
            route = Route(spec["id"], spec["method"], spec["path"], self._compile(spec))
            self.routes[route.id] = route
            rules.append(Rule(rule_path(route.path), endpoint=route.id, methods=[route.method]))
        self.url_map = Map(rules, strict_slashes=False, merge_slashes=False)
        # Bound once: routes do not depend on the host, so a request only needs a match.
        self.url_adapter = self.url_map.bind("localhost")

    @property
    def cache(self) -> ResponseCache | None:
        """The repository's response cache as it is now (None when caching is off)."""
        return self.services.cache.current

    def _resolve(self, root: str) -> Path:
        path = Path(root)
        return path if path.is_absolute() else self.services.data_dir / path

    def _compile(self, route: dict[str, Any]) -> list[Step]:
        steps = []
        for raw in route["pipeline"]:
            spec = OPS[raw["op"]]
            args = {k: v for k, v in raw.items() if k not in ("op", "when")}
            when = compile_condition(raw["when"]) if "when" in raw else None
            steps.append(Step(spec.name, spec.build(args, self), when))
        return steps

    def stranded_by(
        self, schema: dict[str, Any], *, assume_data: bool = False
    ) -> list[dict[str, str]]:
        """What replacing this schema by ``schema`` would strand, as problems (``path``,
        ``message``) for :class:`~goodrepo.errors.InvalidConfig`; empty when nothing.

        Stored data is never rewritten, so its layout is fixed once there is some: a blob
        store that holds blobs keeps its ``root`` and ``path_template``, a kind of
        document that holds documents keeps its store and key, and an index over stored
        documents keeps its definition and its entity's versioning (its rows are sorted
        by it). Each may still be removed, added or changed while it is empty.
        ``assume_data``: as if every store, kind of document and index held some.
        """
        problems: list[dict[str, str]] = []
        stores, old_stores = (
            schema["storage"]["blob_stores"],
            self.schema["storage"]["blob_stores"],
        )
        for name, store in self.blob_stores.items():
            spec, old = stores.get(name), old_stores[name]
            moved = spec is None or any(spec[k] != old[k] for k in ("root", "path_template"))
            if moved and (assume_data or next(store.iter_digests(), None) is not None):
                problems.append(
                    {
                        "path": f"$.storage.blob_stores.{name}",
                        "message": "holds blobs, so its root and path_template cannot change "
                        "and it cannot be removed: they would be out of reach",
                    }
                )
        documents = schema["storage"]["documents"]
        for name, doc in self.documents.items():
            spec = documents.get(name)
            if (spec is None or (spec["store"], spec["key"]) != self._document_layout(name)) and (
                assume_data or self._holds_documents(doc)
            ):
                problems.append(
                    {
                        "path": f"$.storage.documents.{name}",
                        "message": "holds documents, so its store and key cannot change and it "
                        "cannot be removed: they would be out of reach",
                    }
                )
        old_indexes = {
            s["name"]: _index_layout(self.schema, s) for s in self.schema.get("indexes", [])
        }
        new_indexes = {s["name"]: _index_layout(schema, s) for s in schema.get("indexes", [])}
        for name in sorted(old_indexes.keys() | new_indexes.keys()):
            if old_indexes.get(name) == new_indexes.get(name):
                continue
            has_rows = name in self.indexes and self.indexes[name].has_rows()
            spec = next((s for s in schema.get("indexes", []) if s["name"] == name), None)
            over = spec and documents.get(spec.get("document"))
            if (
                assume_data
                or has_rows
                or (over and self._holds_documents(Document(name, over["store"], over["key"])))
            ):
                problems.append(
                    {
                        "path": f"$.indexes[{name}]",
                        "message": "indexes stored documents, so it cannot be added, changed "
                        "or removed, nor its entity's versioning: its rows would be wrong",
                    }
                )
        return problems

    def _document_layout(self, name: str) -> tuple[str, str]:
        spec = self.schema["storage"]["documents"][name]
        return spec["store"], spec["key"]

    def _holds_documents(self, doc: Document) -> bool:
        literal = doc.parts[0] if doc.parts and isinstance(doc.parts[0], str) else ""
        return next(self.kv.scan(doc.prefix + literal.encode("ascii"), limit=1), None) is not None

    def check(self) -> None:
        """Health probe of every store this schema uses."""
        self.kv.check()
        for store in self.blob_stores.values():
            store.check()


def _index_layout(schema: dict[str, Any], spec: dict[str, Any]) -> tuple[Any, ...]:
    """Everything an index's rows depend on."""
    return (
        spec.get("kind"),
        spec["entity"],
        spec.get("document"),
        tuple(spec["group_by"]),
        spec.get("version_field", "version"),
        spec.get("variant_field", "variant"),
        schema["entities"][spec["entity"]]["versioning"]["scheme"],
    )


def compile_fields(
    spec: list[str] | dict[str, str],
) -> list[tuple[str, str]]:
    """``fields`` argument as (target, entity field) pairs."""
    if isinstance(spec, list):
        return [(f, f) for f in spec]
    return list(spec.items())


def compile_overrides(spec: dict[str, Any] | None) -> dict[str, Template]:
    """Per-op key field overrides (``{"version": "{target_version}"}``)."""
    return {k: compile_string(v) for k, v in (spec or {}).items()}


Setter = Callable[["RequestContext", Any], None]
