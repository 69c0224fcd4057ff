"""`make bench`: every performance scenario, side by side with the Node.js/Fastify peer.

    python benchmarks/run.py [--scenarios overhead,preflight-cold,concurrency,callbacks,
                                          coldstart,features,bulk]
                             [--rounds 3] [--duration 10] [--bulk-count 10000]
                             [--bulk-rate 500]

1. overhead        upstream 0 ms, 50 connections (peer's compare.sh, interleaved rounds)
   preflight-cold  scenario 1's load on our service alone, every send a new media URL (a
                   media preflight cache miss each) against runs with one cached URL
2. concurrency     upstream 100 ms, 200 connections (ceiling: 100 in flight / 0.1 s)
3. callbacks       unique, validly signed callbacks into SQLite and PostgreSQL (no peer feature),
                   each status change delivered as a webhook to a local receiver
4. coldstart       seconds from exec to the first 200 on /health (RSS comes from scenario 2)
5. features        instructions per send with each feature switched off (callgrind)
6. bulk            10,000 `Prefer: respond-async` sends: accepts/s and p99 of the 202, then
                   the outbox's drain at SEND_RATE (achieved rate, CPU per send): bulk.py

Both services get one core (taskset), realistic limits (RATE_LIMIT=100/minute, load spread
over 10,000 client addresses and 1,000 destinations), PLIVO_MAX_CONCURRENCY=100, every
feature on (API key, both limits, daily quota, logging, metrics, the record, media
preflight). The sends' media URL is a picture on a local media server (media_server.py),
which the service may reach through MEDIA_ALLOW_HOSTS, the setting for an internal media
host; both services get the same body (the peer checks no media).
Results: benchmarks/results/latest.{md,json,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import bulk as bulk_scenario
import media_server
from media_server import MediaServer

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
RESULTS = HERE / "results"
PYTHON = sys.executable
PORT = 3102
FAKE_PORT = 8765
AUTH_ID, AUTH_TOKEN = "MAFAKEAUTHID00000000", "fake-auth-token"
API_KEY = "bench-0123456789abcdef"
PUBLIC = "https://mms.example.com"
sys.path.insert(0, str(ROOT))

# Every feature on, as in production (the load carries the API key). Media preflight is on
# as well: the local media server's `env` (MEDIA_PREFLIGHT, MEDIA_ALLOW_HOSTS) is added where
# the service starts, once the server has its port.
SERVICE_ENV = {
    "API_KEYS": f"bench:{API_KEY}",
    "RATE_LIMIT": "100/minute",
    "RATE_LIMIT_PER_DESTINATION": "100000/hour",
    "DAILY_QUOTA_PER_KEY": "1000000000",
    "PLIVO_MAX_CONCURRENCY": "100",
    # The pacer runs on every send, at a throughput above what one core can send (an
    # account whose MMS throughput Plivo raised): it never makes a send wait.
    "SEND_RATE": "10000/second",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "info",
    "PUBLIC_BASE_URL": PUBLIC,
    # One webhook endpoint for the load's key: every status change of every send is an
    # event, delivered to a local receiver answering 200 (webhook_receiver.py, on CPU 1).
    "WEBHOOKS": "bench=http://127.0.0.1:8791/hook",
    "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}


# Peer and helpers --------------------------------------------------------------------------
def prepare_peer(workdir: Path) -> Path:
    """A working copy of benchmarks/peer/ with its dependencies installed (idempotent).

    The copy keeps the installed .venv and node_modules (and compare.sh's runs/) out of the
    repository; the sources are refreshed on every call, the installs only when missing.
    """
    source = Path(os.environ.get("PEER_DIR", HERE / "peer")).resolve()
    target = workdir / "peer"
    shutil.copytree(
        source,
        target,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("node_modules", ".venv", "runs", "__pycache__"),
    )
    for path in target.rglob("*"):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    subprocess.run([str(target / "setup.sh"), "--quiet"], check=True, timeout=900)
    return target


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout: float = 60.0) -> None:
    """Poll until `url` answers 200. One client for the whole wait: httpx builds an SSL
    context for every client (about 30 ms of CPU with the CA bundle), so polling with
    `httpx.get` every 20 ms kept a core busy, and took CPU from the service being timed."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


def start_service(env: dict[str, str], log: Path, *, variant_off: str = "") -> subprocess.Popen:
    full = {**os.environ, **env, "PORT": str(PORT), "HOST": "127.0.0.1"}
    command = [PYTHON, "-m", "app"]
    if variant_off:
        full["BENCH_FEATURES_OFF"] = variant_off
        command = [PYTHON, str(HERE / "variant.py")]
    return subprocess.Popen(
        ["taskset", "-c", "0", *command],
        cwd=ROOT,
        env=full,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def fresh_sqlite(workdir: Path, name: str) -> str:
    path = workdir / f"{name}.db"
    for suffix in ("", "-wal", "-shm", ".migrate.lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite+aiosqlite:///{path}"


OPTOUTS_LISTED = 100_000  # an opt-out list of a realistic size, none of them in the load


def seed_optouts(url: str, count: int = OPTOUTS_LISTED) -> None:
    """Migrate the SQLite store and list `count` numbers as opted out (+1415200xxxx: the
    load sends to 555 numbers only), so every send's opt-out check runs against a full list."""
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([PYTHON, "-m", "app", "migrate"], cwd=ROOT, env=env, check=True)
    import sqlite3

    path = url.removeprefix("sqlite+aiosqlite:///")
    now = int(time.time() * 1000)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO optouts (number, opted_out, since, source) VALUES (?, 1, ?, 'inbound')",
            ((f"+1415{2_000_000 + i:07d}", now) for i in range(count)),
        )


# 1 + 2: side by side with the peer ---------------------------------------------------------
def compare(
    peer: Path,
    workdir: Path,
    media: MediaServer,
    latency: int,
    connections: int,
    rounds: int,
    duration: int,
) -> dict[str, Any]:
    env = {
        **SERVICE_ENV,
        **media.env,
        "DATABASE_URL": fresh_sqlite(workdir, f"compare{latency}"),
    }
    seed_optouts(env["DATABASE_URL"])
    env_args = " ".join(f"{k}={v}" for k, v in env.items())
    command = [
        str(peer / "compare.sh"),
        "--latency-ms",
        str(latency),
        "--connections",
        str(connections),
        "--duration",
        str(duration),
        "--rounds",
        str(rounds),
        "--label-b",
        "mms-gateway",
        "--b-health",
        f"http://127.0.0.1:{PORT}/health",
        f"exec env {env_args} {PYTHON} -m app",
        f"http://127.0.0.1:{PORT}/api/mms/send",
    ]
    summary: dict[str, Any] = {}
    run_env = {
        **os.environ,
        "LOAD_AUTHORIZATION": f"Bearer {API_KEY}",
        "LOAD_MEDIA_URL": media.url,  # one picture: checked once, then a cache hit
        "B_RATE_LIMIT": SERVICE_ENV["RATE_LIMIT"],
        "B_RATE_LIMIT_PER_DESTINATION": SERVICE_ENV["RATE_LIMIT_PER_DESTINATION"],
    }
    with subprocess.Popen(
        command, cwd=ROOT, env=run_env, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SUMMARY_JSON "):
                summary = json.loads(line.removeprefix("SUMMARY_JSON "))
            elif line.startswith(("round", "ratio", "A ", "B ", "WARNING", "==")):
                print("   ", line.rstrip(), flush=True)
    if proc.returncode != 0 or not summary:
        raise SystemExit(f"compare.sh failed (exit {proc.returncode})")
    return summary


# 1, cold media cache: every send a new media URL --------------------------------------------
def preflight_cold(
    peer: Path, workdir: Path, media: MediaServer, rounds: int, duration: int
) -> dict[str, Any]:
    """Scenario 1's load on our service alone, in rounds of a warm run (every send names one
    picture: a preflight cache hit) and a cold run (every send names a new URL, `/m/<n>.png`:
    a miss and a HEAD to the media server each), both on one process, interleaved."""
    fake = _fake(peer)
    env = {
        **SERVICE_ENV,
        **media.env,
        "DATABASE_URL": fresh_sqlite(workdir, "preflight-cold"),
        "PLIVO_AUTH_ID": AUTH_ID,
        "PLIVO_AUTH_TOKEN": AUTH_TOKEN,
        "PLIVO_SENDER_NUMBER": "+14155550000",
        "PLIVO_API_URL": f"http://127.0.0.1:{FAKE_PORT}/v1",
    }
    proc = start_service(env, workdir / "preflight-cold.log")
    runs: dict[str, list[dict[str, Any]]] = {"warm": [], "cold": []}
    try:
        wait_http(f"http://127.0.0.1:{PORT}/health")
        _load(peer, media.url, 5)  # warm-up, as compare.sh's
        for r in range(1, rounds + 1):
            for kind in ("warm", "cold"):
                # A tag per round: no cold URL is ever named twice within this process.
                url = media.url if kind == "warm" else f"{media.base}/m/r{r}-{{n}}.png"
                heads, (hits, misses), cpu, media_cpu = (
                    media.stats()["head"],
                    _preflight_cache(),
                    cpu_seconds(proc.pid),
                    cpu_seconds(media.pid),
                )
                result = _load(peer, url, duration)
                hits_after, misses_after = _preflight_cache()
                hits, misses = hits_after - hits, misses_after - misses
                result |= {
                    "round": r,
                    "cache_hits": hits,
                    "cache_misses": misses,
                    "media_server_heads": media.stats()["head"] - heads,
                    # CPU 1 also runs wrk and the fake Plivo: the media server must not be
                    # what limits the cold runs.
                    "media_server_cpu_pct": round(
                        (cpu_seconds(media.pid) - media_cpu) * 100 / result["duration_s"], 1
                    ),
                    "svc_cpu_ms_per_req": round(
                        (cpu_seconds(proc.pid) - cpu) * 1000 / max(1, result["requests"]), 3
                    ),
                }
                runs[kind].append(result)
                print(
                    f"    round {r} {kind}: {result['rps']:.0f} req/s, p50 {result['p50_ms']}"
                    f" ms, p99 {result['p99_ms']} ms, {result['non2xx']} non-2xx, "
                    f"cache {hits} hits / {misses} misses, "
                    f"{result['media_server_heads']} HEADs at the media server (its CPU "
                    f"{result['media_server_cpu_pct']} %)",
                    flush=True,
                )
    finally:
        stop(proc)
        stop(fake)

    def med(kind: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[kind]), 3)

    summary: dict[str, Any] = {"connections": 50, "latency_ms": 0, "runs": runs}
    for kind in ("warm", "cold"):
        summary[kind] = {
            key: med(kind, key) for key in ("rps", "p50_ms", "p99_ms", "svc_cpu_ms_per_req")
        } | {
            "non2xx_total": sum(r["non2xx"] or 0 for r in runs[kind]),
            "errors_total": sum(r["errors"] or 0 for r in runs[kind]),
        }
    warm, cold = summary["warm"], summary["cold"]
    summary["added"] = {
        "p50_ms": round(cold["p50_ms"] - warm["p50_ms"], 3),
        "p99_ms": round(cold["p99_ms"] - warm["p99_ms"], 3),
        "rps_ratio": round(cold["rps"] / warm["rps"], 3) if warm["rps"] else None,
    }
    return summary


def _load(peer: Path, media_url: str, duration: int, connections: int = 50) -> dict[str, Any]:
    """One run of scenario 1's load (the peer's load.sh on CPU 1) against our service."""
    out = subprocess.run(
        [
            str(peer / "load.sh"),
            f"http://127.0.0.1:{PORT}/api/mms/send",
            str(connections),
            str(duration),
        ],
        env={
            **os.environ,
            "LOAD_AUTHORIZATION": f"Bearer {API_KEY}",
            "LOAD_CPUS": "1",
            "LOAD_SPREAD": "1",  # 10,000 clients (X-Forwarded-For), 1,000 destinations
            "LOAD_MEDIA_URL": media_url,
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _preflight_cache() -> tuple[float, float]:
    """The service's preflight cache lookups so far: (hits, misses), from /metrics."""
    import httpx

    found = {"hit": 0.0, "miss": 0.0}
    text = httpx.get(f"http://127.0.0.1:{PORT}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("mms_media_preflight_cache_total{"):
            labels, _, value = line.rpartition(" ")
            for result in found:
                if f'result="{result}"' in labels:
                    found[result] = float(value)
    return found["hit"], found["miss"]


# 3: callback ingest -----------------------------------------------------------------------
def _signed_callbacks(path: Path, uuids: list[str], count: int) -> None:
    from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

    url = f"{PUBLIC}/api/mms/status"
    statuses = ("sent", "delivered")
    with path.open("w") as out:
        for i in range(count):
            params = {
                "MessageUUID": uuids[i % len(uuids)],
                "Status": statuses[(i // len(uuids)) % 2],
                "Sequence": str(2 + (i // len(uuids)) % 2),
                "To": "14155550100",
                "From": "14155550000",
                "Units": "1",
                "TotalRate": "0.02",
                "TotalAmount": "0.02",
                "MessageTime": "2026-11-26 12:00:00",
            }
            nonce = f"n{i:08d}{os.urandom(4).hex()}"
            base = construct_post_url(url, dict(params)).decode()
            signature = get_signature_v3(AUTH_TOKEN.encode(), base, nonce.encode()).decode()
            out.write(f"{signature}\t{nonce}\t{urlencode(params)}\n")


def _seed_messages(url: str, count: int) -> list[str]:
    """Messages the callbacks refer to, recorded directly in the store."""
    import asyncio

    from app.store.db import Database
    from app.store.repository import RecordMessage, now_ms

    uuids = [f"{i:08x}-0000-4000-8000-{os.urandom(6).hex()}" for i in range(count)]

    async def seed() -> None:
        db = Database(url)
        await db.start()
        now = now_ms()
        for start in range(0, len(uuids), 2000):  # each chunk commits well within the timeout
            await asyncio.gather(
                *(
                    db.write(
                        RecordMessage(
                            {
                                "id": os.urandom(16).hex(),
                                "caller": "bench",
                                "message_uuid": u,
                                "api_id": None,
                                "to_number": "+14155550100",
                                "from_number": "+14155550000",
                                "media_count": 1,
                                "text": None,
                                "status": "queued",
                                "status_rank": 1,
                                "error_code": None,
                                "idempotency_key": None,
                                "request_id": None,
                                "created_at": now,
                                "updated_at": now,
                                "next_check_at": now + 86_400_000,
                                "checks": 0,
                                "claimed_until": None,
                            }
                        )
                    )
                    for u in uuids[start : start + 2000]
                )
            )
        await db.close()

    asyncio.run(seed())
    return uuids


HOOK_PORT = 8791  # SERVICE_ENV's WEBHOOKS
CALLBACK_MESSAGES = 30_000  # callbacks alternate sent/delivered per pass over these
WARMUP_MESSAGES = 5_000


def _hook_stats() -> dict[str, Any]:
    import httpx

    return dict(httpx.get(f"http://127.0.0.1:{HOOK_PORT}/stats", timeout=5).json())


def _drain_webhooks(quiet_seconds: float = 2.0, limit: float = 180.0) -> dict[str, Any]:
    """Wait until deliveries stop arriving (the backlog is delivered), up to `limit`."""
    deadline = time.monotonic() + limit
    stats = _hook_stats()
    while time.monotonic() < deadline:
        time.sleep(quiet_seconds)
        again = _hook_stats()
        if again["count"] == stats["count"]:
            return again
        stats = again
    return stats


def callbacks(workdir: Path, media: MediaServer, store: str, duration: int) -> dict[str, Any]:
    if store == "sqlite":
        url = fresh_sqlite(workdir, "callbacks")
        role = None
    else:
        role = "bench_" + os.urandom(4).hex()
        _psql(f"CREATE ROLE {role} LOGIN; CREATE SCHEMA {role} AUTHORIZATION {role};")
        url = f"postgresql+asyncpg://{role}@127.0.0.1:5432/test"
    try:
        uuids = _seed_messages(url, CALLBACK_MESSAGES + WARMUP_MESSAGES)
        requests_file = workdir / "callbacks.tsv"
        _signed_callbacks(requests_file, uuids[:CALLBACK_MESSAGES], 120_000)
        # The warm-up's callbacks are for messages of their own: the measured run's are
        # then all new (no replay of a warm-up nonce), and each of the first
        # 2 x CALLBACK_MESSAGES changes a status (an event).
        warmup_file = workdir / "callbacks-warmup.tsv"
        _signed_callbacks(warmup_file, uuids[CALLBACK_MESSAGES:], 20_000)
        env = {
            **SERVICE_ENV,
            **media.env,
            "DATABASE_URL": url,
            "PLIVO_AUTH_ID": AUTH_ID,
            "PLIVO_AUTH_TOKEN": AUTH_TOKEN,
            "PLIVO_SENDER_NUMBER": "+14155550000",
            "PLIVO_API_URL": f"http://127.0.0.1:{FAKE_PORT}/v1",
        }
        proc = start_service(env, workdir / f"callbacks-{store}.log")
        try:
            wait_http(f"http://127.0.0.1:{PORT}/health")
            _wrk_callbacks(warmup_file, 3, 50)  # warm-up (imports the plivo SDK, etc.)
            _drain_webhooks()
            import httpx

            httpx.post(f"http://127.0.0.1:{HOOK_PORT}/reset", timeout=5)
            cpu = cpu_seconds(proc.pid)
            started = time.time()
            result = _wrk_callbacks(requests_file, duration, 50)
            result["svc_cpu_ms_per_req"] = round(
                (cpu_seconds(proc.pid) - cpu) * 1000 / max(1, result["requests"]), 3
            )
            at_end = _hook_stats()["count"]
            hooks = _drain_webhooks()
        finally:
            stop(proc)
        result["store"] = store
        # Deliveries/s: every event of the run (it started with an empty receiver) over the
        # time until the last one arrived; the lag runs from the callback's arrival at the
        # service (the event's timestamp) to the delivery's arrival at the receiver.
        span = max(1e-3, hooks["last_at"] - started)
        result["webhooks"] = {
            "deliveries": hooks["count"],
            "deliveries_per_s": round(hooks["count"] / span, 1),
            "delivered_during_load": at_end,
            "drained_after_load_s": round(max(0.0, hooks["last_at"] - started - duration), 1),
            # The backlog's pace once the callbacks stop: the worker with the core to itself.
            "deliveries_per_s_after_load": round(
                (hooks["count"] - at_end) / max(1e-3, hooks["last_at"] - started - duration), 1
            ),
            "lag_p50_ms": hooks["p50_ms"],
            "lag_p99_ms": hooks["p99_ms"],
        }
        return result
    finally:
        if role:
            _psql(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename='{role}';"
                f"DROP SCHEMA {role} CASCADE; DROP ROLE {role};"
            )


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qAtc", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _wrk_callbacks(requests_file: Path, duration: int, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "5s",
            "-s",
            str(HERE / "callbacks.lua"),
            f"http://127.0.0.1:{PORT}/api/mms/status",
        ],
        env={**os.environ, "CALLBACKS_FILE": str(requests_file)},
        capture_output=True,
        text=True,
        timeout=duration + 60,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    return {
        "requests": raw["requests"],
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "non2xx": raw["status"],
        "errors": raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
    }


# 4: cold start ----------------------------------------------------------------------------
def cold_start(workdir: Path, media: MediaServer, runs: int = 5) -> dict[str, Any]:
    """Exec -> first 200 on /health: a restart (schema already there) and a first start."""
    env = {**SERVICE_ENV, **media.env, "LOG_LEVEL": "warning"}
    restart_url = fresh_sqlite(workdir, "coldstart")
    times: dict[str, list[float]] = {"restart": [], "first_start": []}
    for i in range(runs + 1):
        for kind in ("restart", "first_start"):
            url = restart_url if kind == "restart" else fresh_sqlite(workdir, f"first{i}")
            started = time.perf_counter()
            proc = start_service({**env, "DATABASE_URL": url}, workdir / "coldstart.log")
            try:
                wait_http(f"http://127.0.0.1:{PORT}/health", timeout=30)
                elapsed = time.perf_counter() - started
            finally:
                stop(proc)
            if i > 0:  # the first round primes the page cache and the .pyc files
                times[kind].append(elapsed)
    return {k: round(statistics.median(v), 3) for k, v in times.items()} | {"runs": runs}


# 5: per-feature cost -----------------------------------------------------------------------
def features(fake_url: str, media: MediaServer) -> list[dict[str, Any]]:
    """Instructions per send with each feature off (callgrind: repeatable where time is not)."""
    import feature_cost

    rows = feature_cost.measure(fake_url, media.url)
    for row in rows:
        print(
            f"    {row['variant']:28s} {row['instructions_per_send']:>12,} instructions/send "
            f"(saves {row['saves_share']:.1%})",
            flush=True,
        )
    return rows


def _fake(peer: Path, latency_ms: int = 0) -> subprocess.Popen:
    fake = subprocess.Popen(
        [
            "taskset",
            "-c",
            "1",
            str(peer / ".venv/bin/python"),
            str(peer / "fake_plivo.py"),
            "--port",
            str(FAKE_PORT),
            "--auth-id",
            AUTH_ID,
            "--auth-token",
            AUTH_TOKEN,
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{FAKE_PORT}/_stats")
    return fake


# Report -----------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> str:
    lines = [
        f"Measured {results['when']} on this machine ({os.cpu_count()} cores), "
        f"{results['rounds']} interleaved rounds of {results['duration']} s per side.",
        "",
    ]
    lines += ["| scenario | peer (Node) | mms-gateway | ratio | target |", "|---|---|---|---|---|"]
    for key, name, rps_target in (
        ("overhead", "1. upstream 0 ms, 50 conn", "≥ 1.2×, p99 ≤ peer"),
        ("concurrency", "2. upstream 100 ms, 200 conn", "≥ 0.98×, p99 ≤ 1.05× peer"),
    ):
        s = results.get(key)
        if not s:
            continue
        a, b, r = s["A"], s["B"], s["ratio_B_over_A"]
        lines.append(
            f"| {name}: req/s | {a['median_rps']:.0f} | {b['median_rps']:.0f} | "
            f"{r['rps']}× | {rps_target} |"
        )
        lines.append(
            f"| {name}: p99 | {a['median_p99_ms']:.1f} ms | {b['median_p99_ms']:.1f} ms"
            f" | {r['p99']}× | |"
        )
        lines.append(
            f"| {name}: CPU per request | {a['median_svc_cpu_ms_per_req']} ms | "
            f"{b['median_svc_cpu_ms_per_req']} ms | {r['cpu_per_req']}× | |"
        )
        if key == "concurrency":
            lines.append(
                f"| RSS after scenario 2 | {a['rss_after_load']['vmrss_kb'] / 1024:.0f}"
                f" MiB | {b['rss_after_load']['tree_rss_kb'] / 1024:.0f} MiB | "
                f"{r['rss']}× | ≤ 0.8× peer |"
            )
    if results.get("preflight_cold"):
        pc = results["preflight_cold"]
        warm, cold, added = pc["warm"], pc["cold"], pc["added"]
        name = "1. cold media cache (every send a new URL)"
        lines.append(
            f"| {name}: p50 | — | {cold['p50_ms']:.1f} ms (warm {warm['p50_ms']:.1f} ms): "
            f"{added['p50_ms']:+.1f} ms | | reported |"
        )
        lines.append(
            f"| {name}: p99 | — | {cold['p99_ms']:.1f} ms (warm {warm['p99_ms']:.1f} ms): "
            f"{added['p99_ms']:+.1f} ms | | reported |"
        )
        lines.append(
            f"| {name}: req/s | — | {cold['rps']:.0f} (warm {warm['rps']:.0f}; "
            f"{cold['non2xx_total']} non-2xx) | {added['rps_ratio']}× warm | |"
        )
    callback_targets = {"sqlite": "≥ 3,000/s", "postgres": "≥ 2,500/s"}
    for c in results.get("callbacks", []):
        lines.append(
            f"| 3. callbacks into {c['store']} | — | {c['rps']:.0f}/s (p99 {c['p99_ms']}"
            f" ms, {c['non2xx']} non-2xx) | | {callback_targets.get(c['store'], '')} |"
        )
        hooks = c.get("webhooks")
        if hooks:
            lines.append(
                f"| 3. webhook deliveries ({c['store']}, one endpoint) | — | "
                f"{hooks['deliveries_per_s']:.0f}/s ({hooks['deliveries']} events, "
                f"{hooks['delivered_during_load']} during the load, the rest at "
                f"{hooks['deliveries_per_s_after_load']:.0f}/s after it; lag callback → "
                f"delivery p50 {hooks['lag_p50_ms']} ms, p99 {hooks['lag_p99_ms']} ms) | | "
                "lag p99 ≤ 1 s |"
            )
    if "coldstart" in results:
        cs = results["coldstart"]
        lines.append(
            f"| 4. cold start to first /health 200 | — | {cs['restart']} s (restart), "
            f"{cs['first_start']} s (empty database) | | ≤ 1.0 s |"
        )
    if results.get("bulk"):
        lines += bulk_scenario.report_lines(results["bulk"])
    if results.get("features"):
        lines += [
            "",
            "Per-feature cost (callgrind: instructions per send through the app in process, "
            "sequential sends, each row switches one feature off"
            + (f"; measured {results['features_when']}" if "features_when" in results else "")
            + "):",
            "",
            "| variant | instructions per send | saves |",
            "|---|---|---|",
        ]
        for row in results["features"]:
            lines.append(
                f"| {row['variant']} | {row['instructions_per_send']:,} | "
                f"{row['saves_share']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [
        (k, n)
        for k, n in (
            ("overhead", "upstream 0 ms\n50 conn"),
            ("concurrency", "upstream 100 ms\n200 conn"),
        )
        if results.get(k)
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in (
        (axes[0], "median_rps", "throughput (req/s)"),
        (axes[1], "median_p99_ms", "p99 latency (ms)"),
    ):
        x = range(len(scenarios))
        peer = [results[k]["A"][metric] for k, _ in scenarios]
        ours = [results[k]["B"][metric] for k, _ in scenarios]
        ax.bar([i - 0.2 for i in x], peer, width=0.4, label="Node.js peer")
        ax.bar([i + 0.2 for i in x], ours, width=0.4, label="mms-gateway")
        ax.set_xticks(list(x), [n for _, n in scenarios])
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"mms-gateway vs the Node/Fastify peer — {results['when']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios",
        default="overhead,preflight-cold,concurrency,callbacks,coldstart,features,bulk",
    )
    parser.add_argument("--bulk-count", type=int, default=10_000)
    parser.add_argument("--bulk-rate", type=float, default=500.0, help="SEND_RATE, per second")
    parser.add_argument(
        "--send-rate",
        default=SERVICE_ENV["SEND_RATE"],
        help="SEND_RATE of scenarios 1-4 (0: the pacer off, to see its cost)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mms-bench"))
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite latest.md/png from latest.json"
    )
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads((RESULTS / "latest.json").read_text()))
        return
    chosen = args.scenarios.split(",")
    SERVICE_ENV["SEND_RATE"] = args.send_rate
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    peer = prepare_peer(workdir)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "send_rate": args.send_rate,
        "rounds": args.rounds,
        "duration": args.duration,
    }
    with media_server.serving() as media, webhook_receiver():
        run_scenarios(chosen, args, peer, workdir, media, results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    write_report(results)


@contextlib.contextmanager
def webhook_receiver() -> Iterator[None]:
    """The one webhook endpoint of every scenario (SERVICE_ENV's WEBHOOKS), on CPU 1."""
    receiver = subprocess.Popen(
        ["taskset", "-c", "1", PYTHON, str(HERE / "webhook_receiver.py"), "--port", str(HOOK_PORT)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{HOOK_PORT}/stats")
        yield
    finally:
        receiver.terminate()
        receiver.wait(10)


def run_scenarios(
    chosen: list[str],
    args: argparse.Namespace,
    peer: Path,
    workdir: Path,
    media: MediaServer,
    results: dict[str, Any],
) -> None:
    if "overhead" in chosen:
        print("== 1. overhead: upstream 0 ms, 50 connections", flush=True)
        heads = media.stats()["head"]
        results["overhead"] = compare(peer, workdir, media, 0, 50, args.rounds, args.duration)
        results["overhead"]["media_server_heads"] = _media_checks(media, heads)
    if "preflight-cold" in chosen:
        print("== 1, cold media cache: every send a new media URL (our service)", flush=True)
        results["preflight_cold"] = preflight_cold(peer, workdir, media, args.rounds, args.duration)
    if "concurrency" in chosen:
        print("== 2. concurrency: upstream 100 ms, 200 connections", flush=True)
        heads = media.stats()["head"]
        results["concurrency"] = compare(peer, workdir, media, 100, 200, args.rounds, args.duration)
        results["concurrency"]["media_server_heads"] = _media_checks(media, heads)
    if "callbacks" in chosen:
        print("== 3. callback ingest", flush=True)
        results["callbacks"] = [
            callbacks(workdir, media, s, args.duration) for s in ("sqlite", "postgres")
        ]
    if "coldstart" in chosen:
        print("== 4. cold start", flush=True)
        results["coldstart"] = cold_start(workdir, media)
    if "bulk" in chosen:
        print(f"== 6. bulk: {args.bulk_count} respond-async sends, outbox drain", flush=True)
        fake = _fake(peer)
        try:
            results["bulk"] = bulk(workdir, media, args.bulk_count, args.bulk_rate)
        finally:
            stop(fake)
    if "features" in chosen:
        print("== 5. per-feature cost (callgrind, ~11 min)", flush=True)
        fake = _fake(peer)
        try:
            results["features"] = features(f"http://127.0.0.1:{FAKE_PORT}/v1", media)
        finally:
            stop(fake)


def bulk(workdir: Path, media: MediaServer, count: int, rate: float) -> dict[str, Any]:
    """Scenario 6 (benchmarks/bulk.py): the service as in the other scenarios, SEND_RATE
    set to `rate`, RATE_LIMIT raised for the one batch sender."""

    def start(name: str) -> subprocess.Popen:
        env = {
            **SERVICE_ENV,
            **media.env,
            "DATABASE_URL": fresh_sqlite(workdir, name),
            "PLIVO_AUTH_ID": AUTH_ID,
            "PLIVO_AUTH_TOKEN": AUTH_TOKEN,
            "PLIVO_SENDER_NUMBER": "+14155550000",
            "PLIVO_API_URL": f"http://127.0.0.1:{FAKE_PORT}/v1",
            "SEND_RATE": f"{rate:g}/second",
            "RATE_LIMIT": "100000000/minute",
            "OUTBOX_MAX_PENDING_PER_KEY": str(max(100_000, 2 * count)),
        }
        proc = start_service(env, workdir / f"{name}.log")
        wait_http(f"http://127.0.0.1:{PORT}/health")
        return proc

    result = bulk_scenario.bulk(
        count=count,
        rate=rate,
        start=start,
        stop=stop,
        cpu_seconds=cpu_seconds,
        service_url=f"http://127.0.0.1:{PORT}",
        fake_url=f"http://127.0.0.1:{FAKE_PORT}",
        api_key=API_KEY,
        media_url=media.url,
    )
    return result


def _media_checks(media: MediaServer, before: int) -> int:
    """The media checks a side-by-side scenario made: our service's first send, then one
    per 5 minutes (the cache's lifetime of a good result)."""
    heads = media.stats()["head"] - before
    print(
        f"    media server: {heads} HEAD request(s) (our service checks the picture at its "
        "first send and then every 5 minutes; the others are cache hits)",
        flush=True,
    )
    if heads == 0:
        print("    WARNING: no media check reached the media server: is preflight on?")
    return heads


def write_report(results: dict[str, Any]) -> None:
    table = report(results)
    (RESULTS / "latest.md").write_text(table)
    if results.get("overhead") or results.get("concurrency"):
        chart(results, RESULTS / "latest.png")
    print()
    print(table)


if __name__ == "__main__":
    main()
