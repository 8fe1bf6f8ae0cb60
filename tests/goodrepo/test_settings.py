"""Settings: precedence, parsing of every kind of value, and every error path."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from goodrepo.errors import ConfigurationError
from goodrepo.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
STRONG = "violet staple horizon"


def write(tmp_path, text):
    path = tmp_path / "goodrepo.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults():
    s = Settings.load(env={})
    assert s.data == Path("data")
    assert s.admin_password is None
    assert s.allow_anon_read is False
    assert s.cors_origins == ()
    assert s.login_rate_limit == "5/minute"
    assert (s.access_token_ttl, s.refresh_token_ttl, s.api_token_max_ttl) == (
        900,
        30 * 86400,
        365 * 86400,
    )
    assert (s.jwt_issuer, s.jwt_audience, s.jwt_leeway) == (None, None, 30)
    assert s.trusted_proxies == () and s.metrics_allow == ()
    assert s.ratelimit_storage == "memory://"
    assert s.min_free_disk == 512 * 2**20
    assert (s.log_format, s.log_level) == ("json", "info")
    assert (s.host, s.port, s.threads, s.channel_timeout) == ("127.0.0.1", 8080, 8, 120)
    assert s.schema_file is None and s.metrics_token is None
    assert s.password_min_length == 12
    assert s.hsts == 0
    assert s.origins == {}
    assert Settings() == s


def test_precedence_file_env_keyword(tmp_path):
    path = write(tmp_path, 'port = 1000\nthreads = 2\nhost = "0.0.0.0"\nlog_format = "text"\n')
    env = {"GOODREPO_PORT": "2000", "GOODREPO_THREADS": "3"}
    s = Settings.load(config_file=path, env=env, port=3000)
    assert (s.port, s.threads, s.host, s.log_format, s.log_level) == (
        3000,
        3,
        "0.0.0.0",
        "text",
        "info",
    )
    assert s.origins == {
        "port": "keyword argument port",
        "threads": "environment variable GOODREPO_THREADS",
        "host": f"config file {path}",
        "log_format": f"config file {path}",
    }


def test_config_file_from_the_environment(tmp_path):
    path = write(tmp_path, "port = 1234\n")
    assert Settings.load(env={"GOODREPO_CONFIG": str(path)}).port == 1234


def test_empty_environment_variable_counts_as_unset(tmp_path):
    path = write(tmp_path, 'jwt_issuer = "https://repo.test"\n')
    s = Settings.load(config_file=path, env={"GOODREPO_JWT_ISSUER": "", "GOODREPO_PORT": " "})
    assert s.jwt_issuer == "https://repo.test"
    assert s.port == 8080


def test_none_keyword_is_ignored():
    assert Settings.load(env={"GOODREPO_PORT": "9000"}, port=None, data=None).port == 9000


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        pytest.param("data", "/srv/goodrepo", Path("/srv/goodrepo"), id="data"),
        pytest.param("admin_password", STRONG, STRONG, id="admin-password"),
        pytest.param("allow_anon_read", "YES", True, id="bool-yes"),
        pytest.param("allow_anon_read", "0", False, id="bool-0"),
        pytest.param("allow_anon_read", " true ", True, id="bool-true"),
        pytest.param(
            "cors_origins",
            "https://App.example.com, http://localhost:3000/,",
            ("https://app.example.com", "http://localhost:3000"),
            id="origins",
        ),
        pytest.param(
            "cors_origins",
            "https://a.test:443,http://b.test:80,https://c.test:0443,https://[::1]:8443",
            ("https://a.test", "http://b.test", "https://c.test", "https://[::1]:8443"),
            id="origins-as-browsers-send-them",
        ),
        pytest.param("cors_origins", "*", ("*",), id="any-origin"),
        pytest.param("login_rate_limit", "10 per hour", "10 per hour", id="rate"),
        pytest.param("access_token_ttl", "60", 60, id="ttl-min"),
        pytest.param("refresh_token_ttl", "86400", 86400, id="refresh-ttl"),
        pytest.param("jwt_issuer", "https://repo.test", "https://repo.test", id="issuer"),
        pytest.param("jwt_audience", "goodrepo", "goodrepo", id="audience"),
        pytest.param(
            "trusted_proxies",
            "10.0.0.1, 192.168.0.0/16,::1, 10.0.0.1",
            ("10.0.0.1/32", "192.168.0.0/16", "::1/128"),
            id="proxies",
        ),
        pytest.param(
            "ratelimit_storage",
            "redis://cache:6379/0",
            "redis://cache:6379/0",
            id="redis",
        ),
        pytest.param(
            "ratelimit_storage",
            "redis+sentinel://h:26379/mymaster",
            "redis+sentinel://h:26379/mymaster",
            id="sentinel",
        ),
        pytest.param(
            "ratelimit_storage",
            "redis+sentinel://:pw@h1:26379,h2:26379/mymaster",
            "redis+sentinel://:pw@h1:26379,h2:26379/mymaster",
            id="sentinels",
        ),
        pytest.param(
            "ratelimit_storage",
            "redis+cluster://h1:7000, [::1]:7001",
            "redis+cluster://h1:7000, [::1]:7001",
            id="cluster",
        ),
        pytest.param("ratelimit_storage", "rediss://[::1]/0", "rediss://[::1]/0", id="redis-ipv6"),
        pytest.param("min_free_disk", "0", 0, id="disk-off"),
        pytest.param("min_free_disk", "2GB", 2 * 10**9, id="disk-gb"),
        pytest.param("min_free_disk", "512 MiB", 512 * 2**20, id="disk-mib"),
        pytest.param("min_free_disk", "100kib", 100 * 1024, id="disk-any-case"),
        pytest.param("log_format", "TEXT", "text", id="log-format"),
        pytest.param("log_level", "debug", "debug", id="log-level"),
        pytest.param("host", "::", "::", id="host"),
        pytest.param("port", "0", 0, id="port-any"),
        pytest.param("threads", "32", 32, id="threads"),
        pytest.param("channel_timeout", "300", 300, id="channel-timeout"),
        pytest.param("password_min_length", "8", 8, id="min-length-8"),
        pytest.param("metrics_allow", "127.0.0.1", ("127.0.0.1/32",), id="metrics-allow"),
        pytest.param("metrics_token", "m" * 16, "m" * 16, id="metrics-token"),
        pytest.param("hsts", "true", 365 * 86400, id="hsts-true"),
        pytest.param("hsts", "off", 0, id="hsts-off"),
        pytest.param("hsts", "600", 600, id="hsts-seconds"),
    ],
)
def test_environment_values(name, text, expected):
    s = Settings.load(env={f"GOODREPO_{name.upper()}": text})
    assert getattr(s, name) == expected
    assert s.origins[name] == f"environment variable GOODREPO_{name.upper()}"


def test_schema_file_must_exist(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text("{}")
    assert Settings.load(env={}, schema_file=str(schema)).schema_file == schema
    with pytest.raises(ConfigurationError, match="schema_file: .* is not a readable file"):
        Settings.load(env={}, schema_file=str(tmp_path / "missing.json"))


def test_plain_allow_anon_read_variable():
    s = Settings.load(env={"ALLOW_ANON_READ": "true"})
    assert s.allow_anon_read is True
    assert s.origins["allow_anon_read"] == "environment variable ALLOW_ANON_READ"
    both = {"ALLOW_ANON_READ": "1", "GOODREPO_ALLOW_ANON_READ": "yes"}
    assert Settings.load(env=both).allow_anon_read is True


def test_toml_typed_values(tmp_path):
    path = write(
        tmp_path,
        "allow_anon_read = true\n"
        'cors_origins = ["https://a.test", "https://b.test"]\n'
        "min_free_disk = 1024\n"
        'trusted_proxies = "10.0.0.0/8"\n'
        "hsts = 3600\n",
    )
    s = Settings.load(config_file=path, env={})
    assert s.allow_anon_read is True
    assert s.cors_origins == ("https://a.test", "https://b.test")
    assert s.min_free_disk == 1024
    assert s.trusted_proxies == ("10.0.0.0/8",)
    assert s.hsts == 3600


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        pytest.param("port", "http", "integer from 0 to 65535", id="port-text"),
        pytest.param("port", "65536", "integer from 0 to 65535", id="port-high"),
        pytest.param("port", "8080.0", "integer", id="port-float"),
        pytest.param("threads", "0", "integer from 1 to 256", id="threads-zero"),
        pytest.param("access_token_ttl", "59", "integer from 60 to 86400", id="ttl-low"),
        pytest.param("access_token_ttl", "86401", "integer from 60 to 86400", id="ttl-high"),
        pytest.param("password_min_length", "7", "from 8", id="min-length-below-8"),
        pytest.param("allow_anon_read", "maybe", "true or false", id="bool"),
        pytest.param("allow_anon_read", "2", "true or false", id="bool-number"),
        pytest.param("cors_origins", "ftp://x.test", "not an origin", id="origin-scheme"),
        pytest.param("cors_origins", "https://x.test/app", "not an origin", id="origin-path"),
        pytest.param("cors_origins", "x.test", "not an origin", id="origin-bare-host"),
        pytest.param("cors_origins", "https://u:p@x.test", "not an origin", id="origin-user"),
        pytest.param("trusted_proxies", "10.0.0.300", "not an IP address", id="proxy-bad-ip"),
        pytest.param("metrics_allow", "localhost", "not an IP address", id="metrics-hostname"),
        pytest.param("login_rate_limit", "lots", "one rate limit", id="rate-garbage"),
        pytest.param("login_rate_limit", "5/minute;9/hour", "one rate limit", id="rate-many"),
        pytest.param("login_rate_limit", "0/minute", "one rate limit", id="rate-zero"),
        pytest.param("login_rate_limit", "5/0 minutes", "zero periods", id="rate-0-periods"),
        pytest.param("login_rate_limit", "2/9999 years", "longer than a year", id="rate-long"),
        pytest.param("cors_origins", "https://x.test:", "not an origin", id="origin-no-port"),
        pytest.param("cors_origins", "https://x%2etest", "not an origin", id="origin-escaped"),
        pytest.param("ratelimit_storage", "mongodb://x", "must start with", id="storage"),
        pytest.param("min_free_disk", "12 parsecs", "number of bytes", id="size-unit"),
        pytest.param("min_free_disk", "-1", "number of bytes", id="size-negative"),
        pytest.param("log_format", "xml", "one of json, text", id="log-format"),
        pytest.param("log_level", "loud", "one of debug", id="log-level"),
        pytest.param("jwt_issuer", "has space", "printable text", id="issuer-space"),
        pytest.param("host", "a b", "printable text", id="host-space"),
        pytest.param("metrics_token", "short", "at least 16", id="metrics-token-short"),
        pytest.param("port", "9" * 5000, "integer from 0 to 65535", id="port-5000-digits"),
        pytest.param("cors_origins", "http://exa mple.com", "not an origin", id="origin-space"),
        pytest.param("cors_origins", "http://[::1", "'http://[::1' is not", id="origin-ipv6"),
        pytest.param("cors_origins", "http://x.test:http", "not an origin", id="origin-port"),
        pytest.param("cors_origins", "https://*.x.test", "no wildcards", id="origin-wildcard"),
        pytest.param("hsts", "sometimes", "true, false or a max-age", id="hsts-word"),
        pytest.param("hsts", "-1", "true, false or a max-age in seconds", id="hsts-negative"),
        pytest.param("hsts", str(3 * 365 * 86400), "integer from 0", id="hsts-high"),
    ],
)
def test_bad_environment_values_name_the_setting_and_the_variable(name, text, message):
    var = f"GOODREPO_{name.upper()}"
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(env={var: text})
    text_of_error = str(caught.value)
    assert text_of_error.startswith(f"{name}: ")
    assert message in text_of_error
    assert f"(from environment variable {var})" in text_of_error
    assert len(text_of_error) < 300  # a huge value is not repeated whole


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("redis://u:pw@cache:notaport", "port must be a number", id="port-text"),
        pytest.param("redis://:pw@cache:99999", "from 0 to 65535", id="port-high"),
        pytest.param("rediss://:pw@[::1", "IPv6 address must be written in [ ]", id="ipv6"),
        pytest.param("redis+sentinel://u:pw@h", "every server as host:port", id="no-port"),
        pytest.param("redis+sentinel://u:pw@h:26379", "the service name", id="no-service"),
        pytest.param("redis+cluster://:pw@h1:7000,h2", "host:port", id="cluster-no-port"),
    ],
)
def test_bad_storage_urls_name_the_setting_and_never_the_password(url, message):
    var = "GOODREPO_RATELIMIT_STORAGE"
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(env={var: url})
    text = str(caught.value)
    assert text.startswith("ratelimit_storage: ") and message in text
    assert f"(from environment variable {var})" in text
    assert "pw" not in text


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param('port = "http"', "port: must be an integer", id="string-for-int"),
        pytest.param("port = true", "port: must be an integer", id="bool-for-int"),
        pytest.param("allow_anon_read = 1", "allow_anon_read: must be true", id="int-for-bool"),
        pytest.param("cors_origins = [1, 2]", "cors_origins: must be a comma", id="list-of-ints"),
        pytest.param("data = 5", "data: must be a path", id="int-for-path"),
        pytest.param("[server]\nport = 1", "server: unknown setting", id="table"),
    ],
)
def test_bad_file_values_name_the_file(tmp_path, toml, message):
    path = write(tmp_path, toml + "\n")
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(config_file=path, env={})
    assert message in str(caught.value)
    assert f"(from config file {path})" in str(caught.value)


def test_bad_keyword_value_names_the_argument():
    with pytest.raises(ConfigurationError, match=r"port: .* \(from keyword argument port\)"):
        Settings.load(env={}, port=-1)


def test_a_data_path_with_a_nul_is_refused():
    with pytest.raises(ConfigurationError, match="data: must be a path, without NUL"):
        Settings.load(env={}, data="a\0b")


def test_override_origins_name_where_the_overrides_came_from():
    where = {"port": "--port", "prot": "--prot"}
    with pytest.raises(ConfigurationError, match=r"port: .* \(from --port\)"):
        Settings.load(env={}, port=99999, override_origins=where)
    with pytest.raises(ConfigurationError, match=r"prot: unknown setting \(from --prot\)"):
        Settings.load(env={}, prot=1, override_origins=where)
    s = Settings.load(env={}, port=9000, threads=2, override_origins=where)
    assert s.origins == {"port": "--port", "threads": "keyword argument threads"}


def test_unknown_file_key_lists_the_valid_ones(tmp_path):
    path = write(tmp_path, "prot = 8080\n")
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(config_file=path, env={})
    message = str(caught.value)
    assert message.startswith("prot: unknown setting")
    assert "valid: data, admin_password, allow_anon_read" in message
    assert "origins" not in message.split("valid:")[1].split(", ")


def test_unknown_keyword():
    with pytest.raises(ConfigurationError, match="verbose: unknown setting"):
        Settings.load(env={}, verbose=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("port = ", "invalid TOML", id="syntax"),
        pytest.param(None, "No such file", id="missing"),
        pytest.param(b"port = 1\n# \xff\n", r"not UTF-8 text \(line 2\)", id="not-utf8"),
    ],
)
def test_unreadable_config_file(tmp_path, text, message):
    path = tmp_path / "goodrepo.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=message) as caught:
        Settings.load(config_file=path, env={})
    assert str(caught.value).startswith(f"config file {path}: ")
    assert "\n" not in str(caught.value)


def test_config_file_may_start_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "goodrepo.toml"
    path.write_bytes(b"\xef\xbb\xbfport = 1234\n")
    assert Settings.load(config_file=path, env={}).port == 1234


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        pytest.param(
            {"cors_origins": "*,https://a.test"}, {}, 'cors_origins: "*"', id="star-and-origin"
        ),
        pytest.param(
            {"refresh_token_ttl": 900}, {}, "refresh_token_ttl: must be longer", id="refresh-ttl"
        ),
        pytest.param(
            {"access_token_ttl": 60, "jwt_leeway": 60}, {}, "jwt_leeway", id="leeway-ttl"
        ),
        pytest.param(
            {"api_token_max_ttl": 3600, "access_token_ttl": 7200},
            {},
            "api_token_max_ttl",
            id="api-ttl",
        ),
        pytest.param(
            {},
            {"ALLOW_ANON_READ": "true", "GOODREPO_ALLOW_ANON_READ": "false"},
            "GOODREPO_ALLOW_ANON_READ and ALLOW_ANON_READ disagree",
            id="anon-read-variables",
        ),
        pytest.param(
            {},
            {"ALLOW_ANON_READ": "maybe", "GOODREPO_ALLOW_ANON_READ": "1"},
            "allow_anon_read: must be true or false .* got 'maybe' "
            r"\(from environment variable ALLOW_ANON_READ\)",
            id="anon-read-one-invalid",
        ),
        pytest.param(
            {"admin_password": "admin"},
            {},
            "admin_password: rejected by the password policy: shorter than 12 characters",
            id="admin-short",
        ),
        pytest.param(
            {"admin_password": "pale-orchid-4410"},  # 16 characters
            {"GOODREPO_PASSWORD_MIN_LENGTH": "20"},
            "shorter than 20 characters",
            id="admin-below-min-length-from-env",
        ),
        pytest.param(
            {"admin_password": 12345678}, {}, "admin_password: must be a string", id="admin-int"
        ),
        pytest.param(
            {"admin_password": "password1234"},
            {},
            "admin_password: rejected by the password policy: one of the most commonly",
            id="admin-common",
        ),
        pytest.param(
            {"admin_password": "eleven chars", "password_min_length": 14},
            {},
            "shorter than 14 characters",
            id="admin-below-min-length",
        ),
        pytest.param(
            {"admin_password": "my admin passphrase"},
            {},
            "contains the username",
            id="admin-contains-name",
        ),
    ],
)
def test_contradictions(kwargs, env, message):
    with pytest.raises(ConfigurationError, match=message):
        Settings.load(env=env, **kwargs)


def test_every_problem_is_listed():
    env = {"GOODREPO_PORT": "x", "GOODREPO_THREADS": "x", "GOODREPO_LOG_FORMAT": "x"}
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(env=env)
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["log_format", "port", "threads"]


def test_direct_construction_is_validated():
    with pytest.raises(ConfigurationError, match=r"port: .* \(from keyword argument port\)"):
        Settings(port=99999)
    with pytest.raises(ConfigurationError, match=r"\(from keyword argument admin_password\)"):
        Settings(admin_password="password1234")


def test_unknown_goodrepo_variables_only_warn(caplog):
    env = {"GOODREPO_PROT": "secret-value", "GOODREPO_PORT": "9000", "OTHER_THING": "1"}
    with caplog.at_level(logging.WARNING, logger="goodrepo.settings"):
        s = Settings.load(env=env)
    assert s.port == 9000
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring unknown environment variable GOODREPO_PROT"
    ]
    assert "secret-value" not in caplog.text


def test_everyone_trusted_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="goodrepo.settings"):
        Settings.load(env={}, trusted_proxies="0.0.0.0/0")
    assert "trusts every address" in caplog.text


def test_secrets_stay_out_of_repr_and_redacted_views():
    s = Settings.load(
        env={},
        admin_password=STRONG,
        metrics_token="t" * 20,
        ratelimit_storage="redis://:hunter2hunter2@cache:6379/0",
    )
    for text in (repr(s), str(s.as_dict())):
        assert STRONG not in text and "t" * 20 not in text and "hunter2" not in text
    shown = s.as_dict()
    assert shown["admin_password"] == shown["metrics_token"] == "***"
    assert shown["ratelimit_storage"] == "redis://:***@cache:6379/0"
    assert s.as_dict(redact=False)["admin_password"] == STRONG
    assert shown["data"] == "data" and shown["cors_origins"] == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("redis://u:s3cret@h/0", "redis://u:***@h/0", id="userinfo"),
        pytest.param("redis://h/0?password=s3cret", "redis://h/0?password=***", id="query"),
        pytest.param(
            "redis+sentinel://h:26379/m?sentinel_password=s3cret&socket_timeout=2",
            "redis+sentinel://h:26379/m?sentinel_password=***&socket_timeout=2",
            id="sentinel-query",
        ),
        pytest.param(
            "rediss://:s3cret@h1:1?Password=s3cret",
            "rediss://:***@h1:1?Password=***",
            id="both",
        ),
        pytest.param("redis://cache:6379/0", "redis://cache:6379/0", id="none"),
        pytest.param("memory://", "memory://", id="memory"),
    ],
)
def test_storage_passwords_are_hidden_wherever_the_url_has_them(url, shown):
    s = Settings.load(env={}, ratelimit_storage=url)
    assert s.as_dict()["ratelimit_storage"] == shown
    assert s.redact(f"cannot connect to {url}") == f"cannot connect to {shown}"


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_describe_covers_every_setting():
    rows = Settings.describe()
    names = [r["name"] for r in rows]
    assert names == [f.name for f in dataclasses.fields(Settings) if f.name != "origins"]
    assert all(r["doc"] and r["env"][0] == "GOODREPO_" + r["name"].upper() for r in rows)
    by_name = {r["name"]: r for r in rows}
    assert by_name["allow_anon_read"]["env"] == ["GOODREPO_ALLOW_ANON_READ", "ALLOW_ANON_READ"]
    assert by_name["data"]["default"] == "./data"
    assert by_name["port"]["default"] == "8080"
    assert by_name["min_free_disk"]["default"] == "512MiB"
    assert by_name["admin_password"]["secret"] is True


def test_documentation_lists_every_setting_and_variable():
    text = DOCS.read_text(encoding="utf-8")
    for row in Settings.describe():
        assert f"`{row['name']}`" in text, row["name"]
        for var in row["env"]:
            assert f"`{var}`" in text, var
