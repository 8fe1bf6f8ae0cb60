"""Mount goodrepo under ``/repo`` inside a Flask application.

The Flask app keeps its own routes (``/`` and ``/hello``); werkzeug's
``DispatcherMiddleware`` sends every path under ``/repo`` to the standard goodrepo stack
built by :func:`goodrepo.create_app`. The repository sees ``SCRIPT_NAME=/repo`` and paths
relative to it, so its own routes, public paths and probes keep their names
(``/repo/auth/login``, ``/repo/health/ready``), and the URLs it sends back
(``Location``, ``Link``) carry the ``/repo`` prefix. Flask's request handling never
touches the repository's requests: uploads and downloads stream straight through.
(waitress itself refuses request bodies over 1 GiB unless ``max_request_body_size`` is
raised, as examples/waitress_server.py does.)

Settings come from ``GOODREPO_*`` environment variables (see docs/configuration.md); a
fresh data directory gets an ``admin`` user whose generated password is printed once
(or set ``GOODREPO_ADMIN_PASSWORD``).

Run it (after ``pip install . flask``)::

    python examples/flask_mount.py --port 8080 --data ./data

Try it::

    curl localhost:8080/hello
    TOKEN=$(curl -s -X POST localhost:8080/repo/auth/login -H 'Content-Type: application/json' \\
      -d '{"username": "admin", "password": "<the printed password>"}' \\
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    echo hello > app.tar.gz
    curl -i -X PUT --data-binary @app.tar.gz -H "Authorization: Bearer $TOKEN" \\
      localhost:8080/repo/v1/acme/app/1.0.0/linux-amd64/blob   # Location: /repo/v1/...
    curl -H "Authorization: Bearer $TOKEN" localhost:8080/repo/v1/acme/app/latest

In your own application these lines do it (``create_app`` creates no user; on a fresh data
directory, ``bootstrap_admin`` creates ``admin`` and returns its generated password, or
``None`` when ``GOODREPO_ADMIN_PASSWORD`` gave it or a user exists)::

    repo = goodrepo.create_app(data="/var/lib/goodrepo")
    if (password := repo.bootstrap_admin()) is not None:
        print("goodrepo admin password:", password)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/repo": repo})
    app.extensions["goodrepo"] = repo            # to reach it later: close(), users, ...
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import waitress
from flask import Flask, jsonify
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from goodrepo import create_app
from goodrepo.errors import ConfigurationError, InvalidConfig, StoreError
from goodrepo.stack import GoodrepoApp
from middleware.jsonlog import configure_json_logging

PREFIX = "/repo"


def make_app(data_dir: str | os.PathLike[str] | None, **options: Any) -> Flask:
    """A Flask app with goodrepo mounted at ``/repo``, on ``data_dir``.

    ``data_dir`` None means the ``data`` setting (``GOODREPO_DATA``, default ``./data``).
    ``options`` go to :func:`goodrepo.create_app`: settings such as
    ``allow_anon_read=True``, or ``password_hasher``. The goodrepo app is
    ``app.extensions["goodrepo"]``; close it when done.
    """
    app = Flask(__name__)

    @app.get("/")
    def index() -> Any:
        return jsonify(
            {"app": "a Flask application", "repository": f"{PREFIX}/", "hello": "/hello"}
        )

    @app.get("/hello")
    def hello() -> Any:
        return jsonify({"hello": "from Flask"})

    repo = create_app(data=data_dir, **options)
    app.extensions["goodrepo"] = repo
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {PREFIX: repo})
    return app


def _raise_interrupt(signum: int, frame: Any) -> None:
    # waitress stops its loop on KeyboardInterrupt: treat SIGTERM like Ctrl-C, once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the Flask app with goodrepo under ``/repo`` on waitress; returns the exit code."""
    parser = argparse.ArgumentParser(description="Flask with goodrepo mounted at /repo.")
    parser.add_argument("--data", help="data directory (default: $GOODREPO_DATA or ./data)")
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    args = parser.parse_args(argv)

    try:
        app = make_app(args.data)
    except (ConfigurationError, InvalidConfig) as err:  # a bad setting or schema file
        print(f"configuration: {err}", file=sys.stderr)
        return 2
    except StoreError as err:  # e.g. another process holds the data directory
        print(f"cannot open the repository: {err.message}", file=sys.stderr)
        return 1
    repo: GoodrepoApp = app.extensions["goodrepo"]
    configure_json_logging(repo.settings.log_level.upper())
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        password = repo.bootstrap_admin()
        if password:
            print(
                f"created user 'admin' with this password (shown once, store it now):\n"
                f"  {password}",
                flush=True,
            )
        waitress.serve(
            app,
            host=args.host,
            port=args.port,
            threads=repo.settings.threads,
            # waitress drops X-Forwarded-For by default; with trusted proxies configured,
            # keep it for goodrepo, which believes it only from those addresses.
            clear_untrusted_proxy_headers=not repo.settings.trusted_proxies,
        )
    except KeyboardInterrupt:
        pass  # a stop signal before waitress started
    finally:
        repo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
