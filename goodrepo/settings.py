"""Settings: defaults < a TOML file < environment variables < keyword arguments.

Every setting has an environment variable ``GOODREPO_<NAME>`` (``allow_anon_read`` also
answers to ``ALLOW_ANON_READ``, as in the original project). The TOML file holds the
same names as top-level keys; its path comes from ``config_file`` or ``GOODREPO_CONFIG``.
An empty environment variable counts as unset. Everything is validated once, at load:
an unknown key in the file or the keyword arguments, a bad value or a contradiction
raises :class:`~goodrepo.errors.ConfigurationError` naming each problem, the setting and
where its value came from. Unknown ``GOODREPO_*`` variables only log a warning, since the
environment is shared with other software.

Usage::

    settings = Settings.load(config_file="goodrepo.toml", port=9000)
    settings.port            # 9000
    settings.origins["port"] # "keyword argument port"
    Settings.describe()      # the table docs/configuration.md is written from

A front end can say where its overrides came from: ``Settings.load(port=9000,
override_origins={"port": "--port"})`` reports a bad port as ``(from --port)``.
"""

from __future__ import annotations

import codecs
import dataclasses
import ipaddress
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from middleware.cors import canonical_origin
from middleware.ratelimit import parse_limits

from .errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

ENV_PREFIX = "GOODREPO_"
CONFIG_ENV = "GOODREPO_CONFIG"
DAY = 86400
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_SIZE_RE = re.compile(r"(\d+)\s*([kmgt]i?b|b)?", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})
_STORAGE_SCHEMES = ("memory://", "redis://", "rediss://", "redis+sentinel://", "redis+cluster://")
_ONE_YEAR = 365 * DAY
# Redis URL query parameters that carry a password (redis-py's, and the sentinel's).
_PASSWORD_PARAM = re.compile(r"((?:^|[&;])[^=&;]*password=)[^&;]*", re.IGNORECASE)


def _shown(value: Any) -> str:
    """``repr(value)`` for an error message, cut short: a value may be huge."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


# -- value parsers: each takes a raw value (text from the environment, or a TOML or
# -- Python value) and returns the typed value, or raises ValueError saying what it wants.


def _text(optional: bool = False, pattern: str = r"[\x21-\x7e]{1,256}") -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not re.fullmatch(pattern, value.strip()):
            raise ValueError(f"must be printable text without spaces, got {_shown(value)}")
        return value.strip()

    return parse


def _password(value: Any) -> Any:
    # The length and the rest of the password policy are checked with the other
    # settings, since they depend on password_min_length.
    if value is not None and not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _secret(min_length: int) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or len(value) < min_length:
            raise ValueError(f"must be a string of at least {min_length} characters")
        return value

    return parse


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            try:
                value = int(value)
            except ValueError:  # more digits than int() converts: out of range anyway
                pass
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}, got {_shown(value)}")
        return value

    return parse


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"must be true or false (also 1/0, yes/no, on/off), got {_shown(value)}")


def _listing(item: Callable[[str], str]) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(
                f"must be a comma-separated string or a list of strings, got {_shown(value)}"
            )
        return tuple(dict.fromkeys(item(v.strip()) for v in value if v.strip()))

    return parse


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError as err:
        raise ValueError(f"{text!r} is not an IP address or CIDR network") from err


def _origin(text: str) -> str:
    if text == "*":
        return text
    if "*" in text:
        raise ValueError(
            f'{text!r}: an origin has no wildcards; list each one (or "*" for any origin)'
        )
    try:
        origin = canonical_origin(text)
    except ValueError:
        origin = None
    if origin is None or origin.split(":", 1)[0] not in ("http", "https"):
        raise ValueError(f"{text!r} is not an origin such as https://app.example.com[:port]")
    return origin


def _rate(value: Any) -> str:
    try:
        items = parse_limits(value)
    except ValueError as err:
        reason = f" ({err})"
    else:
        if len(items) == 1:
            return str(value).strip()
        reason = ""
    raise ValueError(f"must be one rate limit such as '5/minute', got {_shown(value)}{reason}")


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {_shown(value)}")
        return value.strip().lower()

    return parse


def _size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"must be a number of bytes, optionally with a unit (B, KB, MB, GB, TB, KiB, "
            f"MiB, GiB, TiB), got {_shown(value)}"
        )
    return int(match[1]) * _UNITS[(match[2] or "b").lower()]


def _storage(value: Any) -> str:
    if not isinstance(value, str) or not value.strip().startswith(_STORAGE_SCHEMES):
        raise ValueError(f"must start with one of {', '.join(_STORAGE_SCHEMES)}")
    uri = value.strip()
    scheme = uri.split("://", 1)[0]
    if scheme == "memory":
        return uri
    # The messages never quote the value: it may hold a password.
    several = scheme in ("redis+sentinel", "redis+cluster")
    try:
        parts = urlsplit(uri)
        hosts = parts.netloc.rpartition("@")[2]
        locations = hosts.split(",") if several else [hosts]
        addresses = [_split_url(f"//{location.strip()}") for location in locations]
    except ValueError:
        raise ValueError(
            "is not a valid URL: a port must be a number from 0 to 65535, an IPv6 address "
            "must be written in [ ]"
        ) from None
    if several and any(not a.hostname or a.port is None for a in addresses):
        raise ValueError(f"must name every server as host:port: {scheme}://h1:port,h2:port/...")
    if scheme == "redis+sentinel" and not parts.path.strip("/"):
        raise ValueError("must end with the service name: redis+sentinel://host:port/name")
    return uri


def _path(optional: bool = False, must_exist: bool = False) -> Callable[[Any], Path | None]:
    def parse(value: Any) -> Path | None:
        if value is None and optional:
            return None
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise ValueError(f"must be a path, got {_shown(value)}")
        if "\0" in str(value):
            raise ValueError("must be a path, without NUL characters")
        path = Path(str(value).strip()).expanduser()
        if must_exist and not path.is_file():
            raise ValueError(f"{str(path)!r} is not a readable file")
        return path

    return parse


def _hsts(value: Any) -> int:
    try:
        if isinstance(value, bool) or (
            isinstance(value, str) and not re.fullmatch(r"\s*[+-]?\d+\s*", value)
        ):
            return _ONE_YEAR if _boolean(value) else 0
        return _integer(0, 2 * _ONE_YEAR)(value)
    except ValueError:
        raise ValueError(
            f"must be true, false or a max-age in seconds, an integer from 0 to "
            f"{2 * _ONE_YEAR}, got {_shown(value)}"
        ) from None


def _setting(
    default: Any,
    parse: Callable[[Any], Any],
    doc: str,
    *,
    env: tuple[str, ...] = (),
    secret: bool = False,
) -> Any:
    meta = {"parse": parse, "doc": doc, "env": env, "secret": secret}
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of a goodrepo server, validated; see :meth:`describe`."""

    data: Path = _setting("./data", _path(), "Data directory: the KV store and blobs.")
    admin_password: str | None = _setting(
        None,
        _password,
        "Password of the `admin` user created on a data directory without users; when "
        "unset a password is generated and printed once. Ignored once a user exists, but "
        "still checked against the password policy when set.",
        secret=True,
    )
    allow_anon_read: bool = _setting(
        False,
        _boolean,
        "Let requests without a token read artifacts (GET/HEAD of read endpoints).",
        env=("GOODREPO_ALLOW_ANON_READ", "ALLOW_ANON_READ"),
    )
    cors_origins: tuple[str, ...] = _setting(
        (),
        _listing(_origin),
        'Origins allowed by CORS, comma-separated; "*" alone allows any. Empty: CORS closed.',
    )
    login_rate_limit: str = _setting(
        "5/minute",
        _rate,
        "Login attempts per client address; failed logins per username and per address.",
    )
    access_token_ttl: int = _setting(
        900, _integer(60, DAY), "Lifetime of access tokens, in seconds (60 to 86400)."
    )
    refresh_token_ttl: int = _setting(
        30 * DAY,
        _integer(300, _ONE_YEAR),
        "Lifetime of a refresh token, in seconds; each use starts a new period.",
    )
    api_token_max_ttl: int = _setting(
        _ONE_YEAR,
        _integer(3600, 2 * _ONE_YEAR),
        "Longest lifetime an API token may be created with, in seconds.",
    )
    jwt_issuer: str | None = _setting(
        None, _text(optional=True), "`iss` claim of issued tokens, required on verification."
    )
    jwt_audience: str | None = _setting(
        None, _text(optional=True), "`aud` claim of issued tokens, required on verification."
    )
    jwt_leeway: int = _setting(
        30, _integer(0, 300), "Clock skew tolerated when checking token dates, in seconds."
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (),
        _listing(_network),
        "Addresses or CIDR networks of reverse proxies whose X-Forwarded-For is believed.",
    )
    ratelimit_storage: str = _setting(
        "memory://",
        _storage,
        "Storage of rate-limit counters: memory:// (one process) or a Redis URL "
        "(redis://, rediss://, redis+sentinel://, redis+cluster://) shared by processes.",
        secret=True,  # a Redis URL may carry a password
    )
    min_free_disk: int = _setting(
        "512MiB",
        _size,
        "Readiness fails when a blob store's root has less free space on its disk; bytes "
        "or with a unit (512MiB, 2GB). 0 disables the check.",
    )
    log_format: str = _setting("json", _choice("json", "text"), "Log lines as json or text.")
    log_level: str = _setting(
        "info", _choice("debug", "info", "warning", "error"), "Lowest level that is logged."
    )
    host: str = _setting("127.0.0.1", _text(), "Address `goodrepo serve` listens on.")
    port: int = _setting(8080, _integer(0, 65535), "Port `goodrepo serve` listens on (0: any).")
    threads: int = _setting(8, _integer(1, 256), "Worker threads of `goodrepo serve`.")
    channel_timeout: int = _setting(
        120, _integer(1, 3600), "Seconds an idle connection is kept open by `goodrepo serve`."
    )
    schema_file: Path | None = _setting(
        None,
        _path(optional=True, must_exist=True),
        "JSON schema file that seeds a fresh data directory (default: the built-in schema).",
    )
    password_min_length: int = _setting(
        12, _integer(8, 256), "Minimum password length (never below 8)."
    )
    metrics_allow: tuple[str, ...] = _setting(
        (),
        _listing(_network),
        "Addresses or CIDR networks that may read /metrics without a token.",
    )
    metrics_token: str | None = _setting(
        None,
        _secret(16),
        "A bearer token (16+ characters) that may read /metrics without the admin scope.",
        secret=True,
    )
    hsts: int = _setting(
        0,
        _hsts,
        "Strict-Transport-Security max-age in seconds, sent with includeSubDomains; true "
        "means one year, 0 or false sends none. Set it only when clients reach goodrepo "
        "over HTTPS.",
    )
    origins: dict[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        problems = []
        for f in _fields():
            where = self._origin_of(f.name)
            try:
                object.__setattr__(self, f.name, f.metadata["parse"](getattr(self, f.name)))
            except ValueError as err:
                problems.append(f"{f.name}: {err} (from {where})")
        if not problems:
            problems = self._contradictions()
        if problems:
            raise ConfigurationError("\n".join(problems))
        if {"0.0.0.0/0", "::/0"} & set(self.trusted_proxies):
            log.warning("trusted_proxies trusts every address: any client can forge its IP")

    def _contradictions(self) -> list[str]:
        from .accounts.passwords import PasswordPolicy

        problems = []
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            problems.append('cors_origins: "*" allows any origin and cannot be combined')
        if self.refresh_token_ttl <= self.access_token_ttl:
            problems.append("refresh_token_ttl: must be longer than access_token_ttl")
        if self.jwt_leeway >= self.access_token_ttl:
            problems.append("jwt_leeway: must be shorter than access_token_ttl")
        if self.api_token_max_ttl < self.access_token_ttl:
            problems.append("api_token_max_ttl: must not be shorter than access_token_ttl")
        if self.admin_password is not None:
            policy = PasswordPolicy(min_length=self.password_min_length)
            reasons = policy.check(self.admin_password, "admin")
            if reasons:
                where = self._origin_of("admin_password")
                problems.append(
                    f"admin_password: rejected by the password policy: {'; '.join(reasons)} "
                    f"(from {where})"
                )
        return problems

    def _origin_of(self, name: str) -> str:
        """Where the value of setting ``name`` came from, for messages. ``load`` records
        it; a value that is not the default was given to ``Settings(...)`` directly."""
        if name in self.origins:
            return self.origins[name]
        default = next(f.default for f in _fields() if f.name == name)
        return "default" if getattr(self, name) == default else f"keyword argument {name}"

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        *,
        config_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        override_origins: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Merge defaults < TOML file < environment < ``overrides`` and validate.

        ``config_file`` defaults to ``$GOODREPO_CONFIG``; ``env`` to ``os.environ``.
        Overrides whose value is None are ignored (convenient for unset CLI options).
        ``override_origins`` names where an override came from (``{"port": "--port"}``),
        for ``origins`` and the error messages; by default ``keyword argument NAME``.
        Raises :class:`~goodrepo.errors.ConfigurationError` listing every problem.
        """
        env = os.environ if env is None else env
        known = {f.name: f for f in _fields()}
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        problems: list[str] = []

        def unknown(key: str, where: str) -> str:
            return f"{key}: unknown setting (from {where}); valid: {', '.join(known)}"

        path = config_file if config_file is not None else env.get(CONFIG_ENV) or None
        if path is not None:
            where = f"config file {os.fspath(path)}"
            for key, value in _read_toml(path).items():
                if key in known:
                    values[key], origins[key] = value, where
                else:
                    problems.append(unknown(key, where))
        for f in known.values():
            names = f.metadata["env"] or (ENV_PREFIX + f.name.upper(),)
            found = [(n, env[n]) for n in names if env.get(n, "").strip()]
            parse = f.metadata["parse"]
            invalid = [(n, v) for n, v in found if not _parses(parse, v)]
            if invalid:
                found = invalid  # reported below as an invalid value, not a disagreement
            elif len({parse(v) for _, v in found}) > 1:
                names_set = " and ".join(n for n, _ in found)
                problems.append(f"{f.name}: {names_set} disagree; set only one")
                continue
            if found:
                values[f.name], origins[f.name] = (
                    found[0][1],
                    f"environment variable {found[0][0]}",
                )
        env_names = {n for f in known.values() for n in f.metadata["env"]}
        env_names |= {ENV_PREFIX + name.upper() for name in known} | {CONFIG_ENV}
        for name in sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in env_names):
            log.warning("ignoring unknown environment variable %s", name)
        for key, value in overrides.items():
            where = (override_origins or {}).get(key, f"keyword argument {key}")
            if key not in known:
                problems.append(unknown(key, where))
            elif value is not None:
                values[key], origins[key] = value, where
        if problems:
            raise ConfigurationError("\n".join(problems))
        return cls(**values, origins=origins)

    # -- introspection -----------------------------------------------------------------

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One row per setting: ``name``, ``env`` (list), ``default`` (text), ``doc``."""
        return [
            {
                "name": f.name,
                "env": list(f.metadata["env"] or (ENV_PREFIX + f.name.upper(),)),
                "default": _render(f.default),
                "doc": f.metadata["doc"],
                "secret": f.metadata["secret"],
            }
            for f in _fields()
        ]

    def as_dict(self, *, redact: bool = True) -> dict[str, Any]:
        """The values, JSON-friendly; secrets shown as ``"***"`` unless ``redact=False``."""
        out = {}
        for f in _fields():
            value = getattr(self, f.name)
            if redact and f.metadata["secret"] and value is not None:
                value = _redact_url(value) if f.name == "ratelimit_storage" else "***"
            out[f.name] = list(value) if isinstance(value, tuple) else _plain(value)
        return out

    def redact(self, text: str) -> str:
        """``text`` with the value of every secret setting in it hidden as in :meth:`as_dict`,
        for messages from libraries that may quote a setting (a Redis URL) whole."""
        shown = self.as_dict()
        for name, value in self.as_dict(redact=False).items():
            if isinstance(value, str) and value != shown[name]:
                text = text.replace(value, str(shown[name]))
        return text


def _fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(Settings) if "parse" in f.metadata]


def _parses(parse: Callable[[Any], Any], value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    where = f"config file {os.fspath(path)}"
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        raise ConfigurationError(f"{where}: {err.strerror or err}") from err
    try:
        # Some editors start a UTF-8 file with a byte order mark; TOML has no use for it.
        text = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigurationError(f"{where}: not UTF-8 text (line {line})") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigurationError(f"{where}: invalid TOML: {err}") from err


def _split_url(text: str) -> SplitResult:
    """``urlsplit(text)`` with the port checked too, which ``urlsplit`` leaves until it is
    asked for: ValueError for an unclosed "[" or a port that is not from 0 to 65535."""
    parts = urlsplit(text)
    _ = parts.port
    return parts


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _render(value: Any) -> str:
    if value is None or value == ():
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    netloc, query = parts.netloc, _PASSWORD_PARAM.sub(r"\1***", parts.query)
    if parts.password is not None:
        userinfo, _, hosts = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))
