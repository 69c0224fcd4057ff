"""GET /metrics: what moves which series, METRICS_TOKEN, and several workers adding up."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import fakeplivo as fp
from tests.helpers import API_KEYS, KEY_A, VALID
from tests.loopback import http_get, http_post
from tests.server import Server, base_env, free_port
from tests.signing import FORM, form, v2_headers, v3_headers

SEND = "/api/mms/send"
PUBLIC = "https://mms.example.com"
CALLBACK_URL = f"{PUBLIC}/api/mms/status"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(client, headers=None) -> Samples:
    response = await client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def sends(samples: Samples, code: str) -> float:
    return value(samples, "mms_sends_total", code=code)


def plivo(samples: Samples, outcome: str) -> float:
    return value(samples, "mms_plivo_requests_total", outcome=outcome)


async def eventually(probe, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await probe():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_send_ok_and_upstream_error_are_counted(settings_factory, client_for, fake_plivo):
    """A 200 and a Plivo 500 move sends, Plivo attempts, HTTP requests and latency by one each."""
    async with client_for(settings_factory()) as client:
        before = await scrape(client)
        assert (await client.post(SEND, json=VALID)).status_code == 200
        fake_plivo.script(fp.status(500))
        assert (await client.post(SEND, json=VALID)).json()["code"] == "upstream_error"
        after = await scrape(client)
    assert sends(after, "ok") - sends(before, "ok") == 1
    assert sends(after, "upstream_error") - sends(before, "upstream_error") == 1
    assert plivo(after, "accepted") == 1 and plivo(after, "http_500") == 1
    duration = "mms_plivo_request_duration_seconds_count"
    assert value(after, duration, outcome="accepted") == 1
    assert value(after, duration, outcome="http_500") == 1
    http = "mms_http_requests_total"
    assert value(after, http, method="POST", route=SEND, status="200") == 1
    assert value(after, http, method="POST", route=SEND, status="502") == 1
    latency = "mms_http_request_duration_seconds_count"
    assert value(after, latency, method="POST", route=SEND) == 2
    # The first scrape itself was recorded under its route template.
    assert value(after, http, method="GET", route="/metrics", status="200") == 1
    assert value(after, "mms_plivo_in_flight") == 0


async def test_every_retried_attempt_is_counted(settings_factory, client_for, fake_plivo):
    """Plivo 503 three times: three attempts `http_503`, one send `upstream_unavailable`."""
    fake_plivo.script(*(fp.status(503, retry_after="0") for _ in range(3)))
    async with client_for(settings_factory()) as client:
        response = await client.post(SEND, json=VALID)
        after = await scrape(client)
    assert response.json()["code"] == "upstream_unavailable"
    assert plivo(after, "http_503") == 3
    assert sends(after, "upstream_unavailable") == 1


async def test_codes_without_state_are_derived_from_the_status(
    settings_factory, client_for, fake_plivo
):
    """401, 422 and 413 (before and after routing) count as sends with their codes."""
    async with client_for(settings_factory(api_keys=API_KEYS)) as client:
        assert (await client.post(SEND, json=VALID)).status_code == 401
        assert (await client.post(SEND, json={}, headers={"X-API-Key": KEY_A})).status_code == 422
        big = b"x" * (65 * 1024)
        headers = {"X-API-Key": KEY_A, "Content-Type": "application/json"}
        assert (await client.post(SEND, content=big, headers=headers)).status_code == 413

        async def chunked():  # no Content-Length: refused mid-body, after routing
            yield big

        assert (await client.post(SEND, content=chunked(), headers=headers)).status_code == 413
        await client.get(SEND)  # a GET (the lookup route): not a send
        after = await scrape(client)
    assert sends(after, "unauthorized") == 1
    assert sends(after, "validation_error") == 1
    assert sends(after, "payload_too_large") == 2
    assert sum(v for (name, _), v in after.items() if name == "mms_sends_total") == 4
    assert fake_plivo.sends() == []


async def test_per_ip_limit_rejection(settings_factory, client_for, fake_plivo):
    """A per-IP 429 is a send `rate_limited` and a rejection of scope `ip`."""
    async with client_for(settings_factory(rate_limit="1/minute")) as client:
        assert (await client.post(SEND, json=VALID)).status_code == 200
        assert (await client.post(SEND, json=VALID)).status_code == 429
        for _ in range(3):  # /metrics itself is never limited
            after = await scrape(client)
    assert sends(after, "rate_limited") == 1 and sends(after, "ok") == 1
    rejections = "mms_rate_limit_rejections_total"
    assert value(after, rejections, scope="ip") == 1
    assert value(after, rejections, scope="destination") == 0
    assert value(after, rejections, scope="quota") == 0


async def test_destination_limit_rejection(settings_factory, client_for, fake_plivo):
    """A per-destination 429 is counted under scope `destination`."""
    async with client_for(settings_factory(rate_limit_per_destination="1/hour")) as client:
        assert (await client.post(SEND, json=VALID)).status_code == 200
        assert (await client.post(SEND, json=VALID)).status_code == 429
        after = await scrape(client)
    assert sends(after, "destination_rate_limited") == 1
    assert value(after, "mms_rate_limit_rejections_total", scope="destination") == 1
    assert value(after, "mms_rate_limit_rejections_total", scope="ip") == 0


async def test_quota_rejection(settings_factory, client_for, fake_plivo):
    """A daily-quota 429 is counted under scope `quota`."""
    async with client_for(settings_factory(daily_quota_per_key=1)) as client:
        assert (await client.post(SEND, json=VALID)).status_code == 200
        other = {**VALID, "to": "+14155550101"}
        assert (await client.post(SEND, json=other)).json()["code"] == "quota_exceeded"
        after = await scrape(client)
    assert sends(after, "quota_exceeded") == 1
    assert value(after, "mms_rate_limit_rejections_total", scope="quota") == 1


async def test_redis_fallback_is_counted_and_flagged(settings_factory, client_for, fake_plivo):
    """Redis unreachable: a fallback is counted and the degraded gauge is 1."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with client_for(settings_factory(rate_limit_storage_url=url)) as client:
        before = await scrape(client)
        assert (await client.post(SEND, json=VALID)).status_code == 200
        after = await scrape(client)
    assert value(before, "mms_rate_limit_storage_degraded") == 0
    assert value(after, "mms_rate_limit_storage_degraded") == 1
    assert value(after, "mms_rate_limit_storage_fallbacks_total") >= 1


async def test_callbacks_by_status_and_signature(settings_factory, client_for, fake_plivo):
    """Valid V3 and V2, a wrong and a missing signature, a replayed nonce: one series each."""
    async with client_for(settings_factory(public_base_url=PUBLIC)) as client:
        message_uuid = (await client.post(SEND, json=VALID)).json()["messageUuid"][0]

        async def post(params, headers):
            response = await client.post(
                "/api/mms/status", content=form(params), headers={**FORM, **headers}
            )
            return response.status_code

        sent = {"MessageUUID": message_uuid, "Status": "sent"}
        delivered = {"MessageUUID": message_uuid, "Status": "delivered"}
        signed = v3_headers(CALLBACK_URL, delivered)
        assert await post(sent, v2_headers(CALLBACK_URL)) == 200
        assert await post(delivered, signed) == 200
        assert await post(delivered, signed) == 200  # the same nonce again: a replay
        assert await post(delivered, v3_headers(CALLBACK_URL, delivered, token="wrong")) == 403
        assert await post({**delivered, "Status": "made-up"}, {}) == 403
        assert await post({"Status": "sent"}, v3_headers(CALLBACK_URL, {"Status": "sent"})) == 422
        after = await scrape(client)
    callbacks = "mms_callbacks_total"
    assert value(after, callbacks, status="sent", signature="v2") == 1
    assert value(after, callbacks, status="delivered", signature="v3") == 1
    assert value(after, callbacks, status="delivered", signature="replayed") == 1
    assert value(after, callbacks, status="delivered", signature="invalid") == 1
    # An unsigned body is never read: its status is not known (and cannot inflate labels).
    assert value(after, callbacks, status="none", signature="missing") == 1
    assert value(after, callbacks, status="none", signature="v3") == 1
    assert sum(v for (name, _), v in after.items() if name == callbacks) == 6


async def test_breaker_opening(settings_factory, client_for, fake_plivo):
    """Threshold 2: two Plivo 500s open the breaker (state 2, one opening); then 503 at once."""
    fake_plivo.set_default(fp.status(500))
    settings = settings_factory(circuit_failure_threshold=2, circuit_reset_seconds=60)
    async with client_for(settings) as client:
        before = await scrape(client)
        for _ in range(2):
            assert (await client.post(SEND, json=VALID)).json()["code"] == "upstream_error"
        refused = await client.post(SEND, json=VALID)
        after = await scrape(client)
    assert refused.json()["code"] == "upstream_unavailable"
    assert value(before, "mms_circuit_state") == 0
    assert value(after, "mms_circuit_state") == 2
    assert value(after, "mms_circuit_opens_total") == 1
    assert plivo(after, "http_500") == 2  # the refused send never reached Plivo
    assert sends(after, "upstream_unavailable") == 1


async def test_in_flight_gauge(settings_factory, client_for, fake_plivo):
    """While Plivo takes its time, the attempt is in flight; afterwards it is not."""
    fake_plivo.script(fp.ok(delay=1.0))
    async with client_for(settings_factory()) as client:
        pending = asyncio.create_task(client.post(SEND, json=VALID))

        async def in_flight():
            return value(await scrape(client), "mms_plivo_in_flight") == 1

        await eventually(in_flight)
        assert (await pending).status_code == 200
        assert value(await scrape(client), "mms_plivo_in_flight") == 0


async def test_group_commit_batches_are_observed(settings_factory, client_for, fake_plivo):
    """50 concurrent sends: batch sizes add up to at least 50, in fewer commits than writes."""
    settings = settings_factory(rate_limit_per_destination="1000/hour")
    async with client_for(settings) as client:
        before = await scrape(client)
        responses = await asyncio.gather(*(client.post(SEND, json=VALID) for _ in range(50)))
        after = await scrape(client)
    assert all(r.status_code == 200 for r in responses)

    def delta(name: str) -> float:
        return value(after, name) - value(before, name)

    assert delta("mms_store_batch_size_sum") >= 50
    assert 1 <= delta("mms_store_batch_size_count") < 25
    assert delta("mms_store_commit_seconds_count") == delta("mms_store_batch_size_count")
    assert value(after, "mms_store_batch_size_bucket", le="500.0") == value(
        after, "mms_store_batch_size_count"
    )


async def test_reconciliation_lookups_and_backlog(
    settings_factory, client_for, fake_plivo, fast_reconciler
):
    """Due messages show in the backlog gauge; a lookup Plivo answers is `found`."""
    settings = settings_factory(reconcile_after_seconds=0, reconcile_rate=1)
    async with client_for(settings) as client:
        for _ in range(2):
            assert (await client.post(SEND, json=VALID)).status_code == 200

        async def backlog_and_found():
            samples = await scrape(client)
            found = value(samples, "mms_reconcile_lookups_total", result="found")
            return value(samples, "mms_reconcile_backlog") >= 1 and found >= 1

        await eventually(backlog_and_found)


async def test_metrics_token(settings_factory, client_for, fake_plivo):
    """METRICS_TOKEN set: 401 problem without or with a wrong token, 200 with it."""
    async with client_for(settings_factory(metrics_token="scrape-secret-0123")) as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        basic = await client.get("/metrics", headers={"Authorization": "Basic scrape-secret-0123"})
        samples = await scrape(client, {"Authorization": "Bearer scrape-secret-0123"})
    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["code"] == "unauthorized"
    assert value(samples, "mms_http_requests_total", method="GET", route="/metrics", status="401")


async def test_no_token_needed_by_default_and_no_api_key(settings_factory, client_for, fake_plivo):
    """Without METRICS_TOKEN, /metrics needs nothing, not even with API_KEYS set."""
    async with client_for(settings_factory(api_keys=API_KEYS)) as client:
        samples = await scrape(client)
    assert ("mms_circuit_state", frozenset()) in samples
    assert ("process_resident_memory_bytes", frozenset()) in samples  # one process: kept


# Several workers -------------------------------------------------------------------------
def _stale_counter_file(directory) -> None:
    """What a previous run leaves behind: 1000 ok sends that must not be counted again."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    stale = MmapedDict(str(directory / "counter_999999.db"))
    key = mmap_key("mms_sends", "mms_sends_total", ["code"], ["ok"], "stale")
    stale.write_value(key, 1000.0, 0.0)
    stale.close()


def _request_lines(server: Server, route: str) -> list[dict]:
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    return [r for r in lines if r.get("event") == "request" and r.get("route") == route]


@pytest.mark.e2e
def test_two_workers_add_up_and_start_from_an_empty_directory(fake_plivo, tmp_path, redis_url):
    """WEB_CONCURRENCY=2: every scrape, whichever worker answers, shows the sends of both.
    Their limits are kept in Redis, so the start does not warn that they are per worker."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = tmp_path / "prometheus"
    directory.mkdir()
    _stale_counter_file(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    assert registry.get_sample_value("mms_sends_total", {"code": "ok"}) == 1000  # it would count

    env = base_env(
        fake_plivo.url,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/mms.db",
        WEB_CONCURRENCY=2,
        PROMETHEUS_MULTIPROC_DIR=directory,
        RATE_LIMIT_STORAGE_URL=redis_url,
        RATE_LIMIT="10000/minute",
        RATE_LIMIT_PER_DESTINATION="10000/hour",
    )
    server = Server(env, tmp_path / "server.log")
    try:
        server.wait_healthy()
        assert not (directory / "counter_999999.db").exists()
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            # Each request on a new connection; the kernel hands them to either worker.
            while len({r["pid"] for r in _request_lines(server, SEND)}) < 2 and sent < 400:
                statuses = list(
                    pool.map(
                        lambda _: http_post(f"{server.url}{SEND}", json=VALID, timeout=10),
                        range(8),
                    )
                )
                assert all(r.status_code == 200 for r in statuses)
                sent += len(statuses)
        pids = {r["pid"] for r in _request_lines(server, SEND)}
        assert len(pids) == 2, "the sends never reached both workers"

        scrapes = 0
        while scrapes < 6 or (
            len({r["pid"] for r in _request_lines(server, "/metrics")}) < 2 and scrapes < 60
        ):
            response = http_get(f"{server.url}/metrics", timeout=10)
            assert response.status_code == 200
            samples = parse(response.text)
            assert sends(samples, "ok") == sent, f"scrape {scrapes}"
            http = "mms_http_requests_total"
            assert value(samples, http, method="POST", route=SEND, status="200") == sent
            assert plivo(samples, "accepted") == sent
            assert value(samples, "mms_plivo_in_flight") == 0
            assert ("process_resident_memory_bytes", frozenset()) not in samples
            scrapes += 1
        assert {r["pid"] for r in _request_lines(server, "/metrics")} == pids
        assert server.terminate() == 0, server.logs()
    finally:
        server.kill()
    assert "Traceback" not in server.logs()
    assert "RATE LIMITS ARE PER WORKER" not in server.logs()


@pytest.mark.e2e
def test_two_workers_without_a_directory_get_a_temporary_one(fake_plivo, tmp_path):
    """No PROMETHEUS_MULTIPROC_DIR: `python -m app` makes one, shares it, removes it at exit.
    Two workers start, serve and exit 0; with limits in memory the start warns loudly that
    each worker counts alone."""
    env = base_env(
        fake_plivo.url, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/mms.db", WEB_CONCURRENCY=2
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = Server(env, tmp_path / "server.log")
    try:
        server.wait_healthy()
        for _ in range(4):
            assert http_post(f"{server.url}{SEND}", json=VALID, timeout=10).status_code == 200
        assert len(fake_plivo.sends()) == 4
        for _ in range(4):
            samples = parse(http_get(f"{server.url}/metrics", timeout=10).text)
            assert sends(samples, "ok") == 4
        assert server.terminate() == 0, server.logs()
    finally:
        server.kill()
    assert "RATE LIMITS ARE PER WORKER" in server.logs()
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    (announced,) = [r for r in lines if r.get("event") == "metrics_multiprocess_dir"]
    assert announced["created"] is True
    assert not (tmp_path / announced["path"]).exists()  # an absolute path: removed


async def test_label_values_stay_bounded(settings_factory, client_for, fake_plivo):
    """Unknown methods are `other`, unknown paths `unmatched`: clients cannot mint series."""
    async with client_for(settings_factory()) as client:
        for i in range(3):
            await client.request("BREW", f"/coffee/{i}")
            await client.get(f"/nowhere/{i}")
        samples = await scrape(client)
    http = "mms_http_requests_total"
    assert value(samples, http, method="other", route="unmatched", status="404") == 3
    assert value(samples, http, method="GET", route="unmatched", status="404") == 3
    routes = {dict(labels).get("route") for name, labels in samples if name == http}
    assert routes == {"unmatched"}
