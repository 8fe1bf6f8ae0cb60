"""The admin endpoints (scope ``admin``): schema, features, users, keys, tokens, garbage
collection, RocksDB, and the event log (scope ``admin`` or ``replicate``)."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from .. import schema as schema_mod
from ..accounts import validate_scopes
from ..errors import InvalidRequest
from ..pipeline.ops_request import read_body
from .base import ApiRequest, Endpoint, field, only_members, paginated

if TYPE_CHECKING:
    from ..accounts import KeyRing, TokenService, Users
    from ..repository import Repository

log = logging.getLogger(__name__)

MAX_SCHEMA_BYTES = 4 << 20
MAX_KEY_PREFIX = 256  # characters, as written
ADMIN = ("admin",)

# O(1) RocksDB properties: estimates kept by RocksDB itself, never a scan.
ROCKSDB_PROPERTIES = (
    "rocksdb.estimate-num-keys",
    "rocksdb.estimate-live-data-size",
    "rocksdb.total-sst-files-size",
    "rocksdb.live-sst-files-size",
    "rocksdb.cur-size-all-mem-tables",
    "rocksdb.num-running-compactions",
    "rocksdb.num-running-flushes",
    "rocksdb.estimate-pending-compaction-bytes",
    "rocksdb.num-live-versions",
)

_HEX_BYTE = re.compile(r"x[0-9a-fA-F]{2}")


def _printable_key(key: bytes) -> str:
    """``key`` as the key listing shows it: printable ASCII as it is, every other byte and
    the backslash as ``\\xNN``. :func:`_key_prefix` reads it back."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in key)


def _key_prefix(text: str) -> bytes:
    """The key bytes that ``text``, written the way :func:`_printable_key` writes keys,
    stands for: each ``\\xNN`` is the byte NN, so a key shown in the listing is a prefix."""

    def bad(message: str) -> InvalidRequest:
        return InvalidRequest(message, details={"field": "prefix"})

    if len(text) > MAX_KEY_PREFIX:
        raise bad(f"prefix is longer than {MAX_KEY_PREFIX} characters")
    if not text.isascii() or not text.isprintable():
        raise bad("prefix must be printable ASCII; write any other byte as \\xNN")
    head, *escapes = text.split("\\")
    key = bytearray(head.encode("ascii"))
    for part in escapes:
        if not _HEX_BYTE.match(part):
            raise bad(
                "prefix has a malformed escape: a backslash must start \\xNN (two hex "
                "digits); a backslash itself is written \\x5c"
            )
        key.append(int(part[1:3], 16))
        key += part[3:].encode("ascii")
    return bytes(key)


class AdminEndpoints:
    """Handlers for the admin routes."""

    def __init__(
        self, repo: Repository, users: Users, keyring: KeyRing, tokens: TokenService
    ) -> None:
        self.repo = repo
        self.users = users
        self.keyring = keyring
        self.tokens = tokens

    def endpoints(self) -> list[Endpoint]:
        e = Endpoint
        return [
            e("GET", "/admin/config", self.get_config, ADMIN),
            e("PUT", "/admin/config", self.put_config, ADMIN),
            e("GET", "/admin/entities", self.entities, ADMIN),
            e("GET", "/admin/routes", self.routes, ADMIN),
            e("GET", "/admin/blob-stores", self.blob_stores, ADMIN),
            e("GET", "/admin/auth/scopes", self.scopes, ADMIN),
            e("GET", "/admin/features", self.get_features, ADMIN),
            e("PUT", "/admin/features", self.put_features, ADMIN),
            e("GET", "/admin/users", self.list_users, ADMIN),
            e("POST", "/admin/users", self.create_user, ADMIN),
            e("PATCH", "/admin/users/<username>", self.patch_user, ADMIN),
            e("DELETE", "/admin/users/<username>", self.delete_user, ADMIN),
            e("GET", "/admin/keys", self.keys, ADMIN),
            e("POST", "/admin/keys/rotate", self.rotate_key, ADMIN),
            e("POST", "/admin/tokens", self.create_token, ADMIN),
            e("GET", "/admin/tokens", self.list_tokens, ADMIN),
            e("DELETE", "/admin/tokens/<token_id>", self.revoke_token, ADMIN),
            e("POST", "/admin/gc", self.gc, ADMIN),
            e("GET", "/rocksdb/stats", self.rocksdb_stats, ADMIN),
            e("GET", "/rocksdb/keys", self.rocksdb_keys, ADMIN),
            e("GET", "/v1/events", self.events, ("admin", "replicate"), any_scope=True),
        ]

    # -- schema ------------------------------------------------------------------------

    def get_config(self, req: ApiRequest) -> dict[str, Any]:
        return {"ok": True, "config": self.repo.schema}

    def put_config(self, req: ApiRequest) -> dict[str, Any]:
        raw = read_body(req.request, MAX_SCHEMA_BYTES, "schemas")
        self.repo.replace_schema(schema_mod.parse_text(raw), by=req.sub)
        return {"ok": True, "config": self.repo.schema}

    def entities(self, req: ApiRequest) -> dict[str, Any]:
        return {"ok": True, "entities": self.repo.schema["entities"]}

    def routes(self, req: ApiRequest) -> dict[str, Any]:
        routes = [
            {
                "id": r["id"],
                "method": r["method"],
                "path": r["path"],
                "ops": [step["op"] for step in r["pipeline"]],
            }
            for r in self.repo.schema["routes"]
        ]
        return {"ok": True, "routes": routes}

    def blob_stores(self, req: ApiRequest) -> dict[str, Any]:
        schema = self.repo.schema
        stores = {}
        for name, spec in schema["storage"]["blob_stores"].items():
            store = self.repo.runtime.blob_stores[name]
            stores[name] = {**spec, "free_bytes": store.free_bytes()}
        return {"ok": True, "blob_stores": stores}

    def scopes(self, req: ApiRequest) -> dict[str, Any]:
        auth = self.repo.schema.get("auth", {})
        return {"ok": True, "scopes": auth.get("scopes", []), "implies": auth.get("implies", {})}

    def get_features(self, req: ApiRequest) -> dict[str, Any]:
        return {"ok": True, "features": self.repo.schema.get("features", {})}

    def put_features(self, req: ApiRequest) -> dict[str, Any]:
        features = self.repo.set_features(req.json(), by=req.sub)
        return {"ok": True, "features": features}

    # -- users -------------------------------------------------------------------------

    def list_users(self, req: ApiRequest) -> Response:
        rows, nxt = self.users.list(
            req.int_arg("limit", 100, 1, 1000), req.request.args.get("cursor") or None
        )
        return paginated(req, {"ok": True, "users": rows, "next_cursor": nxt})

    def create_user(self, req: ApiRequest) -> tuple[int, dict[str, Any]]:
        body = req.json()
        only_members(body, ("username", "password", "scopes"), "POST /admin/users")
        scopes = body.get("scopes", ["read"])
        if not isinstance(scopes, list):
            raise InvalidRequest("scopes must be a list", details={"field": "scopes"})
        user = self.users.create(field(body, "username"), field(body, "password"), scopes)
        log.info("user %s created by %s", user["username"], req.sub)
        return 201, {"ok": True, "user": user}

    def patch_user(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        name = req.values["username"]
        if not body:
            raise InvalidRequest("PATCH takes one or more of scopes, disabled, password")
        unknown = sorted(set(body) - {"scopes", "disabled", "password"})
        if unknown:
            raise InvalidRequest(
                "PATCH takes any of scopes, disabled, password",
                details={"unknown": unknown},
            )
        user = self.users.get(name)
        # Check every field before changing anything, so a refused PATCH changes nothing.
        if "scopes" in body:
            if not isinstance(body["scopes"], list):
                raise InvalidRequest("scopes must be a list", details={"field": "scopes"})
            validate_scopes(body["scopes"])
        if "disabled" in body:
            field(body, "disabled", bool)
        if "password" in body:
            self.users.policy.enforce(field(body, "password"), user["username"])
        if "scopes" in body:
            user = self.users.set_scopes(name, body["scopes"])
        if "disabled" in body:
            user = self.users.set_disabled(name, body["disabled"])
        if "password" in body:
            user = self.users.set_password(name, body["password"])
        if body.get("disabled") or "password" in body:
            self.tokens.revoke_user_refresh(user["username"])
        log.info("user %s changed by %s (%s)", user["username"], req.sub, ", ".join(sorted(body)))
        return {"ok": True, "user": user}

    def delete_user(self, req: ApiRequest) -> tuple[int, None]:
        name = self.users.get(req.values["username"])["username"]
        self.users.delete(name)
        self.tokens.revoke_user_refresh(name)
        self._revoke_api_tokens_of(name)
        log.info("user %s deleted by %s", name, req.sub)
        return 204, None

    def _revoke_api_tokens_of(self, owner: str) -> None:
        # A user created later under the same name must not inherit these tokens.
        cursor = None
        while True:
            rows, cursor = self.tokens.list_api_tokens(1000, cursor, owner=owner)
            for row in rows:
                self.tokens.revoke_api_token(row["id"])
            if cursor is None:
                return

    # -- keys and tokens ---------------------------------------------------------------

    def keys(self, req: ApiRequest) -> dict[str, Any]:
        return {"ok": True, "keys": self.keyring.public_list()}

    def rotate_key(self, req: ApiRequest) -> dict[str, Any]:
        kid = self.keyring.rotate()
        log.info("signing key rotated by %s: new kid %s", req.sub, kid)
        return {"ok": True, "kid": kid, "keys": self.keyring.public_list()}

    def create_token(self, req: ApiRequest) -> tuple[int, dict[str, Any]]:
        body = req.json()
        only_members(body, ("name", "scopes", "expires_in"), "POST /admin/tokens")
        scopes = field(body, "scopes", list)
        kwargs: dict[str, Any] = {}
        if "expires_in" in body:
            kwargs["expires_in"] = field(body, "expires_in", int)
        made = self.tokens.create_api_token(
            req.sub,
            field(body, "name"),
            scopes,
            owner_scopes=req.principal.get("scopes"),
            **kwargs,
        )
        log.info("API token %s created by %s", made["id"], req.sub)
        return 201, {"ok": True, **made}

    def list_tokens(self, req: ApiRequest) -> Response:
        rows, nxt = self.tokens.list_api_tokens(
            req.int_arg("limit", 100, 1, 1000), req.request.args.get("cursor") or None
        )
        return paginated(req, {"ok": True, "tokens": rows, "next_cursor": nxt})

    def revoke_token(self, req: ApiRequest) -> tuple[int, None]:
        self.tokens.revoke_api_token(req.values["token_id"])
        log.info("API token %s revoked by %s", req.values["token_id"], req.sub)
        return 204, None

    # -- garbage collection ------------------------------------------------------------

    def gc(self, req: ApiRequest) -> dict[str, Any]:
        return self.repo.gc(
            dry_run=req.bool_arg("dry_run", False, empty_is_default=False), by=req.sub
        )

    # -- RocksDB and events ------------------------------------------------------------

    def rocksdb_stats(self, req: ApiRequest) -> dict[str, Any]:
        kv = self.repo.kv
        stats = {
            name.removeprefix("rocksdb."): kv.property_int(name) for name in ROCKSDB_PROPERTIES
        }
        return {"ok": True, "approximate": True, "stats": stats}

    def rocksdb_keys(self, req: ApiRequest) -> dict[str, Any]:
        prefix = _key_prefix(req.request.args.get("prefix", ""))
        limit = req.int_arg("limit", 100, 1, 1000)
        rows = list(self.repo.kv.scan(prefix, limit=limit + 1))
        keys = [_printable_key(k) for k, _ in rows[:limit]]
        return {"ok": True, "keys": keys, "truncated": len(rows) > limit}

    def events(self, req: ApiRequest) -> dict[str, Any]:
        after = req.int_arg("after", 0, 0, 2**63 - 1)
        limit = req.int_arg("limit", 100, 1, 1000)
        events, next_after = self.repo.events.read(after, limit)
        return {"ok": True, "events": events, "next_after": next_after}
