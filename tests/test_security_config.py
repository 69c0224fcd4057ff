"""Unsafe configurations: refused at startup with one line naming the variable, or warned.

Each test names the row of the security review it guards (docs/security.md, "Input and
configuration").
"""

from __future__ import annotations

import pytest

from app.config import ConfigError, Settings, load_settings
from tests.helpers import startup_refusal
from tests.server import base_env

GOOD = {
    "PLIVO_AUTH_ID": "MAFAKEAUTHID00000000",
    "PLIVO_AUTH_TOKEN": "fake-auth-token-0123456789",
    "PLIVO_SENDER_NUMBER": "+14155550000",
}
KEY = "0123456789abcdef0123"
PROD = {**GOOD, "APP_ENV": "production", "API_KEYS": f"svc:{KEY}"}


def _load(monkeypatch, env: dict[str, str]) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(_env_file=None)


def _refused(monkeypatch, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        _load(monkeypatch, env)
    message = str(info.value)
    assert "\n" not in message
    return message


# Row 3: live credentials, no API keys, a public HOST ------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "[2001:db8::1]", "mms.internal"])
@pytest.mark.parametrize("app_env", [None, "development", "production"])
def test_row3_live_credentials_without_keys_on_a_public_host_are_refused(
    monkeypatch, host, app_env
):
    """Row 3: with APP_ENV unset (development) this started with only a warning, and
    unauthenticated sends reached Plivo."""
    env = {**GOOD, "HOST": host} | ({"APP_ENV": app_env} if app_env else {})
    message = _refused(monkeypatch, env)
    assert message.startswith("API_KEYS:")
    if app_env != "production":  # production names its own, older rule
        assert f"HOST={host}" in message and "Plivo credentials" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_row3_loopback_hosts_without_keys_still_start(monkeypatch, host):
    """Row 3: on loopback only this machine can call: development without keys is fine."""
    assert _load(monkeypatch, {**GOOD, "HOST": host}).host == host


def test_row3_keys_or_sandbox_make_a_public_host_fine(monkeypatch):
    """Row 3: API keys close the door; sandbox mode (no credentials) spends nothing."""
    assert _load(monkeypatch, {**GOOD, "HOST": "0.0.0.0", "API_KEYS": f"svc:{KEY}"}).api_keys
    monkeypatch.delenv("API_KEYS")
    for name in GOOD:
        monkeypatch.delenv(name)
    assert _load(monkeypatch, {"HOST": "0.0.0.0"}).sandbox


def test_row3_python_m_app_refuses_in_one_line(tmp_path):
    """Row 3: `python -m app` prints one line naming the variables, exits non-zero, and
    never listens."""
    env = {**base_env("http://127.0.0.1:9/v1"), **GOOD, "HOST": "0.0.0.0"}
    env.pop("API_KEYS", None)
    env.pop("APP_ENV", None)
    line = startup_refusal(env, tmp_path)
    assert line.startswith("configuration error: API_KEYS:") and "HOST=0.0.0.0" in line


# Row 12: secrets and risky settings -----------------------------------------------------------
REFUSED_EVERYWHERE = {
    "METRICS_TOKEN one character": ({"METRICS_TOKEN": "x"}, "METRICS_TOKEN"),
    "METRICS_TOKEN 15 characters": ({"METRICS_TOKEN": "m" * 15}, "METRICS_TOKEN"),
    "METRICS_TOKEN non-ASCII": ({"METRICS_TOKEN": "jeton-sécurisé-0123456789"}, "METRICS_TOKEN"),
    "METRICS_TOKEN with a space": ({"METRICS_TOKEN": "scrape secret 0123"}, "METRICS_TOKEN"),
    "API_KEYS secret 3 characters": ({"API_KEYS": "svc:abc"}, "API_KEYS"),
    "API_KEYS non-ASCII secret": ({"API_KEYS": "svc:clé-secrète-0123456789"}, "API_KEYS"),
    "API_KEYS control character": ({"API_KEYS": "svc:0123456789\tabcdef"}, "API_KEYS"),
    "API_KEYS one secret two names": ({"API_KEYS": f"a:{KEY},b:{KEY}"}, "API_KEYS"),
    "API_KEYS one secret named and bare": ({"API_KEYS": f"a:{KEY},{KEY}"}, "API_KEYS"),
    "METRICS_TOKEN is an API key": (
        {"API_KEYS": f"a:{KEY}", "METRICS_TOKEN": KEY},
        "METRICS_TOKEN",
    ),
    "PLIVO_AUTH_TOKEN is an API key": (
        {"API_KEYS": f"a:{GOOD['PLIVO_AUTH_TOKEN']}"},
        "PLIVO_AUTH_TOKEN",
    ),
    "PLIVO_AUTH_TOKEN non-ASCII": (
        {"PLIVO_AUTH_TOKEN": "fake-äuth-token-0123456789"},
        "PLIVO_AUTH_TOKEN",
    ),
    "RETENTION_DAYS 0.0001": ({"RETENTION_DAYS": "0.0001"}, "RETENTION_DAYS"),
    "RETENTION_DAYS half a day": ({"RETENTION_DAYS": "0.5"}, "RETENTION_DAYS"),
    "RETENTION_DAYS inf": ({"RETENTION_DAYS": "inf"}, "RETENTION_DAYS"),
    "RETENTION_DAYS nan": ({"RETENTION_DAYS": "nan"}, "RETENTION_DAYS"),
    "RETENTION_DAYS a million years": ({"RETENTION_DAYS": "365000000"}, "RETENTION_DAYS"),
}


@pytest.mark.parametrize("app_env", ["development", "production"])
@pytest.mark.parametrize(
    ("env", "variable"), REFUSED_EVERYWHERE.values(), ids=REFUSED_EVERYWHERE.keys()
)
def test_row12_refused_in_every_environment(monkeypatch, app_env, env, variable):
    """Row 12: each of these was accepted in production (and in development)."""
    base = PROD if app_env == "production" else GOOD
    message = _refused(monkeypatch, {**base, "APP_ENV": app_env, **env})
    assert message.startswith(f"{variable}:"), message
    for secret in (KEY, "x", "abc", "jeton-sécurisé-0123456789", GOOD["PLIVO_AUTH_TOKEN"]):
        assert f"{secret}'" not in message and f" {secret} " not in message  # never echoed


REFUSED_IN_PRODUCTION = {
    "PLIVO_AUTH_TOKEN 3 characters": ({"PLIVO_AUTH_TOKEN": "abc"}, "PLIVO_AUTH_TOKEN"),
    "PLIVO_AUTH_TOKEN 15 characters": ({"PLIVO_AUTH_TOKEN": "t" * 15}, "PLIVO_AUTH_TOKEN"),
    "PLIVO_API_URL http": ({"PLIVO_API_URL": "http://api.plivo.com/v1"}, "PLIVO_API_URL"),
    "PLIVO_API_URL http private": ({"PLIVO_API_URL": "http://10.1.2.3/v1"}, "PLIVO_API_URL"),
}


@pytest.mark.parametrize(
    ("env", "variable"), REFUSED_IN_PRODUCTION.values(), ids=REFUSED_IN_PRODUCTION.keys()
)
def test_row12_refused_in_production(monkeypatch, env, variable):
    """Row 12: a 3-character Plivo token and an http:// Plivo URL started in production.
    In development they start (local fakes use both), with a warning for the URL."""
    assert _refused(monkeypatch, {**PROD, **env}).startswith(f"{variable}:")
    monkeypatch.setenv("APP_ENV", "development")
    assert load_settings(_env_file=None).app_env == "development"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/v1",
        "http://127.0.0.5:9/v1",
        "http://localhost:9/v1",
        "http://[::1]:9/v1",
    ],
)
def test_row12_http_plivo_url_on_loopback_is_fine_in_production(monkeypatch, url):
    """Row 12: the tests' and benchmarks' fake Plivo listens on loopback."""
    settings = _load(monkeypatch, {**PROD, "PLIVO_API_URL": url, "METRICS_TOKEN": "m" * 16})
    assert settings.plivo_api_url == url and settings.startup_warnings() == []


def test_row12_boundaries_are_accepted(monkeypatch):
    """Row 12: 16-character secrets and one day of retention are enough."""
    settings = _load(
        monkeypatch,
        {
            **PROD,
            "METRICS_TOKEN": "m" * 16,
            "API_KEYS": f"a:{'a' * 16},b:{'b' * 16}",
            "PLIVO_AUTH_TOKEN": "t" * 16,
            "RETENTION_DAYS": "1",
        },
    )
    assert settings.retention_days == 1 and len(settings.api_keys) == 2


WARNED_IN_PRODUCTION = {
    "no METRICS_TOKEN": ({}, "METRICS_TOKEN is empty"),
    "FORWARDED_ALLOW_IPS *": ({"FORWARDED_ALLOW_IPS": "*"}, "FORWARDED_ALLOW_IPS"),
    "FORWARDED_ALLOW_IPS list with *": (
        {"FORWARDED_ALLOW_IPS": "10.0.0.1, *"},
        "FORWARDED_ALLOW_IPS",
    ),
    "FORWARDED_ALLOW_IPS 0.0.0.0/0": ({"FORWARDED_ALLOW_IPS": "0.0.0.0/0"}, "FORWARDED_ALLOW_IPS"),
    "FORWARDED_ALLOW_IPS ::/0": ({"FORWARDED_ALLOW_IPS": "127.0.0.1,::/0"}, "FORWARDED_ALLOW_IPS"),
}


@pytest.mark.parametrize(
    ("env", "warning"), WARNED_IN_PRODUCTION.values(), ids=WARNED_IN_PRODUCTION.keys()
)
def test_row12_warned_in_production(monkeypatch, env, warning):
    """Row 12: `/metrics` open and `FORWARDED_ALLOW_IPS=*` started silently in production.
    Both can be right (a private network, a platform's proxy pool), so they start, loudly."""
    token = {} if warning.startswith("METRICS_TOKEN") else {"METRICS_TOKEN": "m" * 16}
    warnings = _load(monkeypatch, {**PROD, **token, **env}).startup_warnings()
    assert len(warnings) == 1 and warnings[0].startswith(warning), warnings
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.delenv("API_KEYS")
    assert load_settings(_env_file=None).startup_warnings() == []


def test_row12_no_warning_for_a_guarded_production(monkeypatch):
    env = {**PROD, "METRICS_TOKEN": "m" * 16, "FORWARDED_ALLOW_IPS": "10.0.0.0/8,fd00::/8"}
    assert _load(monkeypatch, env).startup_warnings() == []


def test_row12_http_plivo_url_is_warned_in_development(monkeypatch):
    settings = _load(monkeypatch, {**GOOD, "PLIVO_API_URL": "http://plivo-fake.internal/v1"})
    assert [w.split(" ")[0] for w in settings.startup_warnings()] == ["PLIVO_API_URL"]


async def test_row12_warnings_are_logged_at_startup(settings_factory, client_for, capfd):
    """Row 12: the service logs each warning when it starts (through the app's logger)."""
    settings = settings_factory(
        app_env="production", api_keys=f"svc:{KEY}", forwarded_allow_ips="*"
    )
    async with client_for(settings) as client:
        assert (await client.get("/health")).status_code == 200
    out = capfd.readouterr().out
    assert "METRICS_TOKEN is empty" in out
    assert "FORWARDED_ALLOW_IPS trusts every peer" in out
