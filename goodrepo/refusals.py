"""waitress's own refusals, answered by the goodrepo stack in the shared JSON error shape.

waitress refuses some requests before any WSGI code sees them: a body over
``max_request_body_size`` (413), a request line or headers over its limits (431), a
malformed request (400), a ``Transfer-Encoding`` other than ``chunked`` (501). By itself it
answers those in plain text, without ``X-Request-ID``. ``goodrepo serve`` installs
:class:`RefusalChannel` on its listeners instead: the refusal then goes through the app
with the body left unread and ``(status, code, message)`` under
:data:`~goodrepo.stack.SERVER_REFUSAL` in the environ, and the stack answers it like any
other error: JSON, request ID, security and CORS headers, metrics, access-log line. The
connection is closed after the answer, as waitress does, since the body was not read.

Usage::

    for listener in listeners:  # waitress's listening servers
        listener.channel_class = RefusalChannel
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any

from waitress.channel import HTTPChannel
from waitress.task import ErrorTask, WSGITask

from .stack import SERVER_REFUSAL

log = logging.getLogger(__name__)

_QUOTED = re.compile(r'\s*"[^"]*"')  # waitress quotes request bytes in some messages
_UNPARSED = {"command": "", "path": "", "query": "", "request_uri": "", "url_scheme": "http"}


def refusal_of(error: Any, adj: Any) -> tuple[int, str, str]:
    """``(status, code, message)`` for a waitress ``Error``; never echoes request bytes."""
    status = int(getattr(error, "code", 500))
    if status == 413:
        largest = adj.max_request_body_size - 1  # waitress refuses the limit itself
        return 413, "PAYLOAD_TOO_LARGE", f"the request body is over {largest} bytes"
    if status == 431:
        return (
            431,
            "INVALID_REQUEST",
            (f"the request line and headers are over {adj.max_request_header_size} bytes"),
        )
    if status == 501:
        return 501, "NOT_IMPLEMENTED", "the only Transfer-Encoding accepted is chunked"
    if 400 <= status < 500:
        detail = _QUOTED.sub("", str(getattr(error, "body", ""))).strip().rstrip(".")
        return status, "INVALID_REQUEST", f"malformed request: {detail or 'refused'}"
    return 500, "INTERNAL_ERROR", "internal server error"


class RefusalTask(WSGITask):
    """A waitress task that answers the parser's refusal through the app (see module)."""

    def get_environment(self) -> dict[str, Any]:
        request = self.request
        # A request refused early has not had its first line parsed.
        for name, default in _UNPARSED.items():
            if not isinstance(getattr(request, name, None), str):
                setattr(request, name, default)
        environ: dict[str, Any] = super().get_environment()
        environ["wsgi.input"] = io.BytesIO()  # whatever arrived of the body stays unread
        environ["CONTENT_LENGTH"] = "0"
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ[SERVER_REFUSAL] = refusal_of(self.request.error, self.channel.adj)
        return environ

    def execute(self) -> None:
        self.set_close_on_finish()  # the rest of the request is still on the wire
        try:
            super().execute()
        except Exception:
            if self.wrote_header:
                raise
            log.exception("answering a refused request failed; waitress answers instead")
            self.response_headers: list[tuple[str, str]] = []
            self.complete = True
            ErrorTask.execute(self)


class RefusalChannel(HTTPChannel):
    """waitress's HTTP channel with :class:`RefusalTask` for refused requests."""

    error_task_class = RefusalTask

    def send_continue(self) -> None:
        # waitress would send "100 Continue" for a request it has already refused (a body
        # over the limit, a bad Content-Length), then wait for that body and never answer.
        request = self.request
        if request is not None and request.error is not None:
            request.expect_continue = False
            return
        super().send_continue()
