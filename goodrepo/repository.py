"""A repository on a data directory: the embedding API of goodrepo.

One :class:`Repository` owns one data directory (RocksDB allows a single writer): the KV
store under ``kv/``, blobs under each blob store's root (``blobs/`` by default) and the
active schema, stored in the KV. Two repositories on two directories coexist in one
process.

Usage::

    repo = Repository.open("./data")
    repo.publish("acme", "app", "1.0.0", "linux-amd64", open("app.tar.gz", "rb"))
    repo.latest("acme", "app")["version"]      # -> "1.0.0"
    app = repo.wsgi_app()                       # the core WSGI app
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from stat import S_ISREG
from typing import IO, Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import BuildError
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response

from middleware.keys import PRINCIPAL

from . import schema as schema_mod
from .app import CoreApp, from_http_exception
from .errors import GoodrepoError, InvalidConfig, StoreError, ValidationError
from .gc import GarbageCollector
from .pipeline import Runtime, Services
from .pipeline.context import RequestContext
from .pipeline.runtime import Route
from .storage.events import EventLog
from .storage.kv import KV

log = logging.getLogger(__name__)

SCHEMA_KEY = b"m:schema"

# What compiling a schema that the checks let through can still raise.
_SCHEMA_FAULTS = (
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    RecursionError,
    TypeError,
    UnicodeError,
    ValueError,
)


def _make_data_dir(path: Path) -> None:
    """Create the data directory, for its owner only: it holds the signing keys and the
    password hashes. ``StoreError`` naming the path when it cannot be one."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError as err:
        raise StoreError(f"data directory {path}: exists and is not a directory") from err
    except OSError as err:
        raise StoreError(f"data directory {path}: cannot create it: {err.strerror}") from err
    if path.stat().st_mode & 0o077:
        log.warning("data directory %s is open to other users: chmod 700 it", path)


class Repository:
    """An artifact repository on ``data_dir``.

    ``schema`` (a dict or a path to a JSON file) seeds a fresh data directory; once a
    schema is stored, the stored one rules and ``schema`` is ignored.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        schema: dict[str, Any] | str | os.PathLike[str] | None = None,
    ) -> None:
        if not os.fspath(data_dir) or "\0" in os.fspath(data_dir):
            raise StoreError(f"data directory {os.fspath(data_dir)!r}: not a usable path")
        self.data_dir = Path(data_dir).resolve()
        _make_data_dir(self.data_dir)
        self._closed = False
        self.kv = KV(self.data_dir / "kv")
        self.events = EventLog(self.kv)
        self.services = Services(self.data_dir, self.kv, self.events)
        self._swap_lock = threading.RLock()
        self._writers_lock = threading.Lock()
        self._swap_listeners: list[Callable[[], object]] = []
        self._gc = GarbageCollector(self)
        try:
            stored = self.kv.get_json(SCHEMA_KEY)
            active = self._initial_schema(schema) if stored is None else self._stored(stored)
            # Built before a seed schema is stored: one that cannot run (a blob store
            # root that cannot be made) must not stay behind to fail every later open.
            self._runtime = self._compile(active)
            if stored is None:
                self.kv.put_json(SCHEMA_KEY, active)
            self.services.cache.configure(active.get("caching", {}))
            for store in self._runtime.blob_stores.values():
                store.clean_stale_temp()
        except BaseException:
            self.kv.close()
            raise

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        schema: dict[str, Any] | str | os.PathLike[str] | None = None,
    ) -> Repository:
        """Open (creating if needed) the repository on ``data_dir``."""
        return cls(data_dir, schema=schema)

    def _compile(self, schema: dict[str, Any]) -> Runtime:
        """The runtime of a validated schema; ``InvalidConfig`` if it still cannot be
        compiled (a check the validator lacks: the schema's fault all the same)."""
        try:
            return Runtime(schema, self.services)
        except _SCHEMA_FAULTS as err:
            raise _not_compiled(err) from err

    @staticmethod
    def _stored(schema: Any) -> dict[str, Any]:
        """The stored schema, as it is. One that fails checks added since it was stored
        still runs, with a warning: refusing it would lock its data away, and only a
        running repository can take a replacement (``PUT /admin/config``)."""
        problems = schema_mod.problems_of(schema)
        if problems:
            log.warning(
                "the stored schema fails %d check(s) of this version; it runs as it is "
                "until it is replaced: %s",
                len(problems),
                "; ".join(f"{p['path']}: {p['message']}" for p in problems),
            )
        return schema

    @staticmethod
    def _initial_schema(schema: Any) -> dict[str, Any]:
        if schema is None:
            return schema_mod.default_schema()
        if isinstance(schema, dict):
            return schema_mod.validate(copy.deepcopy(schema))
        return schema_mod.load_file(schema)

    # -- the schema --------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        """The compiled active schema (read once per request); ``StoreError`` once the
        repository is closed."""
        if self._closed:
            raise StoreError("the repository is closed")
        return self._runtime

    @property
    def schema(self) -> dict[str, Any]:
        """A copy of the active schema."""
        return copy.deepcopy(self._runtime.schema)

    def replace_schema(self, new_schema: Any, *, by: str = "system") -> None:
        """Validate, store and hot-swap a schema; raises InvalidConfig, changing nothing.

        The active schema again, to the byte, is a no-op: nothing is stored or logged,
        and no ``schema.replaced`` event goes to followers.
        """
        # Validated before it is copied: a copy of a schema nested too deeply would fail.
        validated = copy.deepcopy(schema_mod.validate(new_schema))
        with self._swap_lock:
            # Compared as JSON text: Python counts 1, 1.0 and true as equal; JSON does not.
            if json.dumps(validated) == json.dumps(self.runtime.schema):
                return
            # Build everything the new schema needs before storing it: a swap that
            # fails must leave the stored schema as it was.
            self._check_strands(validated)
            try:
                runtime = self._compile(validated)
            except StoreError as err:  # a blob store root that cannot be made, say
                raise InvalidConfig(
                    [{"path": "$.storage.blob_stores", "message": err.message}]
                ) from err
            cache = self.services.cache.prepare(validated.get("caching", {}))
            # No write starts on the old schema from here on (see begin_write), and one
            # already running (an upload, say) would store where the old schema says.
            with self._writers_lock:
                self._check_strands(validated, writes_running=self._runtime.writers > 0)
                with self.kv.transaction() as txn:
                    txn.put_json(SCHEMA_KEY, validated)
                    self.events.emit(txn, "schema.replaced", {"by": by})
                self.services.cache.install(cache)
                self._runtime = runtime
        log.info("schema replaced by %s", by)
        for listener in list(self._swap_listeners):
            try:
                listener()
            except Exception:
                log.exception("a schema swap listener failed")

    def _check_strands(self, validated: dict[str, Any], *, writes_running: bool = False) -> None:
        """InvalidConfig if ``validated`` would strand stored data, or (``writes_running``)
        data that writes running on the current schema are about to store."""
        try:
            stranded = self._runtime.stranded_by(validated)
            busy = not stranded and writes_running
            if busy:
                stranded = self._runtime.stranded_by(validated, assume_data=True)
        except _SCHEMA_FAULTS as err:
            raise _not_compiled(err) from err
        if stranded and busy:
            stranded = [
                {
                    "path": "$.storage",
                    "message": "writes are running (an upload, say) that would store data "
                    "where this schema no longer looks; try again once they have finished: "
                    + "; ".join(f"{p['path']}: {p['message']}" for p in stranded),
                }
            ]
        if stranded:
            raise InvalidConfig(stranded, "the schema would strand stored data")

    @contextmanager
    def running(self, pick: Callable[[Runtime], Route]) -> Iterator[tuple[Runtime, Route]]:
        """The active runtime and the route ``pick`` finds in it, for one request.

        A request of a writing route is counted on its runtime until the block ends, and
        while it runs a schema swap that would move where it stores is refused.
        """
        while True:
            runtime = self.runtime
            route = pick(runtime)
            if not route.writes:
                yield runtime, route
                return
            with self._writers_lock:
                if runtime is self._runtime:  # else a swap came between: look again
                    runtime.writers += 1
                    break
        try:
            yield runtime, route
        finally:
            with self._writers_lock:
                runtime.writers -= 1

    def add_swap_listener(self, listener: Callable[[], object]) -> None:
        """Call ``listener()`` after every schema swap (``goodrepo serve`` uses it to keep
        the server's request body limit in step with ``max_blob_bytes``)."""
        self._swap_listeners.append(listener)

    def set_features(self, changes: dict[str, Any], *, by: str = "system") -> dict[str, Any]:
        """Change feature flags (they take effect on the next write); returns them all."""
        if not isinstance(changes, dict) or not changes:
            raise ValidationError("features must be a non-empty object")
        with self._swap_lock:  # read and replace as one step: no concurrent swap is lost
            return self._set_features_locked(changes, by)

    def _set_features_locked(self, changes: dict[str, Any], by: str) -> dict[str, Any]:
        current = self.schema
        known = current.get("features", {})
        problems = [
            {"path": f"$.features.{k}", "message": "unknown feature"}
            if k not in known
            else {"path": f"$.features.{k}", "message": "must be true or false"}
            for k, v in changes.items()
            if k not in known or not isinstance(v, bool)
        ]
        if problems:
            raise InvalidConfig(problems)
        current["features"].update(changes)
        self.replace_schema(current, by=by)
        return dict(current["features"])

    # -- WSGI --------------------------------------------------------------------------

    def wsgi_app(self) -> CoreApp:
        """The core WSGI app serving this repository (no authentication of its own)."""
        return CoreApp(self)

    # -- in-process calls --------------------------------------------------------------

    def call(
        self,
        route_id: str,
        values: dict[str, str],
        *,
        method: str | None = None,
        body: bytes | IO[bytes] | None = None,
        query: dict[str, Any] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        principal: dict[str, Any] | None = None,
        content_length: int | None = None,
    ) -> Response:
        """Run route ``route_id`` in-process, as a trusted caller.

        The route's pipeline runs as it does for HTTP requests, and its errors are raised
        as the :class:`~goodrepo.errors.GoodrepoError` subclasses of their codes.
        ``body`` may be any binary stream; without ``content_length`` (and when it cannot
        be measured) it is read to its end.
        """

        def pick(runtime: Runtime) -> Route:
            route = runtime.routes.get(route_id)
            if route is None:
                raise GoodrepoError(f"the active schema has no route {route_id!r}")
            return route

        with self.running(pick) as (runtime, route):
            try:
                path = runtime.url_map.bind("localhost").build(
                    route_id, values, append_unknown=False
                )
            except BuildError as err:
                raise ValidationError(
                    f"route {route_id!r} needs a text value for each of its path parameters",
                    details={"route": route_id},
                ) from err
            environ = EnvironBuilder(
                path=path,
                method=method or route.method,
                query_string=query,
                headers=list((headers or {}).items()),
                json=json_body,
            ).get_environ()
            if body is not None:
                stream = io.BytesIO(body) if isinstance(body, bytes) else body
                length = len(body) if isinstance(body, bytes) else content_length
                environ["wsgi.input"] = stream
                environ["CONTENT_TYPE"] = "application/octet-stream"
                if length is None:
                    environ.pop("CONTENT_LENGTH", None)
                    environ["HTTP_TRANSFER_ENCODING"] = "chunked"  # a body of unknown length
                    environ["wsgi.input_terminated"] = True
                else:
                    environ["CONTENT_LENGTH"] = str(length)
            if principal is None:  # (an empty one is an anonymous caller, with no scopes)
                principal = {
                    "sub": "system",
                    "scopes": ["admin"],
                    "token_id": None,
                    "claims": {},
                    "anonymous": False,
                }
            environ[PRINCIPAL] = principal
            ctx = RequestContext(runtime, environ, dict(values))
            try:
                response: Response = route.run(ctx)
            except HTTPException as exc:  # werkzeug's, such as a body shorter than announced
                raise from_http_exception(exc) from exc
            finally:
                ctx.close()
            return response

    def publish(
        self,
        namespace: str,
        name: str,
        version: str,
        variant: str,
        source: bytes | str | os.PathLike[str] | IO[bytes],
        *,
        sha256: str | None = None,
        by: str = "system",
    ) -> dict[str, Any]:
        """Publish bytes, a file path or a binary stream; returns ``{digest, size}``."""
        values = {"namespace": namespace, "name": name, "version": version, "variant": variant}
        headers = {"X-Checksum-Sha256": sha256} if sha256 is not None else None
        principal: dict[str, Any] = {
            "sub": by,
            "scopes": ["admin"],
            "token_id": None,
            "claims": {},
        }
        if isinstance(source, (bytearray, memoryview)):
            source = bytes(source)
        elif isinstance(source, io.TextIOBase):
            raise TypeError("publish: a text stream; open the file in binary mode ('rb')")
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                response = self.call(
                    "publish_blob",
                    values,
                    body=fh,
                    content_length=size,
                    headers=headers,
                    principal=principal,
                )
        elif isinstance(source, bytes):
            response = self.call(
                "publish_blob", values, body=source, headers=headers, principal=principal
            )
        else:
            response = self.call(
                "publish_blob",
                values,
                body=source,
                content_length=_remaining(source),
                headers=headers,
                principal=principal,
            )
        data = json.loads(response.get_data())
        return {"digest": data["digest"], "size": data["size"]}

    def metadata(self, namespace: str, name: str, version: str, variant: str) -> dict[str, Any]:
        """The stored metadata of one artifact; raises NotFound."""
        values = {"namespace": namespace, "name": name, "version": version, "variant": variant}
        return json.loads(self.call("get_artifact", values).get_data())

    def latest(
        self,
        namespace: str,
        name: str,
        *,
        prerelease: bool = False,
        variant: str | None = None,
    ) -> dict[str, Any] | None:
        """The latest version's record, or None when there is none."""
        query: dict[str, Any] = {"prerelease": "true" if prerelease else "false"}
        if variant is not None:
            query["variant"] = variant
        try:
            response = self.call("latest", {"namespace": namespace, "name": name}, query=query)
        except GoodrepoError as err:
            if err.code == "NOT_FOUND":
                return None
            raise
        return json.loads(response.get_data())

    def tag(
        self,
        namespace: str,
        name: str,
        tag: str,
        version: str,
        variant: str,
        *,
        by: str = "system",
    ) -> None:
        """Point ``tag`` at an artifact (subject to the ``mutable_tags`` feature)."""
        self.call(
            "put_tag",
            {"namespace": namespace, "name": name, "tag": tag},
            json_body={"target_version": version, "target_variant": variant},
            principal={"sub": by, "scopes": ["admin"], "token_id": None, "claims": {}},
        )

    def open_blob(self, digest: str, store: str = "primary") -> IO[bytes]:
        """Open a stored blob by ``sha256:<hex>`` digest for reading; ``NotFound`` when
        absent, ``ValidationError`` for a malformed digest or an unknown store."""
        stores = self.runtime.blob_stores
        if store not in stores:
            raise ValidationError(
                f"no blob store {store!r}; the schema has {sorted(stores)}",
                details={"field": "store"},
            )
        if not isinstance(digest, str):
            raise TypeError(f"open_blob: the digest is a str, not {type(digest).__name__}")
        return stores[store].open(digest)

    # -- lifecycle ---------------------------------------------------------------------

    def gc(self, *, dry_run: bool = False, by: str = "system") -> dict[str, Any]:
        """Garbage collection: retention, then mark and sweep (see :mod:`goodrepo.gc`)."""
        return self._gc.run(dry_run=dry_run, by=by)

    def check(self) -> None:
        """Health probe: KV read/write and every blob store writable."""
        self.runtime.check()

    def close(self) -> None:
        """Close the KV store; the repository cannot be used afterwards (``StoreError``).
        Safe to call twice."""
        self._closed = True
        self.kv.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _remaining(stream: IO[bytes]) -> int | None:
    """The bytes left in a plain file or ``BytesIO``; None for any other stream (read to
    its end): the file behind a wrapper's ``fileno()`` (a gzip file, a socket) says
    nothing of what the wrapper will read."""
    if isinstance(stream, io.BytesIO):
        return len(stream.getbuffer()) - stream.tell()
    if type(stream) not in (io.BufferedReader, io.BufferedRandom, io.FileIO):
        return None
    try:
        stat = os.fstat(stream.fileno())
        return stat.st_size - stream.tell() if S_ISREG(stat.st_mode) else None
    except (OSError, ValueError):
        return None


def _not_compiled(err: BaseException) -> InvalidConfig:
    log.warning("schema refused when compiled: %r", err)
    return InvalidConfig([{"path": "$", "message": f"cannot be compiled: {err!r}"}])
