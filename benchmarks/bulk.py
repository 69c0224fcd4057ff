"""Scenario 6, "bulk": a batch handed over with `Prefer: respond-async`, then sent by the
outbox at SEND_RATE.

Two runs, each on a fresh SQLite store, the service on one core (taskset), the fake Plivo on
the other:

- **accept**: `count` respond-async sends (each with `send_at` a day ahead, so nothing is
  sent meanwhile) from 50 concurrent connections of wrk (bulk_accept.lua, on the other
  core): accepts per second, p50/p99 of the 202, the service's CPU per accepted send.
- **drain**: `count` sends accepted the same way but due at one moment a little after
  the acceptance ends; from then, the outbox alone works: the achieved send rate (from the
  first to the last send the fake received) against SEND_RATE, and the service's CPU per
  outbox send.

The caller is one batch sender: RATE_LIMIT is raised for it (the per-IP limit is for many
clients), every other feature is on as in the other scenarios.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

CONNECTIONS = 50
ACCEPT_SCRIPT = Path(__file__).resolve().parent / "bulk_accept.lua"


def _accept_with_wrk(
    url: str, api_key: str, media_url: str, send_at: str, count: int
) -> dict[str, Any]:
    """`count` respond-async sends by wrk (bulk_accept.lua) over CONNECTIONS connections,
    on CPU 1, so that the service, not the client, sets the pace: the seconds until the
    `count`-th 202, and wrk's latency summary. Sends still in flight then are accepted too
    (at most one per connection beyond `count`)."""
    env = {
        **os.environ,
        "BULK_API_KEY": api_key,
        "BULK_MEDIA_URL": media_url,
        "BULK_SEND_AT": send_at,
        "BULK_COUNT": str(count),
    }
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", "-d600s", "--timeout"]
    command += ["30s", "-s", str(ACCEPT_SCRIPT), f"{url}/api/mms/send"]
    started = time.perf_counter()
    wrk = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert wrk.stdout is not None
    took = None
    lines = []
    for line in wrk.stdout:
        lines.append(line)
        if line.startswith("BULK_DONE") and took is None:
            took = time.perf_counter() - started
            wrk.send_signal(signal.SIGINT)  # wrk stops and prints its summary
    wrk.wait(30)
    summary_line = next((x for x in lines if x.startswith("WRK_JSON ")), None)
    if took is None or summary_line is None:
        raise RuntimeError(f"bulk: wrk ended without {count} answers: {''.join(lines)[-500:]}")
    summary: dict[str, Any] = json.loads(summary_line.removeprefix("WRK_JSON "))
    if summary["errors"]:
        raise RuntimeError(f"bulk: {summary['errors']} errors or non-202 answers")
    return {**summary, "seconds": took}


def _fake_accepted(fake_url: str) -> int:
    return int(httpx.get(f"{fake_url}/_stats", timeout=5).json()["accepted"])


def bulk(
    *,
    count: int,
    rate: float,
    start: Callable[[str], Any],
    stop: Callable[[Any], None],
    cpu_seconds: Callable[[int], float],
    service_url: str,
    fake_url: str,
    api_key: str,
    media_url: str,
) -> dict[str, Any]:
    """`start(name)` starts the service on a fresh store and returns its process."""
    # 1. Acceptance alone.
    proc = start("bulk-accept")
    try:
        later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        _accept_with_wrk(service_url, api_key, media_url, later, 100)  # warm-up
        cpu = cpu_seconds(proc.pid)
        summary = _accept_with_wrk(service_url, api_key, media_url, later, count)
        accept_cpu = cpu_seconds(proc.pid) - cpu
    finally:
        stop(proc)
    took = summary["seconds"]
    accept = {
        "count": count,
        "seconds": round(took, 2),
        "accepts_per_s": round(count / took, 1),
        "p50_ms": round(summary["p50_us"] / 1000, 1),
        "p99_ms": round(summary["p99_us"] / 1000, 1),
        # The CPU until wrk stopped: a few requests of the last round trip beyond `count`.
        "svc_cpu_ms_per_accept": round(accept_cpu * 1000 / summary["requests"], 3),
    }
    print(f"    accept: {accept}", flush=True)

    # 2. The drain: everything due at one moment after the acceptance.
    proc = start("bulk-drain")
    try:
        lead = max(5.0, 1.5 * took + 2)  # acceptance runs at about the rate measured above
        due = datetime.now(UTC) + timedelta(seconds=lead)
        before = _fake_accepted(fake_url)
        _accept_with_wrk(service_url, api_key, media_url, due.isoformat(), count)
        wait = (due - datetime.now(UTC)).total_seconds()
        if wait <= 0:
            raise RuntimeError("bulk: the acceptance outlasted its lead; raise it")
        time.sleep(max(0.0, wait - 0.5))
        cpu = cpu_seconds(proc.pid)
        first = last = quarter = three_quarters = None
        sent = 0
        deadline = time.monotonic() + count / rate * 3 + 60
        while time.monotonic() < deadline:
            sent = _fake_accepted(fake_url) - before
            now = time.monotonic()
            if sent and first is None:
                first = now
            if sent >= count // 4 and quarter is None:
                quarter = now
            if sent >= 3 * count // 4 and three_quarters is None:
                three_quarters = now
            if sent >= count:
                last = now
                break
            time.sleep(0.02)
        drain_cpu = cpu_seconds(proc.pid) - cpu
    finally:
        stop(proc)
    if first is None or last is None:
        raise RuntimeError(f"bulk: only {sent} of {count} sent in time")
    drained = last - first
    burst = max(1, int(rate))
    drain = {
        "count": count,
        "send_rate": rate,
        "seconds": round(drained, 2),
        # The first second's burst goes at once; the rest at the rate.
        "expected_seconds": round(max(0, count - burst) / rate, 2),
        "achieved_per_s": round((count - 1) / drained, 1) if drained > 0 else None,
        # The steady pace, between a quarter and three quarters sent: the burst and a late
        # first send (the first claims, marks and preflight) do not enter it.
        "steady_per_s": round((count // 2) / (three_quarters - quarter), 1)
        if quarter is not None and three_quarters is not None and three_quarters > quarter
        else None,
        "svc_cpu_ms_per_send": round(drain_cpu * 1000 / count, 3),
    }
    print(f"    drain: {drain}", flush=True)
    return {"accept": accept, "drain": drain}


def report_lines(result: dict[str, Any]) -> list[str]:
    a, d = result["accept"], result["drain"]
    return [
        f"| 6. bulk: {a['count']:,} respond-async accepts | — | {a['accepts_per_s']:.0f}/s "
        f"(p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms, {a['svc_cpu_ms_per_accept']} ms CPU "
        "each) | | ≥ 2× scenario 1's sync req/s |",
        f"| 6. bulk: drained by the outbox | — | {d['steady_per_s']}/s steady at SEND_RATE "
        f"{d['send_rate']:g}/s (all in {d['seconds']} s, expected {d['expected_seconds']} s "
        f"after the burst; {d['svc_cpu_ms_per_send']} ms CPU per send) | | SEND_RATE ± 2 % |",
    ]
