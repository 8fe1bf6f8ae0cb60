"""goodrepo: an embeddable, schema-driven artifact repository for Python web stacks."""

from __future__ import annotations

__version__ = "0.1.0.dev0"
