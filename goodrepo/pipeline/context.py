"""The state of one request while its pipeline runs.

A context holds the request, the route's fields (path values once parsed, normalised),
the pipeline's variables, the open transaction and the blobs staged on disk. Whatever the
pipeline's outcome, :meth:`RequestContext.close` aborts an open transaction and discards
staged blobs, so a failed request leaves nothing behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request

from middleware.keys import METRICS, PRINCIPAL

if TYPE_CHECKING:
    from ..storage.blobs import StagedBlob
    from ..storage.kv import Transaction
    from .runtime import Runtime


class RequestContext:
    """Everything the ops of one pipeline run share."""

    def __init__(self, runtime: Runtime, environ: dict[str, Any], url_values: dict[str, str]):
        self.runtime = runtime
        self.environ = environ
        self.request = Request(environ)
        self.url_values = url_values
        self.fields: dict[str, Any] = {}
        self.vars: dict[str, Any] = {
            "features": runtime.features,
            "schema": runtime.schema,
            "principal": self.principal,
        }
        self.txn: Transaction | None = None
        self.staged: dict[str, StagedBlob] = {}
        self.verified: list[StagedBlob] = []  # stored by the next txn.commit
        self.cache_tokens: dict[str, Any] = {}
        self.cache_hits: set[str] = set()

    @property
    def principal(self) -> dict[str, Any]:
        """The authenticated principal the auth middleware put in the environ (or {})."""
        return self.environ.get(PRINCIPAL) or {}

    def count(self, name: str, amount: float = 1) -> None:
        """Add to an application counter of the metrics middleware, when it is there."""
        recorder = self.environ.get(METRICS)
        if recorder is not None and name in recorder.names:
            recorder.inc(name, amount)

    def set(self, name: str, value: Any) -> None:
        """Set pipeline variable ``name``."""
        self.vars[name] = value

    def close(self) -> None:
        """Abort what the pipeline left open; safe to call more than once."""
        if self.txn is not None and not self.txn.done:
            self.txn.abort()
        self.txn = None
        for staged in self.staged.values():
            staged.discard()  # a no-op for one already stored
        self.staged.clear()
        self.verified.clear()
