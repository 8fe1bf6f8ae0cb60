"""Route pipelines: the closed-world op vocabulary, templates and compiled runtimes.

Importing this package registers every op in :data:`registry.OPS`.
"""

from __future__ import annotations

from . import ops_blob, ops_request, ops_respond, ops_store  # noqa: F401  (registration)
from .registry import OPS, PENDING, Arg, OpSpec
from .runtime import Runtime, Services

__all__ = ["OPS", "PENDING", "Arg", "OpSpec", "Runtime", "Services"]
