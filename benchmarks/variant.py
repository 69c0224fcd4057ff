"""Start `python -m app` with some features switched off — for the per-feature CPU table only.

    BENCH_FEATURES_OFF=ip_limit,destination_limit,record python benchmarks/variant.py

Features that have a configuration switch are turned off by configuration in feature_cost.py
(auth: no API_KEYS; quota: DAILY_QUOTA_PER_KEY=0; logging: LOG_LEVEL=warning; media
preflight: MEDIA_PREFLIGHT=false; the pacer: SEND_RATE=0); the others have none in
production on purpose, so this launcher replaces them with no-ops here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _replace(owner: Any, name: str, value: Any) -> None:
    """Replace `owner.name`, which must exist: a renamed function would otherwise leave its
    feature on while its row claims it off (the record's row did, until 2026-12-07)."""
    if not hasattr(owner, name):
        raise AttributeError(f"variant: {owner.__name__}.{name} no longer exists")
    setattr(owner, name, value)


def switch_off(off: set[str]) -> None:
    """Replace the named features with no-ops (before the app is built)."""
    if "ip_limit" in off:
        from app import ratelimit

        async def pass_through(self: Any, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

        _replace(ratelimit.ClientRateLimitMiddleware, "__call__", pass_through)
    if "destination_limit" in off:
        from app import ratelimit

        async def quota_test(self: Any, *, destination: str, caller: str) -> None:
            if self.daily_quota:
                await self.store.daily_hit(self.daily_quota, "quota", caller, count=False)

        async def quota_count(self: Any, *, destination: str, caller: str) -> None:
            if self.daily_quota:
                await self.store.daily_hit(self.daily_quota, "quota", caller)

        _replace(ratelimit.Limits, "test_send", quota_test)
        _replace(ratelimit.Limits, "count_send", quota_count)
    if "record" in off:
        from app.mms import service

        async def no_record(*args: Any, **kwargs: Any) -> None:
            return None

        _replace(service, "record_outcome", no_record)
    if "optout_check" in off:
        from app.mms import service

        async def not_listed(db: Any, number: str) -> None:
            return None

        _replace(service, "refuse_if_opted_out", not_listed)
    if "metrics" in off:
        from app.metrics import Metrics

        def nothing(*args: Any, **kwargs: Any) -> None:
            return None

        for hook in (
            "observe_request",
            "plivo_attempt",
            "set_plivo_in_flight",
            "rate_limit_rejected",
            "callback",
            "store_batch",
            "preflight_result",
            "preflight_cache_lookup",
            "preflight_took",
            "pacing_waited",
            "pacing_refused",
        ):
            _replace(Metrics, hook, nothing)


if __name__ == "__main__":
    switch_off({f for f in os.environ.get("BENCH_FEATURES_OFF", "").split(",") if f})
    from app.__main__ import main

    sys.exit(main(sys.argv[1:]))
