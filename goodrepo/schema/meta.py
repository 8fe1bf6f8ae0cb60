"""The shape of a goodrepo schema, as a JSON Schema: the first, structural pass of loading.

The second pass (:mod:`goodrepo.schema.checks`) checks what a JSON Schema cannot say:
references between sections, the op vocabulary, transactions and variables in pipelines.
"""

from __future__ import annotations

from typing import Any

from ..entities import NORMALIZERS

_NAME = {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_.-]{0,63}$"}
_COUNT = {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}
_POSITIVE = {"type": "integer", "minimum": 1}
MAX_AGE_DAYS = 36525  # gc.retention.min_age_days: a hundred years


def _obj(
    props: dict[str, Any], required: list[str] | None = None, *, closed: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    return out


def _map(values: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "propertyNames": _NAME, "additionalProperties": values}


FIELD = _obj(
    {
        "normalize": {"type": "array", "items": {"enum": sorted(NORMALIZERS)}},
        "pattern": {"type": "string", "minLength": 1},
        "max_length": {"type": "integer", "minimum": 1, "maximum": 1024},
        "description": {"type": "string"},
    },
    ["pattern"],
)

ENTITY = _obj(
    {
        "fields": {**_map(FIELD), "minProperties": 1},
        "primary_key": {"type": "array", "items": {"type": "string"}},
        "versioning": _obj(
            {"field": {"type": "string"}, "scheme": {"enum": ["semver", "pep440"]}},
            ["field", "scheme"],
        ),
        "description": {"type": "string"},
    },
    ["fields"],
)

BLOB_STORE = _obj(
    {
        "kind": {"enum": ["filesystem"]},
        "root": {"type": "string", "minLength": 1},
        "path_template": {"type": "string", "minLength": 1},
        "min_blob_bytes": _COUNT,
        "max_blob_bytes": _POSITIVE,
    },
    ["kind", "root", "path_template"],
)

UPSTREAM = _obj(
    {
        "url": {"type": "string", "pattern": "^https?://[^\\s]+$"},
        "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
        "connect_timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
        "backoff_seconds": {"type": "number", "minimum": 0, "maximum": 60},
        "token_env": {"type": "string"},
    },
    ["url", "timeout_seconds", "retries"],
)

STEP = {
    "type": "object",
    "required": ["op"],
    "properties": {"op": {"type": "string"}},
}

ROUTE = _obj(
    {
        "id": _NAME,
        "method": {"enum": ["GET", "PUT", "POST", "PATCH", "DELETE"]},
        "path": {"type": "string", "pattern": "^/[A-Za-z0-9_{}:./-]*$"},
        "public": {"type": "boolean"},
        "description": {"type": "string"},
        "pipeline": {"type": "array", "items": STEP, "minItems": 1},
    },
    ["id", "method", "path", "pipeline"],
)

META_SCHEMA: dict[str, Any] = _obj(
    {
        "schema_version": {"const": 1},
        "description": {"type": "string"},
        "entities": {**_map(ENTITY), "minProperties": 1},
        "storage": _obj(
            {
                "blob_stores": {**_map(BLOB_STORE), "minProperties": 1},
                "kv_stores": {**_map(_obj({"kind": {"enum": ["rocksdb"]}}, ["kind"]))},
                "documents": _map(
                    _obj(
                        {
                            "store": {"type": "string"},
                            "entity": {"type": "string"},
                            "key": {"type": "string", "minLength": 1},
                        },
                        ["store", "key"],
                    )
                ),
            },
            ["blob_stores", "kv_stores", "documents"],
        ),
        "indexes": {
            "type": "array",
            "items": _obj(
                {
                    "name": _NAME,
                    "kind": {"enum": ["versions"]},
                    "entity": {"type": "string"},
                    "document": {"type": "string"},
                    "group_by": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                        "maxItems": 4,
                    },
                    "version_field": {"type": "string"},
                    "variant_field": {"type": "string"},
                },
                ["name", "kind", "entity", "group_by"],
            ),
        },
        "auth": _obj(
            {
                "scopes": {"type": "array", "items": _NAME, "uniqueItems": True},
                "implies": _map({"type": "array", "items": {"type": "string"}}),
            },
            ["scopes"],
        ),
        "caching": _obj(
            {
                "enabled": {"type": "boolean"},
                "max_entries": _POSITIVE,
                "max_bytes": _POSITIVE,
                "default_ttl_seconds": {"type": "number", "exclusiveMinimum": 0},
                "max_entry_bytes": _POSITIVE,
            }
        ),
        "ops": _obj(
            {
                "allowed": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                "limits": _obj(
                    {
                        "max_pipeline_ops": {"type": "integer", "minimum": 1, "maximum": 256},
                        "max_request_body_bytes": _POSITIVE,
                        "max_json_bytes": {"type": "integer", "minimum": 2, "maximum": 64 << 20},
                        "max_kv_value_bytes": {
                            "type": "integer",
                            "minimum": 64,
                            "maximum": 16 << 20,
                        },
                    },
                    [
                        "max_pipeline_ops",
                        "max_request_body_bytes",
                        "max_json_bytes",
                        "max_kv_value_bytes",
                    ],
                ),
            },
            ["allowed", "limits"],
        ),
        "validation": _obj({"json_schemas": _map({"type": "object"})}),
        "features": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "upstreams": _map(UPSTREAM),
        "events": _obj({"types": {"type": "array", "items": _NAME, "uniqueItems": True}}),
        "replication": _obj(
            {
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 10000},
                "poll_interval_seconds": {"type": "number", "minimum": 0.1, "maximum": 3600},
            }
        ),
        "gc": _obj(
            {
                # At most 100 years: times computed from them stay dates.
                "grace_period_seconds": {"type": "integer", "minimum": 0, "maximum": 3155760000},
                "retention": _obj(
                    {
                        "keep_tagged": {"type": "boolean"},
                        "keep_last_versions": {
                            "type": ["integer", "null"],
                            "minimum": 1,
                            "maximum": 2**53 - 1,
                        },
                        "min_age_days": {"type": "integer", "minimum": 0, "maximum": MAX_AGE_DAYS},
                    }
                ),
            }
        ),
        "invariants": {
            "type": "array",
            "items": _obj(
                {
                    "id": _NAME,
                    "kind": {"enum": ["write_once", "events_for_writes", "scoped_routes"]},
                    "document": {"type": "string"},
                    "unless_feature": {"type": "string"},
                    "description": {"type": "string"},
                },
                ["id", "kind"],
            ),
        },
        "routes": {"type": "array", "items": ROUTE, "minItems": 1},
    },
    ["schema_version", "entities", "storage", "ops", "routes"],
)
