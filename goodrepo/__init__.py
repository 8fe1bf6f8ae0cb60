"""goodrepo: an embeddable, schema-driven artifact repository for Python web stacks.

Usage::

    from goodrepo import Repository, create_app
    repo = Repository.open("./data")        # the core only: repo.wsgi_app()
    app = create_app(data="./data")          # the standard stack, from settings
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

__all__ = ["Repository", "Settings", "create_app", "__version__"]

if TYPE_CHECKING:
    from .repository import Repository
    from .settings import Settings
    from .stack import create_app


def __getattr__(name: str) -> Any:
    # Imported on first use, so that ``import goodrepo`` (and reading ``__version__`` at
    # build time) stays cheap.
    if name == "Repository":
        from .repository import Repository

        return Repository
    if name == "Settings":
        from .settings import Settings

        return Settings
    if name == "create_app":
        from .stack import create_app

        return create_app
    raise AttributeError(f"module 'goodrepo' has no attribute {name!r}")
