"""Answer liveness and readiness probes before anything else sees the request.

Three paths, each configurable or disabled with ``None``:

``/health``
    ``200 {"status": "healthy"}`` while the process serves (kept for old clients).
``/health/live``
    liveness: ``200 {"status": "healthy"}`` while the process serves.
``/health/ready``
    readiness: runs every check and answers ``200`` with ``"status": "healthy"`` when all
    pass, else ``503`` with ``"status": "unhealthy"``; either way ``"checks"`` lists each
    check's ``status`` (``pass``, ``fail`` or ``timeout``), ``duration_ms`` and, on
    failure, the ``error`` type (never its message, which may hold paths or secrets; the
    traceback goes to the log).

A check is a named callable taking no argument; it fails by raising or by returning
``False``. Checks run in parallel, each on a daemon thread with its own timeout. A check
still running from an earlier probe is not started again: the new probe waits on the same
run, so a hung dependency holds one thread per check, not one per probe. Other methods
than GET and HEAD on these paths answer ``405 METHOD_NOT_ALLOWED``.

Options:

``checks``
    a mapping ``name -> callable`` or ``name -> Check(callable, timeout=...)``.
``timeout``
    the default seconds a check may take (default 2.0).
``health_path``, ``live_path``, ``ready_path``
    the probe paths (defaults above); ``None`` disables one.

Usage::

    from middleware.health import Check, HealthMiddleware
    app = HealthMiddleware(app, checks={"kv": kv.check, "disk": Check(disk_free, timeout=0.5)})
    # GET /health/ready -> 200 {"status": "healthy", "checks": {...}}

Environ keys: sets ``goodrepo.route`` to the probe path on the requests it answers; a 405
sets ``goodrepo.error_code``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from webob import Response

from middleware.errors import error_response
from middleware.keys import ROUTE

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

_PROBE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Check:
    """A readiness check: ``func`` fails by raising or returning ``False``."""

    func: Callable[[], object]
    timeout: float | None = None


class _Run:
    """One execution of a check, shared by the probes that arrive while it runs."""

    __slots__ = ("started", "done", "ok", "error", "duration")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.done = threading.Event()
        self.ok = False
        self.error: str | None = None
        self.duration = 0.0


class HealthMiddleware:
    """Serve ``/health``, ``/health/live`` and ``/health/ready`` (see the module docstring)."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        checks: Mapping[str, Callable[[], object] | Check] | None = None,
        timeout: float = 2.0,
        health_path: str | None = "/health",
        live_path: str | None = "/health/live",
        ready_path: str | None = "/health/ready",
    ) -> None:
        self.app = app
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ValueError("timeout: expected a number of seconds > 0")
        self._checks: dict[str, tuple[Callable[[], object], float]] = {}
        for name, check in (checks or {}).items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"checks: name {name!r} is not a non-empty string")
            if isinstance(check, Check):
                func, limit = check.func, check.timeout if check.timeout is not None else timeout
            else:
                func, limit = check, timeout
            if not callable(func):
                raise ValueError(f"checks[{name!r}]: not callable")
            if not isinstance(limit, (int, float)) or isinstance(limit, bool) or limit <= 0:
                raise ValueError(f"checks[{name!r}]: timeout must be a number of seconds > 0")
            self._checks[name] = (func, float(limit))
        paths: dict[str, Callable[[], tuple[int, dict[str, Any]]]] = {}
        for option, path, handler in (
            ("health_path", health_path, self._alive),
            ("live_path", live_path, self._alive),
            ("ready_path", ready_path, self._ready),
        ):
            if path is None:
                continue
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"{option}: {path!r} does not start with '/'")
            if path in paths:
                raise ValueError(f"{option}: {path!r} is used twice")
            paths[path] = handler
        self._paths = paths
        # Runs in progress by check name; shared between probes on purpose (see module).
        self._running: dict[str, _Run] = {}
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        handler = self._paths.get(path)
        if handler is None:
            return self.app(environ, start_response)
        environ[ROUTE] = path
        if environ.get("REQUEST_METHOD") not in _PROBE_METHODS:
            response = error_response(
                environ,
                405,
                "METHOD_NOT_ALLOWED",
                "probes answer GET and HEAD only",
                headers={"Allow": "GET, HEAD"},
            )
            return response(environ, start_response)
        status, payload = handler()
        response = Response(
            body=json.dumps(payload).encode(), status=status, content_type="application/json"
        )
        response.headers["Cache-Control"] = "no-store"
        return response(environ, start_response)

    def _alive(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "healthy"}

    def _ready(self) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        runs = {name: self._start(name, func) for name, (func, _) in self._checks.items()}
        results: dict[str, dict[str, Any]] = {}
        healthy = True
        for name, run in runs.items():
            limit = self._checks[name][1]
            finished = run.done.wait(max(0.0, started + limit - time.perf_counter()))
            if not finished:
                healthy = False
                elapsed = time.perf_counter() - run.started
                results[name] = {"status": "timeout", "duration_ms": _ms(elapsed)}
                log.warning("health check %r timed out after %.3f s", name, elapsed)
                continue
            result: dict[str, Any] = {
                "status": "pass" if run.ok else "fail",
                "duration_ms": _ms(run.duration),
            }
            if not run.ok:
                healthy = False
                if run.error:
                    result["error"] = run.error
            results[name] = result
        status = 200 if healthy else 503
        return status, {"status": "healthy" if healthy else "unhealthy", "checks": results}

    def _start(self, name: str, func: Callable[[], object]) -> _Run:
        with self._lock:
            run = self._running.get(name)
            if run is not None:
                return run
            run = self._running[name] = _Run()
        # Run in a copy of the probe's context so the check's log records carry its ID.
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run,
            args=(self._execute, name, func, run),
            name=f"health-{name}",
            daemon=True,
        )
        thread.start()
        return run

    def _execute(self, name: str, func: Callable[[], object], run: _Run) -> None:
        try:
            run.ok = func() is not False
            if not run.ok:
                log.warning("health check %r failed", name)
        except Exception as err:
            # A check may fail in any way its dependency does; report it, never crash.
            run.error = type(err).__name__
            log.warning("health check %r raised", name, exc_info=True)
        finally:
            run.duration = time.perf_counter() - run.started
            with self._lock:
                self._running.pop(name, None)
            run.done.set()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
