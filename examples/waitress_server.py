"""Serve the standard goodrepo stack with plain waitress.

A short program close to ``goodrepo serve``: the stack comes from
:func:`goodrepo.create_app` (settings from defaults < ``GOODREPO_CONFIG`` < ``GOODREPO_*``
environment variables < the options below), a data directory without users gets an
``admin`` user (with ``GOODREPO_ADMIN_PASSWORD``, or a generated password printed once),
and ``waitress.serve`` runs it until Ctrl-C or SIGTERM.

Run it (from a checkout, after ``pip install .``)::

    python examples/waitress_server.py --port 8080 --data ./data

Try it::

    TOKEN=$(curl -s -X POST localhost:8080/auth/login -H 'Content-Type: application/json' \\
      -d '{"username": "admin", "password": "<the printed password>"}' \\
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    echo hello > app.tar.gz
    curl -X PUT --data-binary @app.tar.gz -H "Authorization: Bearer $TOKEN" \\
      localhost:8080/v1/acme/app/1.0.0/linux-amd64/blob
    curl -H "Authorization: Bearer $TOKEN" localhost:8080/v1/acme/app/latest
    curl localhost:8080/health/ready

It differs from ``goodrepo serve``, which is the one to use in production:

- logs are always JSON lines on standard error (``GOODREPO_LOG_FORMAT=text`` is ignored);
- it never runs ``app.maintenance()`` (``goodrepo serve`` runs it at start and hourly), so
  expired refresh-token and API-token records stay in the store;
- on a stop signal, waitress's ``run()`` does not close the listening socket: it only shuts
  down its task dispatcher, which lets the worker threads finish the requests they are
  handling for up to 5 seconds and cancels the queued ones. Their answers may not reach
  the clients, and new connections are not refused until the process exits.
  ``goodrepo serve`` closes the socket at once and sends those answers before it exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

import waitress

from goodrepo import create_app
from goodrepo.errors import ConfigurationError, InvalidConfig, StoreError
from middleware.jsonlog import configure_json_logging


def _raise_interrupt(signum: int, frame: Any) -> None:
    # waitress stops its loop on KeyboardInterrupt: treat SIGTERM like Ctrl-C, once; a
    # second SIGTERM ends the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the standard stack on waitress; returns the exit code."""
    parser = argparse.ArgumentParser(description="Serve goodrepo with plain waitress.")
    parser.add_argument(
        "--data",
        help="data directory (default: $GOODREPO_DATA, else data in the $GOODREPO_CONFIG "
        "file, else ./data)",
    )
    parser.add_argument("--host", help="address to listen on (default: $GOODREPO_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (default: $GOODREPO_PORT)")
    args = parser.parse_args(argv)

    try:
        app = create_app(data=args.data, host=args.host, port=args.port)
    except (ConfigurationError, InvalidConfig) as err:  # a bad setting or schema file
        print(f"configuration: {err}", file=sys.stderr)
        return 2
    except StoreError as err:  # e.g. another process holds the data directory
        print(f"cannot open the repository: {err.message}", file=sys.stderr)
        return 1
    settings = app.settings
    configure_json_logging(settings.log_level.upper())
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        password = app.bootstrap_admin()
        if password:
            print(
                f"created user 'admin' with this password (shown once, store it now):\n"
                f"  {password}",
                flush=True,
            )
        # waitress refuses bodies over 1 GiB by default; let the blob stores' limits rule.
        waitress.serve(
            app,
            host=settings.host,
            port=settings.port,
            threads=settings.threads,
            channel_timeout=settings.channel_timeout,
            max_request_body_size=app.request_body_limit(),
            # waitress drops X-Forwarded-For by default; with trusted proxies configured,
            # keep it for goodrepo, which believes it only from those addresses.
            clear_untrusted_proxy_headers=not settings.trusted_proxies,
        )
    except KeyboardInterrupt:
        pass  # a stop signal before waitress started
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
