"""`?since=`: ISO 8601 text only, a time without an offset is UTC (app/deps.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import TypeAdapter, ValidationError

from app.deps import IsoDateTime

since = TypeAdapter(IsoDateTime)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T10:00:00", datetime(2026, 12, 1, 10, tzinfo=UTC)),  # no offset: UTC
        ("2026-12-01 10:00:00.250", datetime(2026, 12, 1, 10, 0, 0, 250_000, tzinfo=UTC)),
        ("2026-12-01T10:00:00Z", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        (
            "2026-12-01T10:00:00+05:30",
            datetime(2026, 12, 1, 10, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
    ],
)
def test_iso_8601_text_is_read(text, expected):
    moment = since.validate_python(text)
    assert moment == expected and moment.tzinfo is not None
    assert moment.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize("text", ["1700000000", "1.866519284748981e-307", "-1", "yesterday", ""])
def test_anything_else_is_refused(text):
    with pytest.raises(ValidationError):
        since.validate_python(text)
