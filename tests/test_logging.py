"""Logs at LOG_LEVEL=debug: one JSON line per request, no secret, key, text or full number."""

from __future__ import annotations

import json
import sqlite3

import pytest

from app.logging import mask_number, mask_text
from tests import fakeplivo as fp
from tests.fakeplivo import AUTH_ID, AUTH_TOKEN
from tests.helpers import API_KEYS, KEY_A, KEY_B
from tests.loopback import http_get, http_post
from tests.server import Server, base_env

TEXT = "top-secret-message-text-4711"
NUMBER = "+14155550123"


def test_masking():
    assert mask_number("+14155550100") == "+1415***0100"
    assert mask_text("to +14155550100 and 14155550101 not 1234") == (
        "to +1415***0100 and 1415***0101 not 1234"
    )
    assert mask_text("uuid 8777463d-0b17-437b-9692-612345678901") == (
        "uuid 8777463d-0b17-437b-9692-612345678901"
    )


@pytest.mark.e2e
def test_debug_logs_leak_nothing(fake_plivo, tmp_path):
    """At LOG_LEVEL=debug, through refusals, Plivo's errors and a stored text, the log has
    no secret, API key, Idempotency-Key, text or full number. Row 11: aiosqlite's own
    logger printed every statement with its parameters (the stored message text, the
    Idempotency-Key, the number)."""
    key = "idem-key-7f3a9c2e5b1d"
    env = base_env(
        fake_plivo.url,
        LOG_LEVEL="debug",
        API_KEYS=API_KEYS,
        METRICS_TOKEN="metrics-token-0123456789",
        STORE_MESSAGE_TEXT="true",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/mms.db",
    )
    server = Server(env, tmp_path / "server.log").wait_healthy()
    try:
        body = {"to": NUMBER, "media_urls": ["https://e.x/a.png"], "text": TEXT}
        url = f"{server.url}/api/mms/send"
        assert http_post(url, json=body, headers={"X-API-Key": KEY_A}).status_code == 200
        assert (
            http_post(url, json=body, headers={"Authorization": f"Bearer {KEY_B}x"}).status_code
            == 401
        )
        fake_plivo.script(fp.status(400, f"'{NUMBER}' is not a valid phone number."))
        assert http_post(url, json=body, headers={"X-API-Key": KEY_B}).status_code == 400
        fake_plivo.script(fp.drop())
        assert http_post(url, json=body, headers={"X-API-Key": KEY_B}).status_code == 502
        bad = {**body, "to": "+4420718387501234"}
        assert http_post(url, json=bad, headers={"X-API-Key": KEY_B}).status_code == 422
        stored = http_post(url, json=body, headers={"X-API-Key": KEY_A, "Idempotency-Key": key})
        assert stored.status_code == 200
        message_uuid = stored.json()["messageUuid"][0]
        looked_up = http_get(f"{server.url}/api/mms/{message_uuid}", headers={"X-API-Key": KEY_A})
        assert looked_up.status_code == 200
    finally:
        assert server.terminate() == 0
    with sqlite3.connect(tmp_path / "mms.db") as db:  # the statements did carry the text
        assert TEXT in {row[0] for row in db.execute("SELECT text FROM messages")}
    logs = server.logs()
    for secret in (AUTH_ID, AUTH_TOKEN, KEY_A, KEY_B, TEXT, key, "metrics-token-0123456789"):
        assert secret not in logs, secret
    for number in (NUMBER, NUMBER[1:], "4420718387501234"):
        assert number not in logs, number
    assert mask_number(NUMBER) in logs

    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    requests = [
        line for line in lines if line["event"] == "request" and line["route"] == "/api/mms/send"
    ]
    assert [r["status"] for r in requests] == [200, 401, 400, 502, 422, 200]
    for line in requests:
        assert {"request_id", "route", "status", "duration_ms", "timestamp", "level"} <= set(line)
    assert [r.get("caller") for r in requests] == [
        "alpha",
        None,
        "bravo",
        "bravo",
        "bravo",
        "alpha",
    ]
    assert any(line["level"] == "debug" for line in lines)  # debug really was on


def test_alembic_logs_only_warnings_even_at_debug(capsys):
    # Alembic says ~10 INFO lines per migration ("setup plugin ..."); our `migrated` line
    # replaces them. Its warnings still reach the log.
    import logging

    from app.logging import configure_logging

    configure_logging(level="debug", fmt="json")
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate")
    logging.getLogger("alembic.runtime.migration").warning("something odd")
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["something odd"]


def test_row11_driver_loggers_stay_at_warning_whatever_log_level(capsys):
    import logging

    from app.logging import configure_logging

    configure_logging(level="debug", fmt="json")
    for name in ("aiosqlite", "asyncpg", "sqlalchemy.engine.Engine", "sqlalchemy.pool"):
        logging.getLogger(name).debug("statement with %s", TEXT)
        logging.getLogger(name).info("statement with %s", TEXT)
    logging.getLogger("aiosqlite").warning("driver warning")
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["driver warning"]


def test_row11_only_number_fields_mask_bare_digit_runs(capsys):
    """Row 11: a 13-digit millisecond timestamp was masked as if it were a phone number.
    Bare digit runs are masked in number fields (and in quoted texts: Plivo's errors,
    tracebacks); E.164 numbers ("+") in every field."""
    from app.logging import configure_logging, get_logger

    configure_logging(level="debug", fmt="json")
    get_logger("t").info(
        "event",
        at="1764624000000",
        to="14155550123",
        to_number="14155550124",
        error="'14155550125' is not a valid phone number.",
        note="forwarded to +14155550126",
    )
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert line["at"] == "1764624000000"
    assert line["to"] == "1415***0123" and line["to_number"] == "1415***0124"
    assert line["error"] == "'1415***0125' is not a valid phone number."
    assert line["note"] == "forwarded to +1415***0126"


def test_the_request_line_is_the_line_the_processors_write(capsys):
    """The per-request line is rendered in one step with JSON logs: the same keys in the
    same order, the same masking and scrubbing as any other line."""
    import structlog

    from app.logging import configure_logging, get_logger, log_request

    configure_logging(level="info", fmt="json", secrets=["secret-token-0123"])
    fields = {
        "method": "POST",
        "route": "/api/mms/send",
        "status": 502,
        "duration_ms": 1.25,
        "caller": None,
        "to": NUMBER,
        "message_uuid": "8777463d-0b17-437b-9692-612345678901",
        "code": "upstream secret-token-0123 14155550199",
        "pid": 4711,
    }
    tokens = structlog.contextvars.bind_contextvars(request_id="rid-1")
    try:
        log_request(dict(fields))
        get_logger("app.access").info("request", **fields)
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    fast, chain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert fast.pop("timestamp").endswith("Z") and chain.pop("timestamp").endswith("Z")
    assert list(fast.items()) == list(chain.items())
    assert fast["to"] == mask_number(NUMBER) and "caller" not in fast
    assert fast["request_id"] == "rid-1" and fast["level"] == "info"
    assert fast["code"] == "upstream [redacted] 14155550199"  # not a number field


@pytest.mark.parametrize(
    ("level", "fmt", "written"), [("warning", "json", 0), ("info", "console", 1)]
)
def test_the_request_line_follows_the_level_and_the_format(capsys, level, fmt, written):
    from app.logging import configure_logging, log_request

    configure_logging(level=level, fmt=fmt)
    log_request({"method": "GET", "route": "/health", "status": 200, "to": NUMBER})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == written
    if written:
        assert "request" in lines[0] and mask_number(NUMBER) in lines[0] and NUMBER not in lines[0]
