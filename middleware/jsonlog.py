"""Set up JSON-lines logging with request IDs, for a command-line entry point to call.

The middlewares never configure logging themselves (they are a library); a program that
serves them calls :func:`configure_json_logging` once at start-up. Each record becomes one
JSON object with ``time``, ``level``, ``logger``, ``message``, ``request_id`` and any
``extra`` fields (the access log's ``method``, ``path``, ``status``, ...). The formatter
comes from ``python-json-logger``; it escapes control characters, so a value taken from a
request cannot forge a log line.

Usage::

    from middleware.jsonlog import configure_json_logging
    configure_json_logging(level="INFO")
    logging.getLogger("goodrepo.access").info("ready")

Environ keys: none (the request ID comes from the context variable that
:class:`middleware.request_id.RequestIDMiddleware` sets).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

try:
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # python-json-logger < 3.1
    from pythonjsonlogger.jsonlogger import JsonFormatter

from middleware.request_id import RequestIDFilter

log = logging.getLogger(__name__)

_FORMAT = "%(levelname)s %(name)s %(message)s %(request_id)s"
_RENAMED = {"levelname": "level", "name": "logger"}
_MARK = "_goodrepo_json_handler"


def make_json_formatter() -> logging.Formatter:
    """Return the JSON formatter used by :func:`configure_json_logging`."""
    # timestamp="time": an ISO 8601 UTC time under the key "time".
    return JsonFormatter(_FORMAT, rename_fields=_RENAMED, timestamp="time")


def configure_json_logging(
    level: int | str = "INFO",
    *,
    stream: TextIO | None = None,
    logger: logging.Logger | None = None,
) -> logging.Handler:
    """Send records of ``logger`` (the root logger by default) to ``stream`` as JSON lines.

    ``level`` is a level number or name; ``stream`` defaults to standard error. Calling it
    again replaces the handler it installed before instead of adding a second one. Returns
    the handler, so a caller can remove it again.
    """
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(f"level: unknown logging level {level!r}")
        level = number
    target = logger if logger is not None else logging.getLogger()
    for old in list(target.handlers):
        if getattr(old, _MARK, False):
            target.removeHandler(old)
            old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_json_formatter())
    handler.addFilter(RequestIDFilter())
    setattr(handler, _MARK, True)
    target.addHandler(handler)
    target.setLevel(level)
    return handler
