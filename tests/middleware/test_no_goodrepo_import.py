"""The middlewares stand alone: importing every one of them leaves goodrepo unimported."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import middleware

PROBE = """
import importlib, json, pkgutil, sys
import middleware
names = sorted(f"middleware.{m.name}" for m in pkgutil.iter_modules(middleware.__path__))
for name in names:
    importlib.import_module(name)
print(json.dumps({
    "imported": names,
    "goodrepo": sorted(m for m in sys.modules if m == "goodrepo" or m.startswith("goodrepo.")),
}))
"""


def test_importing_every_middleware_leaves_goodrepo_out() -> None:
    root = Path(middleware.__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["goodrepo"] == []
    expected = {
        "middleware.auth",
        "middleware.cors",
        "middleware.errors",
        "middleware.health",
        "middleware.jsonlog",
        "middleware.keys",
        "middleware.metrics",
        "middleware.ratelimit",
        "middleware.request_id",
        "middleware.security_headers",
    }
    assert expected <= set(report["imported"])


def test_no_middleware_source_mentions_a_goodrepo_import() -> None:
    for module in pkgutil.iter_modules(middleware.__path__):
        source = (Path(middleware.__path__[0]) / f"{module.name}.py").read_text()
        assert "import goodrepo" not in source
        assert "from goodrepo" not in source
