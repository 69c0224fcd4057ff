"""structlog set-up: one line per event, phone numbers masked, secrets scrubbed.

Every log line, ours and other libraries' (uvicorn, aiohttp, asyncio), goes through the same
processors, so a secret cannot leak through a third-party logger either.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

# Phone-shaped digit runs (with or without "+"), not glued to words or hyphens (UUIDs).
_PHONE = re.compile(r"(?<![\w\-.])\+?\d{10,15}(?![\w\-])")
# E.164 as the service writes numbers ("+" and 10-15 digits): masked in every value.
_E164 = re.compile(r"(?<![\w\-.])\+\d{10,15}(?![\w\-])")
# Values that hold numbers (Plivo writes them without "+"), or text that may quote one as
# Plivo wrote it (its error messages, tracebacks): every phone-shaped run is masked there.
# Anywhere else a bare digit run is not taken for a number (a 13-digit ms timestamp is not).
_NUMBER_KEYS = frozenset(
    {"to", "from", "from_", "number", "dst", "src", "destination", "recipient", "sender"}
)
_QUOTING_KEYS = frozenset({"error", "exception", "detail"})
# Store drivers log statements with their parameters (message text, idempotency keys) at
# DEBUG, whatever SQLAlchemy's hide_parameters says: they never go below WARNING.
DRIVER_LOGGERS = ("aiosqlite", "asyncpg", "sqlalchemy", "sqlalchemy.engine", "sqlalchemy.pool")
# Keys whose values are never logged, whatever they hold.
_DROPPED_KEYS = frozenset({"text", "auth_token", "authorization", "api_key", "password", "secret"})


def mask_number(number: str) -> str:
    """`+14155550100` -> `+1415***0100`: enough to correlate, not enough to dial."""
    if len(number) < 9:
        return "***"
    keep = 5 if number.startswith("+") else 4  # country code and area code
    return f"{number[:keep]}***{number[-4:]}"


def _mask_match(match: re.Match[str]) -> str:
    return mask_number(match.group(0))


def mask_text(value: str) -> str:
    """Mask every phone-shaped run (with or without "+")."""
    return _PHONE.sub(_mask_match, value)


def _holds_numbers(key: str) -> bool:
    return key in _NUMBER_KEYS or key in _QUOTING_KEYS or key.endswith("_number")


def _mask_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask phone numbers (E.164 everywhere, any phone-shaped run in number fields and
    quoted texts); drop None values and never-log keys."""
    event.pop("color_message", None)  # uvicorn's ANSI duplicate of the message
    for key, value in list(event.items()):
        if value is None:
            del event[key]
        elif key in _DROPPED_KEYS:
            event[key] = "[redacted]"
        elif type(value) is str:  # one C-level scan per value
            pattern = _PHONE if _holds_numbers(key) else _E164
            event[key] = pattern.sub(_mask_match, value)
    return event


class _SecretScrubber:
    """Last processor: replaces configured secrets anywhere in the rendered line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, _: Any, __: str, line: Any) -> Any:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, "[redacted]")
        return line


class _StdoutLogger:
    """Writes each line to the *current* sys.stdout (tests swap it), flushed at once."""

    def msg(self, message: str) -> None:
        stream = sys.stdout
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stdout_logger(*_: Any) -> _StdoutLogger:
    return _StdoutLogger()


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def _through_processors(fields: dict[str, Any]) -> None:
    structlog.get_logger("app.access").info("request", **fields)


def _json_request_line(scrub: _SecretScrubber) -> Callable[[dict[str, Any]], None]:
    """The request line in one step: what the JSON chain would write (the same keys,
    masking and scrubbing), without the bound logger and the processor loop — it is
    written for every request (decision 0021)."""

    out = _StdoutLogger()
    merge = structlog.contextvars.merge_contextvars

    def write(fields: dict[str, Any]) -> None:
        event = merge(None, "info", {**fields, "event": "request"})
        event["level"] = "info"
        event["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        _mask_values(None, "info", event)
        out.msg(scrub(None, "info", _orjson_dumps(event)))

    return write


def _dropped(fields: dict[str, Any]) -> None:
    return None


_request_line: Callable[[dict[str, Any]], None] = _through_processors


def log_request(fields: dict[str, Any]) -> None:
    """Write the one `request` line of a request (info level, logger `app.access`)."""
    _request_line(fields)


def configure_logging(*, level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    global _request_line
    numeric = logging.getLevelName(level.upper())
    scrub = _SecretScrubber(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # before masking, so tracebacks are masked too
        _mask_values,
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)

    if numeric > logging.INFO:
        _request_line = _dropped
    elif fmt == "json":
        _request_line = _json_request_line(scrub)
    else:
        _request_line = _through_processors

    structlog.configure(
        processors=[*shared, renderer, scrub],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stdout_logger,
        cache_logger_on_first_use=True,
    )

    # Other libraries' stdlib loggers: same masking, same renderer, same scrubbing.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
            scrub,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aiohttp", "asyncio"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers[:] = []
        lib_logger.propagate = True
    # Our own per-request line replaces uvicorn's access log.
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic's INFO lines ("setup plugin ...", ~10 per migration) say less than our own
    # `migrated revision=...` line; its warnings and errors still show.
    for name in (*DRIVER_LOGGERS, "alembic"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
