"""Configuration: malformed values and unsafe production starts are refused in one line."""

from __future__ import annotations

import hashlib

import pytest

from app.config import ConfigError, Settings, load_settings, parse_api_keys
from tests.helpers import startup_refusal
from tests.server import ROOT, base_env

GOOD = {
    "PLIVO_AUTH_ID": "MAFAKEAUTHID00000000",
    "PLIVO_AUTH_TOKEN": "fake-auth-token-0123456789",
    "PLIVO_SENDER_NUMBER": "+14155550000",
}
PROD = {**GOOD, "APP_ENV": "production", "API_KEYS": "svc:0123456789abcdef0123"}

REFUSALS = [
    ({**GOOD, "PLIVO_TIMEOUT_SECONDS": "soon"}, "PLIVO_TIMEOUT_SECONDS"),
    ({**GOOD, "PLIVO_TIMEOUT_SECONDS": "0"}, "PLIVO_TIMEOUT_SECONDS"),
    ({**GOOD, "PLIVO_MAX_CONCURRENCY": "0"}, "PLIVO_MAX_CONCURRENCY"),
    ({**GOOD, "PORT": "70000"}, "PORT"),
    ({**GOOD, "WEB_CONCURRENCY": "two"}, "WEB_CONCURRENCY"),
    ({**GOOD, "LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ({**GOOD, "LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({**GOOD, "APP_ENV": "staging"}, "APP_ENV"),
    ({**GOOD, "RATE_LIMIT": "lots"}, "RATE_LIMIT"),
    ({**GOOD, "RATE_LIMIT_PER_DESTINATION": "10/fortnight"}, "RATE_LIMIT_PER_DESTINATION"),
    ({**GOOD, "RATE_LIMIT_STORAGE_URL": "memcached://x"}, "RATE_LIMIT_STORAGE_URL"),
    ({**GOOD, "DATABASE_URL": "mysql://db/mms"}, "DATABASE_URL"),
    ({**GOOD, "DAILY_QUOTA_PER_KEY": "-1"}, "DAILY_QUOTA_PER_KEY"),
    ({**GOOD, "STORE_MESSAGE_TEXT": "maybe"}, "STORE_MESSAGE_TEXT"),
    ({**GOOD, "PLIVO_SENDER_NUMBER": "4155550000"}, "PLIVO_SENDER_NUMBER"),
    ({**GOOD, "PLIVO_API_URL": "ftp://plivo"}, "PLIVO_API_URL"),
    ({**GOOD, "PUBLIC_BASE_URL": "mms.example.com"}, "PUBLIC_BASE_URL"),
    ({**GOOD, "API_KEYS": "svc:short"}, "API_KEYS"),
    ({**GOOD, "API_KEYS": "a:0123456789abcdef,a:fedcba9876543210"}, "API_KEYS"),
    ({**GOOD, "CIRCUIT_FAILURE_THRESHOLD": "0"}, "CIRCUIT_FAILURE_THRESHOLD"),
    ({**GOOD, "RECONCILE_RATE": "0"}, "RECONCILE_RATE"),
    ({**GOOD, "MEDIA_PREFLIGHT": "sometimes"}, "MEDIA_PREFLIGHT"),
    ({**GOOD, "MEDIA_MAX_BYTES": "2MB"}, "MEDIA_MAX_BYTES"),
    ({**GOOD, "MEDIA_MAX_BYTES": "0"}, "MEDIA_MAX_BYTES"),
    ({**GOOD, "MEDIA_MAX_TOTAL_BYTES": "-1"}, "MEDIA_MAX_TOTAL_BYTES"),
    ({**GOOD, "MEDIA_ALLOW_PRIVATE": "perhaps"}, "MEDIA_ALLOW_PRIVATE"),
    ({**GOOD, "MEDIA_ALLOW_HOSTS": "cdn.internal:https"}, "MEDIA_ALLOW_HOSTS"),
    ({**GOOD, "MEDIA_ALLOW_HOSTS": "https://cdn.internal"}, "MEDIA_ALLOW_HOSTS"),
    ({**PROD, "MEDIA_ALLOW_PRIVATE": "true"}, "MEDIA_ALLOW_PRIVATE"),
    (
        {"PLIVO_AUTH_ID": "MAFAKEAUTHID00000000", "PLIVO_SENDER_NUMBER": "+14155550000"},
        "PLIVO_AUTH_TOKEN",
    ),
    ({**GOOD, "PLIVO_SENDER_NUMBER": ""}, "PLIVO_SENDER_NUMBER"),
    ({k: v for k, v in PROD.items() if k != "PLIVO_AUTH_ID"}, "PLIVO_AUTH_ID"),
    ({k: v for k, v in PROD.items() if k != "PLIVO_AUTH_TOKEN"}, "PLIVO_AUTH_TOKEN"),
    ({k: v for k, v in PROD.items() if k != "PLIVO_SENDER_NUMBER"}, "PLIVO_SENDER_NUMBER"),
    ({k: v for k, v in PROD.items() if k != "API_KEYS"}, "API_KEYS"),
]


@pytest.mark.parametrize(("env", "variable"), REFUSALS, ids=[r[1] for r in REFUSALS])
def test_refusal_names_the_variable(monkeypatch, env, variable):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    assert str(info.value).startswith(f"{variable}:")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({**GOOD, "PORT": "http"}, "PORT"),
        ({k: v for k, v in PROD.items() if k != "API_KEYS"}, "API_KEYS"),
    ],
)
def test_process_refuses_with_one_line_and_no_traceback(tmp_path, env, variable):
    """`python -m app` prints one line naming the variable and exits non-zero."""
    full_env = {**base_env("http://127.0.0.1:9/v1"), **env}
    if variable == "API_KEYS":
        full_env.pop("API_KEYS", None)
    assert startup_refusal(full_env, tmp_path).startswith(f"configuration error: {variable}:")


def test_development_without_credentials_is_sandbox():
    settings = load_settings(_env_file=None)
    assert settings.sandbox and settings.sender_number == "+14155550000"


def test_production_is_never_sandbox(monkeypatch):
    """Production without credentials is refused rather than silently simulated."""
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("API_KEYS", "svc:0123456789abcdef0123")
    with pytest.raises(ConfigError, match=r"^PLIVO_AUTH_ID:"):
        load_settings(_env_file=None)


def test_defaults_are_the_documented_ones(monkeypatch):
    for key, value in GOOD.items():
        monkeypatch.setenv(key, value)
    s = load_settings(_env_file=None)
    assert (s.plivo_api_url, s.plivo_timeout_seconds, s.plivo_max_concurrency) == (
        "https://api.plivo.com/v1",
        10,
        100,
    )
    assert (s.circuit_failure_threshold, s.circuit_reset_seconds, s.shutdown_grace_seconds) == (
        5,
        30,
        20,
    )
    assert (s.host, s.port, s.web_concurrency, s.app_env) == ("127.0.0.1", 3000, 1, "development")
    assert (s.rate_limit, s.rate_limit_per_destination, s.daily_quota_per_key) == (
        "100/minute",
        "10/hour",
        0,
    )
    assert s.rate_limit_storage_url == "memory://"
    assert s.database_url == "sqlite+aiosqlite:///./data/mms.db"
    assert (s.reconcile_after_seconds, s.reconcile_give_up_hours, s.reconcile_rate) == (600, 72, 1)
    assert (s.retention_days, s.store_message_text) == (90, False)
    assert s.effective_log_format == "console" and s.effective_docs_enabled is True
    assert s.forwarded_allow_ips == "127.0.0.1,::1" and s.public_base_url == ""


def test_production_defaults_to_json_logs_and_no_docs(monkeypatch):
    for key, value in PROD.items():
        monkeypatch.setenv(key, value)
    s = load_settings(_env_file=None)
    assert s.effective_log_format == "json" and s.effective_docs_enabled is False


def test_api_keys_named_and_bare():
    """A bare secret is named by the first 8 hex digits of its SHA-256 (review row 12: this
    test used to compare the derived name with itself)."""
    keys = parse_api_keys("billing:0123456789abcdef, fedcba9876543210fedc ,")
    assert keys[0].name == "billing" and keys[0].secret == "0123456789abcdef"
    expected = hashlib.sha256(b"fedcba9876543210fedc").hexdigest()[:8]
    assert keys[1].name == expected and keys[1].secret == "fedcba9876543210fedc"
    assert "fedcba" not in repr(keys)


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("\n".join(f"{k}={v}" for k, v in GOOD.items()) + "\nPORT=4001\n")
    assert Settings().port == 4001


def test_env_example_as_dotenv_starts_in_sandbox(tmp_path, monkeypatch):
    """`cp .env.example .env` is a valid configuration (empty values mean the defaults)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    settings = load_settings()
    assert settings.sandbox and settings.effective_log_format == "console"
    assert settings.effective_docs_enabled is True


def test_every_setting_is_in_env_example():
    text = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"\n{name.upper()}=" in text, name
