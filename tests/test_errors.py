"""The error tree: explicit classes, each with its status, code, outcome and retry rule."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app import errors
from app.metrics import SEND_CODES
from app.plivo.client import PlivoDropped, PlivoHTTPError, PlivoTimeout, PlivoUnreachable
from app.plivo.sender import map_plivo_error
from app.status import MessageStatus


def _classes() -> list[type[errors.AppError]]:
    return errors.AppError.__subclasses__()


def test_codes_are_unique_and_every_error_is_a_declared_class():
    codes = [cls.code for cls in _classes()]
    assert len(codes) == len(set(codes))
    assert {cls.__name__ for cls in _classes()} <= set(vars(errors))


def test_retryable_errors_store_nothing():
    """A retryable refusal must leave nothing behind: the same request is sent again."""
    for cls in _classes():
        if cls.retryable:
            assert cls.outcome is None, cls.__name__


def test_send_metric_labels_derive_from_the_send_errors():
    assert set(SEND_CODES) == {"ok", "scheduled", "idempotent_replay"} | {
        e.code for e in errors.SEND_ERRORS
    }


@pytest.mark.parametrize(
    ("failure", "error", "outcome", "retried"),
    [
        (PlivoHTTPError(400, "bad number"), errors.PlivoRejected, MessageStatus.REJECTED, False),
        (PlivoHTTPError(401, "no"), errors.UpstreamAuthFailed, None, False),
        (PlivoHTTPError(404, "no"), errors.UpstreamError, None, False),
        (PlivoHTTPError(429, "slow down"), errors.UpstreamRateLimited, None, True),
        (PlivoHTTPError(500, "oops"), errors.UpstreamError, MessageStatus.UNKNOWN, False),
        (PlivoHTTPError(503, "down"), errors.UpstreamUnavailable, None, True),
        (PlivoUnreachable("refused"), errors.UpstreamUnavailable, None, True),
        (PlivoDropped("reset"), errors.UpstreamError, MessageStatus.UNKNOWN, False),
        (PlivoTimeout("late"), errors.UpstreamTimeout, MessageStatus.UNKNOWN, False),
    ],
)
def test_plivo_failures_map_to_an_error_that_says_what_is_stored(failure, error, outcome, retried):
    mapped = map_plivo_error(failure)
    assert type(mapped) is error
    assert mapped.outcome == outcome
    assert mapped.retryable is retried


def test_config_imports_nothing_from_the_routes():
    """No upward import: the settings load without the MMS package."""
    code = "import sys, app.config; print([m for m in sys.modules if m.startswith('app.mms')])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


async def test_every_unexpected_failure_takes_the_one_500_path(client):
    """A bug (an exception, or an HTTPException the service never raises on purpose) is
    answered by the request middleware alone: 500 problem+json with the request id."""
    from starlette.exceptions import HTTPException

    async def teapot() -> None:
        raise HTTPException(418)

    async def bug() -> None:
        raise RuntimeError("bug")

    client.fastapi_app.add_api_route("/teapot", teapot)
    client.fastapi_app.add_api_route("/bug", bug)
    for path in ("/teapot", "/bug"):
        response = await client.get(path)
        assert response.status_code == 500
        assert response.headers["content-type"] == errors.PROBLEM_MEDIA_TYPE
        body = response.json()
        assert body["code"] == "internal_error"
        assert body["requestId"] == response.headers["x-request-id"]
