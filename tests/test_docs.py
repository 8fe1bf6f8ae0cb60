"""The documentation stays in step with the code: OpenAPI file, README and CI script."""

from __future__ import annotations

import json
import re
from pathlib import Path

from openapi_spec_validator import validate

from goodrepo import schema as schema_mod

ROOT = Path(__file__).resolve().parent.parent


def test_openapi_file_is_valid_and_lists_every_default_route() -> None:
    spec = json.loads((ROOT / "docs" / "openapi.json").read_text())
    validate(spec)
    for route in schema_mod.default_schema()["routes"]:
        path = re.sub(r"sha256:\{hex\}", "{digest}", route["path"])
        candidates = {route["path"], path}
        operations = [spec["paths"][p] for p in candidates if p in spec["paths"]]
        assert operations, f"{route['path']} is missing from docs/openapi.json"
        assert any(route["method"].lower() in op for op in operations), route["id"]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_schema_reference_names_every_op() -> None:
    from goodrepo.pipeline import OPS

    text = (ROOT / "docs" / "schema.md").read_text()
    missing = [name for name in OPS if f"`{name}`" not in text and name not in text]
    assert missing == []
