"""Mount goodrepo under ``/repo`` beside a Django project, in one file.

The Django project is configured in code (``django.conf.settings.configure``) and has one
view of its own, ``/hello``. The WSGI application is werkzeug's ``DispatcherMiddleware``
around Django's ``get_wsgi_application()``: paths under ``/repo`` go to the standard
goodrepo stack built by :func:`goodrepo.create_app`, everything else to Django. goodrepo
sees ``SCRIPT_NAME=/repo``, so its routes keep their names (``/repo/auth/login``,
``/repo/health/ready``) and the URLs it sends back (``Location``, ``Link``) carry the
prefix. Django never reads the repository's request bodies: uploads stream straight into
the blob store. (waitress itself refuses request bodies over 1 GiB unless
``max_request_body_size`` is raised, as examples/waitress_server.py does.)

Settings come from ``GOODREPO_*`` environment variables (see docs/configuration.md); a
fresh data directory gets an ``admin`` user whose generated password is printed once
(or set ``GOODREPO_ADMIN_PASSWORD``). ``DJANGO_SECRET_KEY`` sets Django's secret key
(a random one per process otherwise; this project has no sessions or forms that need a
stable one).

Run it (after ``pip install . django``)::

    python examples/django_mount.py --port 8080 --data ./data

Try it::

    curl localhost:8080/hello
    TOKEN=$(curl -s -X POST localhost:8080/repo/auth/login -H 'Content-Type: application/json' \\
      -d '{"username": "admin", "password": "<the printed password>"}' \\
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    echo hello > app.tar.gz
    curl -i -X PUT --data-binary @app.tar.gz -H "Authorization: Bearer $TOKEN" \\
      localhost:8080/repo/v1/acme/app/1.0.0/linux-amd64/blob   # Location: /repo/v1/...
    curl -i -H "Authorization: Bearer $TOKEN" 'localhost:8080/repo/v1/acme/app/versions?limit=1'

In an existing project, do the same in its ``wsgi.py`` (``create_app`` creates no user;
on a fresh data directory, ``bootstrap_admin`` creates ``admin`` and returns its generated
password, or ``None`` when ``GOODREPO_ADMIN_PASSWORD`` gave it or a user exists)::

    repo = goodrepo.create_app(data="/var/lib/goodrepo")
    if (password := repo.bootstrap_admin()) is not None:
        print("goodrepo admin password:", password)
    application = DispatcherMiddleware(get_wsgi_application(), {"/repo": repo})
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from typing import Any

import django
import waitress
from django.conf import settings as django_settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from goodrepo import create_app
from goodrepo.errors import ConfigurationError, InvalidConfig, StoreError
from goodrepo.stack import GoodrepoApp
from middleware.jsonlog import configure_json_logging

PREFIX = "/repo"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]  # add the names the project is served as


def hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "from Django"})


urlpatterns = [path("hello", hello)]


def configure_django() -> None:
    """Configure Django for this one-file project (once per process)."""
    if django_settings.configured:
        return
    django_settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50),
        ALLOWED_HOSTS=ALLOWED_HOSTS,
        ROOT_URLCONF=__name__,  # the urlpatterns above
        INSTALLED_APPS=[],
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.middleware.common.CommonMiddleware",
        ],
        USE_TZ=True,
    )
    django.setup()


def make_app(data_dir: str | os.PathLike[str] | None, **options: Any) -> DispatcherMiddleware:
    """The project's WSGI application: Django, with goodrepo at ``/repo`` on ``data_dir``.

    ``data_dir`` None means the ``data`` setting (``GOODREPO_DATA``, default ``./data``).
    ``options`` go to :func:`goodrepo.create_app`: settings such as
    ``allow_anon_read=True``, or ``password_hasher``. The goodrepo app is
    ``application.mounts["/repo"]``; close it when done.
    """
    configure_django()
    repo = create_app(data=data_dir, **options)
    return DispatcherMiddleware(get_wsgi_application(), {PREFIX: repo})


def _raise_interrupt(signum: int, frame: Any) -> None:
    # waitress stops its loop on KeyboardInterrupt: treat SIGTERM like Ctrl-C, once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the project with goodrepo under ``/repo`` on waitress; returns the exit code."""
    parser = argparse.ArgumentParser(description="Django with goodrepo mounted at /repo.")
    parser.add_argument("--data", help="data directory (default: $GOODREPO_DATA or ./data)")
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    args = parser.parse_args(argv)

    try:
        application = make_app(args.data)
    except (ConfigurationError, InvalidConfig) as err:  # a bad setting or schema file
        print(f"configuration: {err}", file=sys.stderr)
        return 2
    except StoreError as err:  # e.g. another process holds the data directory
        print(f"cannot open the repository: {err.message}", file=sys.stderr)
        return 1
    repo: GoodrepoApp = application.mounts[PREFIX]
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
            application,
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
