"""Settings from the environment (and `.env`), validated once at startup."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.phone import E164

SANDBOX_SENDER = "+14155550000"


class ConfigError(Exception):
    """A configuration problem, rendered as one line naming the variable."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    secret: str = dataclasses.field(repr=False)  # never shown, even in a traceback


def parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    """`name:secret` or a bare secret (named by the first 8 hex digits of its SHA-256)."""
    keys: list[ApiKey] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        name, sep, secret = entry.partition(":")
        if not sep:
            name, secret = hashlib.sha256(entry.encode()).hexdigest()[:8], entry
        if not name or not secret:
            raise ValueError("each entry must be `name:secret` or a bare secret")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
            raise ValueError("key names may use A-Z a-z 0-9 . _ - (at most 64)")
        if len(secret) < 16:
            raise ValueError(f"the secret of key {name!r} is shorter than 16 characters")
        keys.append(ApiKey(name, secret))
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError("key names must be unique")
    return tuple(keys)


def _check_limit(value: str) -> str:
    from limits import parse  # limits' own grammar, e.g. "100/minute", "10 per hour"

    try:
        parse(value)
    except ValueError:
        raise ValueError("must look like `100/minute` (limits syntax)") from None
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,  # `LOG_FORMAT=` (as in .env.example) means "the default"
    )

    plivo_auth_id: str | None = None
    plivo_auth_token: SecretStr | None = None
    plivo_sender_number: str | None = None
    plivo_api_url: str = "https://api.plivo.com/v1"
    plivo_timeout_seconds: float = Field(10.0, gt=0, le=300)
    plivo_max_concurrency: int = Field(100, ge=1, le=10_000)
    circuit_failure_threshold: int = Field(5, ge=1)
    circuit_reset_seconds: float = Field(30.0, gt=0)
    shutdown_grace_seconds: float = Field(20.0, ge=0)
    app_env: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["console", "json"] | None = None
    web_concurrency: int = Field(1, ge=1, le=64)
    metrics_token: SecretStr | None = None
    api_keys: Annotated[tuple[ApiKey, ...], NoDecode] = ()
    rate_limit: str = "100/minute"
    rate_limit_per_destination: str = "10/hour"
    daily_quota_per_key: int = Field(0, ge=0)
    rate_limit_storage_url: str = "memory://"
    database_url: str = "sqlite+aiosqlite:///./data/mms.db"
    reconcile_after_seconds: float = Field(600.0, ge=0)
    reconcile_give_up_hours: float = Field(72.0, gt=0)
    retention_days: float = Field(90.0, gt=0)
    store_message_text: bool = False
    docs_enabled: bool | None = None
    forwarded_allow_ips: str = "127.0.0.1,::1"
    reconcile_rate: float = Field(1.0, gt=0, le=100)
    public_base_url: str = ""

    @field_validator("log_level", "app_env", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "plivo_auth_id", "plivo_auth_token", "plivo_sender_number", "metrics_token", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("plivo_sender_number")
    @classmethod
    def _sender_is_e164(cls, value: str | None) -> str | None:
        if value is not None and not E164.fullmatch(value.strip()):
            raise ValueError("must be an E.164 number such as +14155550100")
        return value.strip() if value else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        return parse_api_keys(value) if isinstance(value, str) else value

    @field_validator("rate_limit", "rate_limit_per_destination")
    @classmethod
    def _valid_limit(cls, value: str) -> str:
        return _check_limit(value)

    @field_validator("plivo_api_url", "public_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("must be memory:// or redis://host:port/db")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        has_id, has_token = self.plivo_auth_id is not None, self.plivo_auth_token is not None
        if has_id != has_token:
            missing = "PLIVO_AUTH_TOKEN" if has_id else "PLIVO_AUTH_ID"
            raise ConfigError(f"{missing}: set both PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN, or neither")
        if self.app_env == "production":
            for name, value in (
                ("PLIVO_AUTH_ID", self.plivo_auth_id),
                ("PLIVO_AUTH_TOKEN", self.plivo_auth_token),
                ("PLIVO_SENDER_NUMBER", self.plivo_sender_number),
            ):
                if value is None:
                    raise ConfigError(f"{name}: required when APP_ENV=production")
            if not self.api_keys:
                raise ConfigError("API_KEYS: required when APP_ENV=production (auth cannot be off)")
        if has_id and self.plivo_sender_number is None:
            raise ConfigError("PLIVO_SENDER_NUMBER: required with Plivo credentials")
        return self

    # Derived values ---------------------------------------------------------------
    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def effective_log_format(self) -> str:
        return self.log_format or ("json" if self.is_production else "console")

    @property
    def effective_docs_enabled(self) -> bool:
        return self.docs_enabled if self.docs_enabled is not None else not self.is_production

    @property
    def sandbox(self) -> bool:
        """No credentials in development: Plivo is simulated in process (never in production)."""
        return self.plivo_auth_id is None and not self.is_production

    @property
    def auth_token(self) -> str:
        return self.plivo_auth_token.get_secret_value() if self.plivo_auth_token else ""

    @property
    def sender_number(self) -> str:
        return self.plivo_sender_number or SANDBOX_SENDER

    def secrets(self) -> list[str]:
        """Every configured secret value, for the log scrubber."""
        values = [self.plivo_auth_id or "", self.auth_token]
        values += [k.secret for k in self.api_keys]
        if self.metrics_token:
            values.append(self.metrics_token.get_secret_value())
        return [v for v in values if len(v) >= 4]


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "settings"
    message = first["msg"].removeprefix("Value error, ")
    return f"{field.upper()}: {message}"


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; raise ConfigError with one line naming the variable."""
    try:
        return Settings(**overrides)  # ConfigError from the model validator passes through
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
