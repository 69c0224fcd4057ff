"""Settings from the environment (and `.env`), validated once at startup."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.phone import E164, E164_PROBLEM

if TYPE_CHECKING:
    from app.quiet_hours import Window

SANDBOX_SENDER = "+14155550000"
MIN_SECRET_LENGTH = 16
# Secrets arrive in HTTP headers, which carry ASCII reliably and nothing else: a secret
# outside printable ASCII (or with a space) could never be presented, so it is refused.
_HEADER_SAFE = re.compile(r"[!-~]+")
MIN_RETENTION_DAYS = 1.0
MAX_RETENTION_DAYS = 36_500.0


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (or ::ffff:127.x) and `localhost`: reachable from this machine only."""
    host = host.strip().removeprefix("[").removesuffix("]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name: it may resolve to anything
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


def check_secret(secret: str, what: str) -> None:
    """A secret a caller presents in a header: long enough, and presentable at all."""
    if not _HEADER_SAFE.fullmatch(secret):
        raise ValueError(f"{what} must be printable ASCII without spaces (header-safe)")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"{what} is shorter than {MIN_SECRET_LENGTH} characters")


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
        check_secret(secret, f"the secret of key {name!r}")
        keys.append(ApiKey(name, secret))
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError("key names must be unique")
    # One secret under two names would authenticate as only one of them: a mistake.
    seen: dict[str, str] = {}
    for key in keys:
        if key.secret in seen:
            raise ValueError(f"keys {seen[key.secret]!r} and {key.name!r} share one secret")
        seen[key.secret] = key.name
    return tuple(keys)


def _check_limit(value: str) -> str:
    from limits import parse  # limits' own grammar, e.g. "100/minute", "10 per hour"

    try:
        parse(value)
    except ValueError:
        raise ValueError("must look like `100/minute` (limits syntax)") from None
    return value


@dataclass(frozen=True)
class WebhookEndpoint:
    """One `name=url` entry of WEBHOOKS: `name` is an API key's name, or `*` for every
    key's events plus inbound messages and opt-out changes."""

    name: str
    url: str


ALL_EVENTS = "*"
ANONYMOUS_CALLER = "anonymous"  # the caller name when API_KEYS is empty (auth off)
WEBHOOK_SECRET_PREFIX = "whsec_"
MIN_WEBHOOK_SECRET_BYTES = 24


def parse_webhooks(raw: str) -> tuple[WebhookEndpoint, ...]:
    """`name=url,...` (a URL holding a comma percent-encodes it); one URL per name."""
    endpoints: list[WebhookEndpoint] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        name, sep, url = (part.strip() for part in entry.partition("="))
        if not sep or not name or not url:
            raise ValueError("each entry must be `name=url` (name: an API key's name or `*`)")
        if name != ALL_EVENTS and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
            raise ValueError(f"{name[:64]!r} is not an API key name or `*`")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the URL of {name!r} must be an absolute http(s) URL")
        if parts.username is not None or parts.fragment:
            raise ValueError(f"the URL of {name!r} must not carry credentials or a fragment")
        if any(e.name == name for e in endpoints):
            raise ValueError(f"{name!r} is named twice (one URL per name)")
        endpoints.append(WebhookEndpoint(name, url))
    return tuple(endpoints)


def check_webhook_secret(secret: str) -> None:
    """`whsec_` + base64 of at least 24 random bytes (what Standard Webhooks tools make)."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError(f"must start with {WEBHOOK_SECRET_PREFIX} (Standard Webhooks format)")
    encoded = secret[len(WEBHOOK_SECRET_PREFIX) :]
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError:
        raise ValueError(f"must be {WEBHOOK_SECRET_PREFIX} followed by base64") from None
    if len(raw) < MIN_WEBHOOK_SECRET_BYTES:
        raise ValueError(
            f"must hold at least {MIN_WEBHOOK_SECRET_BYTES} random bytes (base64 of "
            f"{MIN_WEBHOOK_SECRET_BYTES}: 32 characters after {WEBHOOK_SECRET_PREFIX})"
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,  # `LOG_FORMAT=` (as in .env.example) means "the default"
    )

    plivo_auth_id: str | None = Field(
        None,
        description=(
            "Plivo auth id from the Plivo console. Set both PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN, or"
            " neither (neither = sandbox mode, development only). Never logged."
        ),
    )
    plivo_auth_token: SecretStr | None = Field(
        None,
        description=(
            "Plivo auth token; also the key that verifies callback signatures. Never logged."
        ),
    )
    plivo_sender_number: str | None = Field(
        None,
        description=(
            "MMS-enabled sender number you own on Plivo, E.164 (e.g. +14155550000). Required with "
            "credentials; the sandbox uses +14155550000."
        ),
    )
    plivo_api_url: str = Field(
        "https://api.plivo.com/v1",
        description=(
            "Base URL of Plivo's API, /v1 included (tests and benchmarks point it at a local fake)."
        ),
    )
    plivo_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "Total deadline of one send toward Plivo, retries and backoff included (seconds)."
        ),
    )
    plivo_max_concurrency: int = Field(
        100,
        ge=1,
        le=10_000,
        description=(
            "Calls to Plivo in flight at once, per process: Plivo's account limit divided by the "
            "fleet's processes."
        ),
    )
    circuit_failure_threshold: int = Field(
        5,
        ge=1,
        description=(
            "Consecutive sick sends (5xx, timeouts, connection failures) that open the circuit "
            "breaker."
        ),
    )
    circuit_reset_seconds: float = Field(
        30.0,
        gt=0,
        description="Seconds an open breaker waits before it lets one trial send through.",
    )
    shutdown_grace_seconds: float = Field(
        20.0,
        ge=0,
        description=(
            "How long SIGTERM waits for in-flight requests (seconds; `python -m app` only, plain "
            "uvicorn takes --timeout-graceful-shutdown)."
        ),
    )
    app_env: Literal["development", "production"] = Field(
        "development",
        description=(
            "`development` or `production`; production refuses to start without Plivo credentials,"
            " sender number and API keys."
        ),
    )
    host: str = Field("127.0.0.1", description="Listen address (the container image sets 0.0.0.0).")
    port: int = Field(3000, ge=1, le=65535, description="Listen port.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="debug, info, warning, error or critical."
    )
    log_format: Literal["console", "json"] | None = Field(
        None,
        description="`console` or `json`; empty means console in development, json in production.",
    )
    web_concurrency: int = Field(
        1, ge=1, le=64, description="Worker processes started by `python -m app`."
    )
    metrics_token: SecretStr | None = Field(
        None,
        description=(
            "When set, /metrics wants `Authorization: Bearer <token>`; empty leaves /metrics open."
        ),
    )
    api_keys: Annotated[tuple[ApiKey, ...], NoDecode] = Field(
        (),
        description=(
            "Caller keys, comma-separated: `name:secret` or a bare secret (at least 16 "
            "characters). Empty turns auth off (refused in production)."
        ),
    )
    rate_limit: str = Field(
        "100/minute",
        description=(
            "Per-client-IP limit on the send route (limits syntax, moving window), e.g. 100/minute."
        ),
    )
    rate_limit_per_destination: str = Field(
        "10/hour", description="Sends to one destination number across all callers (moving window)."
    )
    daily_quota_per_key: int = Field(
        0, ge=0, description="Sends per API key per UTC day; 0 turns the quota off."
    )
    rate_limit_storage_url: str = Field(
        "memory://",
        description=(
            "Where limits are counted: memory:// (per process) or redis://host:6379/0 (shared by "
            "every replica)."
        ),
    )
    database_url: str = Field(
        "sqlite+aiosqlite:///./data/mms.db",
        description=(
            "Message and idempotency store: sqlite+aiosqlite:///path (one machine) or "
            "postgresql+asyncpg://user@host/db (several replicas)."
        ),
    )
    reconcile_after_seconds: float = Field(
        600.0,
        ge=0,
        description="Ask Plivo about a message with no final status after this many seconds.",
    )
    reconcile_give_up_hours: float = Field(
        72.0,
        gt=0,
        description="Stop asking about a message after this many hours and settle it as it is.",
    )
    retention_days: float = Field(
        90.0, gt=0, description="Messages and their events older than this are purged (days)."
    )
    store_message_text: bool = Field(
        False, description="Keep the message text in the store (off for privacy)."
    )
    docs_enabled: bool | None = Field(
        None,
        description=(
            "Serve /docs and /openapi.json; empty means on in development, off in production."
        ),
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1,::1",
        description=(
            "Proxies whose X-Forwarded-For is trusted (comma-separated IPs or CIDRs; never `*`)."
        ),
    )
    reconcile_rate: float = Field(
        1.0, gt=0, le=100, description="Plivo lookups per second per process for reconciliation."
    )
    public_base_url: str = Field(
        "",
        description=(
            "Externally reachable base URL; when set, sends ask Plivo to POST status callbacks to "
            "{PUBLIC_BASE_URL}/api/mms/status, and callback signatures are checked against it."
        ),
    )
    send_rate: str = Field(
        "50/second",
        description="Sends toward Plivo: `0` (off) or `<decimal>/<second|minute|hour>` "
        "(`0.25/second`, `50/minute`); a burst of one second's worth (at least 1) goes "
        "through without waiting. Fleet-wide when RATE_LIMIT_STORAGE_URL is Redis; with "
        "`memory://` each of WEB_CONCURRENCY workers paces at SEND_RATE / WEB_CONCURRENCY. "
        "Set it to the Plivo account's MMS throughput (docs/pacing.md).",
    )
    pacing_max_wait_seconds: float = Field(
        2.0,
        ge=0,
        description="How long a synchronous send may wait for its pacing slot; beyond it "
        "the send is refused at once with 503 `send_rate_exceeded` and `Retry-After`.",
    )
    outbox_give_up_hours: float = Field(
        24.0,
        gt=0,
        description="A scheduled send that Plivo certainly never took (429, 503, unreachable, "
        "breaker open) is retried with backoff until this many hours after its original "
        "sendAt, then settled as `not_sent` (docs/outbox.md).",
    )
    outbox_max_pending_per_key: int = Field(
        100_000,
        gt=0,
        description="Scheduled messages one API key may have waiting in the outbox; beyond "
        "it a send is refused with 429 `outbox_full`.",
    )
    quiet_hours: str = Field(
        "08:00-21:00",
        description='The recipient-local window that `"quiet_hours": true` sends are held to '
        "(TCPA: 8 am to 9 pm), `HH:MM-HH:MM` with start < end; sends happen only inside it.",
    )
    plivo_signature: Annotated[
        Literal["v3", "v2", "any"],
        BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v),
    ] = Field(
        "any",
        description="Plivo signature schemes accepted on callbacks: `v3`, `v2`, or `any` "
        "(V3 when present, else V2). Every nonce of a request is recorded either way.",
    )

    media_preflight: bool | None = Field(
        None,
        description="Check every media URL (reachable, type, size) before a send and refuse "
        "a bad one with 422 `media_rejected` (docs/media.md); empty means on with Plivo "
        "credentials, off in sandbox mode; `false` turns it off everywhere.",
    )
    media_max_bytes: int = Field(
        2_097_152,
        gt=0,
        description="Largest media file preflight lets through, in bytes (Plivo: 2 MB per "
        "attachment).",
    )
    media_max_total_bytes: int = Field(
        5_242_880,
        gt=0,
        description="Largest sum of a message's media sizes, in bytes (Plivo: 5 MB per "
        "message, its error 120).",
    )
    media_allow_private: bool = Field(
        False,
        description="Let preflight fetch loopback, private and link-local addresses (tests "
        "only; refused in production).",
    )
    media_allow_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated `host` or `host:port` that preflight may fetch even when "
        "they resolve to private addresses (an internal CDN); the other rules still apply.",
    )

    webhooks: Annotated[tuple[WebhookEndpoint, ...], NoDecode] = Field(
        (),
        description="Caller webhooks (docs/webhooks.md): comma-separated `name=url`, `name` "
        "an API key's name (that key's message statuses) or `*` (every key's, plus inbound "
        "messages and opt-out changes); a URL holding a comma percent-encodes it. "
        "`http://` is allowed (internal networks) and warned about in production.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Standard Webhooks signing secret: `whsec_` + base64 of at least 24 "
        "random bytes; required when WEBHOOKS is set.",
    )

    @field_validator("log_level", "app_env", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "plivo_auth_id",
        "plivo_auth_token",
        "plivo_sender_number",
        "metrics_token",
        "webhook_secret",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("plivo_sender_number")
    @classmethod
    def _sender_is_e164(cls, value: str | None) -> str | None:
        if value is not None and not E164.fullmatch(value.strip()):
            raise ValueError(E164_PROBLEM)
        return value.strip() if value else value

    @field_validator("plivo_auth_id", "plivo_auth_token", mode="after")
    @classmethod
    def _plivo_credential_is_ascii(cls, value: str | SecretStr | None) -> Any:
        # HTTP Basic auth toward Plivo: anything but printable ASCII is a paste error.
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is not None and not _HEADER_SAFE.fullmatch(raw):
            raise ValueError("must be printable ASCII without spaces")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret(value.get_secret_value(), "the token")
        return value

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, value: float) -> float:
        # Final messages and callback nonces live this long: under a day, a captured
        # callback could be replayed within hours and callers lose their lookups.
        if not math.isfinite(value) or not MIN_RETENTION_DAYS <= value <= MAX_RETENTION_DAYS:
            raise ValueError(f"must be between {MIN_RETENTION_DAYS:g} and {MAX_RETENTION_DAYS:g}")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        return parse_api_keys(value) if isinstance(value, str) else value

    @field_validator("webhooks", mode="before")
    @classmethod
    def _parse_webhooks(cls, value: Any) -> Any:
        return parse_webhooks(value) if isinstance(value, str) else value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_webhook_secret(value.get_secret_value().strip())
            return SecretStr(value.get_secret_value().strip())
        return value

    @field_validator("media_allow_hosts", mode="before")
    @classmethod
    def _parse_allow_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [entry for entry in (part.strip() for part in value.split(",")) if entry]
        return tuple(_allow_host(str(entry)) for entry in value)

    @field_validator("rate_limit", "rate_limit_per_destination")
    @classmethod
    def _valid_limit(cls, value: str) -> str:
        return _check_limit(value)

    @field_validator("send_rate")
    @classmethod
    def _valid_send_rate(cls, value: str) -> str:
        from app.pacing import parse_rate

        parse_rate(value)
        return value.strip()

    @field_validator("quiet_hours")
    @classmethod
    def _valid_quiet_hours(cls, value: str) -> str:
        from app.quiet_hours import parse_window

        return str(parse_window(value))

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
            if self.media_allow_private:
                raise ConfigError(
                    "MEDIA_ALLOW_PRIVATE: refused when APP_ENV=production (it lets callers make "
                    "the service fetch internal addresses); list internal hosts in "
                    "MEDIA_ALLOW_HOSTS instead"
                )
        if has_id and self.plivo_sender_number is None:
            raise ConfigError("PLIVO_SENDER_NUMBER: required with Plivo credentials")
        return self

    @model_validator(mode="after")
    def _exposure_rules(self) -> Settings:
        """Refusals that hold in every environment: a forgotten APP_ENV must not open a paid
        API to the network, and a secret serves one purpose."""
        live = self.plivo_auth_id is not None
        if live and not self.api_keys and not is_loopback(self.host):
            raise ConfigError(
                f"API_KEYS: required when Plivo credentials are set and HOST={self.host} is "
                "not a loopback address (anyone reaching the port could send at the "
                "account's cost); set API_KEYS, or HOST=127.0.0.1"
            )
        key_secrets = {key.secret for key in self.api_keys}
        metrics = self.metrics_token.get_secret_value() if self.metrics_token else None
        if metrics is not None and metrics in key_secrets:
            raise ConfigError("METRICS_TOKEN: must not be one of the API_KEYS secrets")
        if self.auth_token and self.auth_token in key_secrets | {metrics}:
            raise ConfigError(
                "PLIVO_AUTH_TOKEN: must not be reused as an API_KEYS secret or METRICS_TOKEN"
            )
        if self.is_production:
            if len(self.auth_token) < MIN_SECRET_LENGTH:  # Plivo issues 40 characters
                raise ConfigError(
                    f"PLIVO_AUTH_TOKEN: shorter than {MIN_SECRET_LENGTH} characters; "
                    "not a Plivo auth token"
                )
            if self.plivo_api_url_in_clear:
                raise ConfigError(
                    "PLIVO_API_URL: must be https:// when APP_ENV=production (the credentials "
                    "go with every request); http:// only to a loopback host"
                )
        self._webhook_rules()
        return self

    def _webhook_rules(self) -> None:
        if not self.webhooks:
            return
        known = {key.name for key in self.api_keys} or {ANONYMOUS_CALLER}
        for endpoint in self.webhooks:
            if endpoint.name != ALL_EVENTS and endpoint.name not in known:
                raise ConfigError(
                    f"WEBHOOKS: {endpoint.name!r} is not the name of a key in API_KEYS "
                    "(use a key's name, or * for every key)"
                )
        if self.webhook_secret is None:
            raise ConfigError(
                "WEBHOOK_SECRET: required when WEBHOOKS is set (whsec_ + base64 of at least "
                f"{MIN_WEBHOOK_SECRET_BYTES} random bytes)"
            )

    def startup_warnings(self) -> list[str]:
        """Risky but legitimate settings, logged loudly at startup (see docs/security.md)."""
        warnings = []
        if self.is_production and self.metrics_token is None:
            warnings.append(
                "METRICS_TOKEN is empty: /metrics is open to anyone who reaches the port; "
                "set it unless only a private network can reach /metrics"
            )
        if self.is_production and _trusts_everyone(self.forwarded_allow_ips):
            warnings.append(
                "FORWARDED_ALLOW_IPS trusts every peer: a client can choose its own address "
                "in X-Forwarded-For and escape the per-client limit; list the proxies"
            )
        if self.media_allow_private:  # development only: production refuses it
            warnings.append(
                "MEDIA_ALLOW_PRIVATE is on: media preflight may fetch loopback and private "
                "addresses for any caller (for tests only; refused in production)"
            )
        if self.is_production:
            for endpoint in self.webhooks:
                if urlsplit(endpoint.url).scheme == "http":
                    warnings.append(
                        f"WEBHOOKS: the endpoint {endpoint.name!r} is http://: its events "
                        "(numbers, statuses, inbound text) cross the network in clear; use "
                        "https:// unless the network is private"
                    )
        if self.plivo_auth_id is not None and self.plivo_api_url_in_clear:
            warnings.append(  # development only: production refuses it
                "PLIVO_API_URL is http:// to a host that is not loopback: the Plivo "
                "credentials cross the network in clear (refused in production)"
            )
        return warnings

    @property
    def plivo_api_url_in_clear(self) -> bool:
        """http:// to anything but this machine: Basic auth would cross a network."""
        url = urlsplit(self.plivo_api_url)
        return url.scheme != "https" and not is_loopback(url.hostname or "")

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
    def send_rate_per_second(self) -> float:
        """SEND_RATE in sends per second; 0.0 when pacing is off."""
        from app.pacing import parse_rate

        return parse_rate(self.send_rate)

    @property
    def quiet_window(self) -> Window:
        """QUIET_HOURS, parsed (validated at startup)."""
        from app.quiet_hours import parse_window

        return parse_window(self.quiet_hours)

    @property
    def media_preflight_enabled(self) -> bool:
        """MEDIA_PREFLIGHT, or by default: on when sending for real, off in sandbox mode."""
        return self.media_preflight if self.media_preflight is not None else not self.sandbox

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
        if self.webhook_secret:
            secret = self.webhook_secret.get_secret_value()
            values += [secret, secret.removeprefix(WEBHOOK_SECRET_PREFIX)]
        return [v for v in values if len(v) >= 4]


def _allow_host(entry: str) -> str:
    """One MEDIA_ALLOW_HOSTS entry, canonical: lowercase `host` or `host:port`, an IPv6
    address in brackets when a port follows (`[fd00::1]:8443`)."""
    entry = entry.strip().lower()
    port: str | None = None
    if entry.startswith("["):
        host, closed, rest = entry[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{entry!r} is not `host` or `host:port`")
        port = rest[1:] if rest else None
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:
        host = entry  # a name, an IPv4 address, or a bare IPv6 address (several colons)
    if not host or any(c in host for c in "/@?#[] "):
        raise ValueError(f"{entry!r} is not `host` or `host:port`")
    if port is None:
        return host
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{entry!r}: the port must be 1-65535")
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


def _trusts_everyone(forwarded_allow_ips: str) -> bool:
    """`*`, or a network of every address (0.0.0.0/0, ::/0), among uvicorn's entries."""
    for entry in (part.strip() for part in forwarded_allow_ips.split(",")):
        if entry == "*":
            return True
        try:
            if ipaddress.ip_network(entry, strict=False).prefixlen == 0:
                return True
        except ValueError:
            continue  # a host or a socket path: uvicorn matches it literally
    return False


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
