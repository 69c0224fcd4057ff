"""Prometheus metrics: one `Metrics` per app instance, each with its own registry.

Own registry, not prometheus-client's global one, so tests can build many apps in one
process. With several workers (`PROMETHEUS_MULTIPROC_DIR` set before the process starts),
prometheus-client writes every value to per-process files in that directory, and a scrape —
answered by whichever worker the socket hands it to — merges all of them
(`MultiProcessCollector`), so totals add up across workers.

Hot path: label children are bound once (at start, or on first use for label sets that
vary) and kept in plain dicts, so a request costs a dict lookup and a few locked adds.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.types import Scope

from app import errors
from app.paths import SEND_PATH
from app.status import STATUSES

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. The send deadline is PLIVO_TIMEOUT_SECONDS (10 s by default), hence 15 and 30.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)  # GroupCommitWriter's MAX_BATCH is 500
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Seconds a send waited for its pacing slot: 0 for a burst within the rate, up to
# PACING_MAX_WAIT_SECONDS (2 s by default) for a synchronous send.
PACING_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

# Label values that come from clients or from Plivo are mapped onto fixed sets, so no
# one can create series at will (each series costs memory here and in Prometheus).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CALLBACK_STATUSES = frozenset(STATUSES)
# Send codes that have no `code` in the request state yet (raised before the send router's
# own error handling: validation, auth, the body limit).
_EARLY_ERRORS = (errors.Unauthorized, errors.PayloadTooLarge, errors.ValidationFailed)
_CODE_BY_STATUS = {200: "ok", **{error.status: error.code for error in _EARLY_ERRORS}}
SEND_CODES = (
    "ok",
    "scheduled",
    "idempotent_replay",
    *(error.code for error in errors.SEND_ERRORS),
)
OUTBOX_OUTCOMES = (
    "queued",
    "unknown",
    "rejected",
    "canceled",
    "not_sent",
    "retry",
    "deferred",
    "lost",
)
PLIVO_OUTCOMES = ("accepted", "unreachable", "dropped", "timeout", "bad_response")
# The list's sources inside the service (`api:<key>` is labelled `api`); the operator's
# `optouts remove` runs in its own process and is in the log instead.
OPTOUT_SOURCES = ("inbound", "plivo_error_200", "api")
INBOUND_SIGNATURES = ("v3", "v2", "unsigned", "invalid", "missing", "replayed")
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}
PREFLIGHT_REASONS = (
    "ok",
    "unreachable",
    "type_not_supported",
    "no_length",
    "too_large",
    "total_too_large",
    "too_many_redirects",
    "address_not_allowed",
)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    def __init__(self, multiproc_dir: str | None = None) -> None:
        self.multiproc_dir = multiproc_dir
        self.registry = CollectorRegistry()
        if multiproc_dir is None:
            # Process and GC metrics of this one process. In multiprocess mode they are left
            # out: MultiProcessCollector cannot merge them, and a scrape would show whichever
            # worker answered it.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry

        self.http_requests = Counter(
            "mms_http_requests",
            "HTTP requests by method, route template and status",
            ("method", "route", "status"),
            registry=r,
        )
        self.http_duration = Histogram(
            "mms_http_request_duration_seconds",
            "HTTP request duration by method and route template",
            ("method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sends = Counter(
            "mms_sends", "POST /api/mms/send requests by outcome code", ("code",), registry=r
        )
        self.plivo_requests = Counter(
            "mms_plivo_requests", "Attempts toward Plivo by outcome", ("outcome",), registry=r
        )
        self.plivo_duration = Histogram(
            "mms_plivo_request_duration_seconds",
            "Duration of attempts toward Plivo by outcome",
            ("outcome",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Multiprocess modes (ignored with one process) say how the workers' values combine.
        # `live*` modes drop a worker's value once it is marked dead (app/__main__.py and
        # the lifespan do that), so a crashed worker's last value does not linger.
        # In flight: each worker counts its own attempts, the total is their sum.
        self.plivo_in_flight = Gauge(
            "mms_plivo_in_flight",
            "Attempts toward Plivo in flight",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rate_limit_rejections = Counter(
            "mms_rate_limit_rejections",
            "Sends refused by a limit: ip, destination or quota",
            ("scope",),
            registry=r,
        )
        self.storage_fallbacks = Counter(
            "mms_rate_limit_storage_fallbacks",
            "Limit checks that found Redis failing and counted in process memory",
            registry=r,
        )
        # Degraded: 1 when any live worker counts alone (max, not sum: it is a flag).
        self.storage_degraded = Gauge(
            "mms_rate_limit_storage_degraded",
            "1 while the limits count in process memory because Redis is failing",
            registry=r,
            multiprocess_mode="livemax",
        )
        # Store faults: a flag per worker (max) and the records waiting in memory (sum).
        self.store_write_failing = Gauge(
            "mms_store_write_failing",
            "1 while store writes fail: sends are refused and /ready is 503",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.store_records_pending = Gauge(
            "mms_store_records_pending",
            "Records of sends Plivo accepted, kept in memory until the store takes them",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.callbacks = Counter(
            "mms_callbacks",
            "Plivo status callbacks by status and signature (v3, v2, invalid, missing, replayed)",
            ("status", "signature"),
            registry=r,
        )
        # Backlog: every worker counts the same shared table, so summing would multiply it
        # by the number of workers; the largest recent count is the backlog.
        self.reconcile_backlog = Gauge(
            "mms_reconcile_backlog",
            "Messages due for a reconciliation lookup",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.outbox_due = Gauge(
            "mms_outbox_due",
            "Scheduled messages whose sendAt has passed (the outbox's backlog)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.outbox_future = Gauge(
            "mms_outbox_future",
            "Scheduled messages whose sendAt is still ahead",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.outbox_oldest_due_age = Gauge(
            "mms_outbox_oldest_due_age_seconds",
            "How long the oldest due scheduled message has waited past its sendAt (0: none)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.outbox_outcomes = Counter(
            "mms_outbox_outcomes",
            "What the outbox did with a claimed message (queued, unknown, rejected, "
            "canceled, not_sent, retry, deferred, lost)",
            ("outcome",),
            registry=r,
        )
        self.sends_by_origin = Counter(
            "mms_sends_by_origin",
            "Sends whose outcome was recorded, by origin (sync, outbox) and status",
            ("origin", "status"),
            registry=r,
        )
        self.reconcile_lookups = Counter(
            "mms_reconcile_lookups",
            "Reconciliation lookups at Plivo by result (found, not_found, error)",
            ("result",),
            registry=r,
        )
        # Webhook deliveries. The endpoint label is a WEBHOOKS name: the operator's fixed set.
        self.webhook_attempts = Counter(
            "mms_webhook_deliveries",
            "Webhook delivery attempts by endpoint name and outcome (delivered: a 2xx; "
            "retry: it failed and is due again; failed: its last attempt failed)",
            ("endpoint", "outcome"),
            registry=r,
        )
        self.webhook_duration = Histogram(
            "mms_webhook_attempt_duration_seconds",
            "Webhook attempt latency by endpoint name (10 s at most per attempt)",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Like the reconciliation backlog: every worker counts the same shared table.
        self.webhook_pending = Gauge(
            "mms_webhook_pending",
            "Webhook deliveries not yet delivered or failed",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.webhook_oldest_pending = Gauge(
            "mms_webhook_oldest_pending_age_seconds",
            "Age of the oldest pending webhook delivery (0 when none)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.store_batch_size = Histogram(
            "mms_store_batch_size",
            "Writes committed together by the group-commit writer",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.store_commit_seconds = Histogram(
            "mms_store_commit_seconds",
            "Duration of one group commit",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        # The breaker is per process: show the worst live worker's state (2 = open), so
        # `mms_circuit_state == 2` fires when any worker refuses sends. `liveall` would add
        # a `pid` label whose series churn with every restart; the per-worker detail is in
        # the `circuit_state` log events.
        self.circuit_state = Gauge(
            "mms_circuit_state",
            "Circuit breaker toward Plivo: 0 closed, 1 half_open, 2 open",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.circuit_opens = Counter(
            "mms_circuit_opens", "Times the circuit breaker opened", registry=r
        )
        self.pacing_wait = Histogram(
            "mms_pacing_wait_seconds",
            "Seconds each send waited for its pacing slot (SEND_RATE)",
            buckets=PACING_BUCKETS,
            registry=r,
        )
        self.optout_changes = Counter(
            "mms_optout_changes",
            "Changes to the opt-out list by action (optout, optin) and source "
            "(inbound, plivo_error_200, api)",
            ("action", "source"),
            registry=r,
        )
        self.inbound_messages = Counter(
            "mms_inbound_messages",
            "Inbound messages by signature (v3, v2, unsigned in sandbox mode, invalid, "
            "missing, replayed)",
            ("signature",),
            registry=r,
        )
        self.pacing_refusals = Counter(
            "mms_pacing_refusals",
            "Synchronous sends refused with send_rate_exceeded (no slot within the wait)",
            registry=r,
        )

        self.preflight_results = Counter(
            "mms_media_preflight_results",
            "Media URLs checked before a send, by result (ok or the refusal's reason)",
            ("reason",),
            registry=r,
        )
        self.preflight_duration = Histogram(
            "mms_media_preflight_duration_seconds",
            "Duration of the media preflight of one send (every URL at once)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preflight_cache = Counter(
            "mms_media_preflight_cache",
            "Media preflight cache lookups by result (hit, miss)",
            ("result",),
            registry=r,
        )

        # Pre-bound children; every label set below exists from the start (at 0), so
        # rate() and absent-series checks work before the first event.
        self._sends = {code: self.sends.labels(code) for code in SEND_CODES}
        self._plivo: dict[str, tuple[Any, Any]] = {}
        for outcome in PLIVO_OUTCOMES:
            self._plivo_children(outcome)
        self._rejections = {
            scope: self.rate_limit_rejections.labels(scope)
            for scope in ("ip", "destination", "quota")
        }
        self._lookups = {
            result: self.reconcile_lookups.labels(result)
            for result in ("found", "not_found", "error")
        }
        self._preflight = {
            reason: self.preflight_results.labels(reason) for reason in PREFLIGHT_REASONS
        }
        self._preflight_cache = {
            hit: self.preflight_cache.labels("hit" if hit else "miss") for hit in (True, False)
        }
        self._optouts = {
            (action, source): self.optout_changes.labels(action, source)
            for action in ("optout", "optin")
            for source in OPTOUT_SOURCES
        }
        self._inbound = {s: self.inbound_messages.labels(s) for s in INBOUND_SIGNATURES}
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._callbacks: dict[tuple[str, str], Any] = {}
        self._sends_by_origin: dict[tuple[str, str], Any] = {}
        self._webhook_attempts: dict[tuple[str, str], Any] = {}
        self._webhook_durations: dict[str, Any] = {}
        self.circuit_opens.inc(0)
        self.pacing_refusals.inc(0)
        for outcome in OUTBOX_OUTCOMES:
            self.outbox_outcomes.labels(outcome).inc(0)
        self.storage_fallbacks.inc(0)
        self.circuit_state.set(0)
        self.storage_degraded.set(0)

    # Requests (the middleware's observer) -----------------------------------------------
    def observe_request(self, scope: Scope, route: str, status: int, seconds: float) -> None:
        method = scope["method"]
        if method not in _METHODS:  # before the cache: its keys must be bounded too
            method = "other"
        key = (method, route, status)
        children = self._http.get(key)
        if children is None:
            children = self._http_children(key)
        children[0].inc()
        children[1].observe(seconds)
        # By path, not route: a body over the limit is refused before routing (413), and
        # the per-IP limiter refuses before routing too; both are still sends refused.
        if method == "POST" and scope["path"] == SEND_PATH:
            code = scope["state"].get("code") or _CODE_BY_STATUS.get(status)
            if code is None:
                code = "internal_error" if status >= 500 else f"http_{status}"
            child = self._sends.get(code)
            if child is None:
                child = self._sends[code] = self.sends.labels(code)
            child.inc()

    def _http_children(self, key: tuple[str, str, int]) -> tuple[Any, Any]:
        method, route, status = key
        children = (
            self.http_requests.labels(method, route, str(status)),
            self.http_duration.labels(method, route),
        )
        self._http[key] = children
        return children

    # Plivo (Sender hooks) -------------------------------------------------------------
    def plivo_attempt(self, outcome: str, seconds: float) -> None:
        children = self._plivo.get(outcome)
        if children is None:
            children = self._plivo_children(outcome)
        children[0].inc()
        children[1].observe(seconds)

    def _plivo_children(self, outcome: str) -> tuple[Any, Any]:
        children = (self.plivo_requests.labels(outcome), self.plivo_duration.labels(outcome))
        self._plivo[outcome] = children
        return children

    def set_plivo_in_flight(self, value: int) -> None:
        self.plivo_in_flight.set(value)

    def circuit_changed(self, state: str) -> None:
        self.circuit_state.set(CIRCUIT_VALUES[state])
        if state == "open":
            self.circuit_opens.inc()

    # Pacing (Pacer hooks) ---------------------------------------------------------------
    def pacing_waited(self, seconds: float) -> None:
        self.pacing_wait.observe(seconds)

    def pacing_refused(self) -> None:
        self.pacing_refusals.inc()

    # Media preflight (Preflight hooks) -------------------------------------------------
    def preflight_result(self, reason: str) -> None:
        self._preflight[reason].inc()

    def preflight_cache_lookup(self, hit: bool) -> None:
        self._preflight_cache[hit].inc()

    def preflight_took(self, seconds: float) -> None:
        self.preflight_duration.observe(seconds)

    # Limits --------------------------------------------------------------------------
    def rate_limit_rejected(self, scope: str) -> None:
        self._rejections[scope].inc()

    def storage_fallback(self) -> None:
        self.storage_fallbacks.inc()
        self.storage_degraded.set(1)

    def storage_recovered(self) -> None:
        self.storage_degraded.set(0)

    # Callbacks, reconciliation, store ---------------------------------------------------
    def callback(self, status: str | None, signature: str) -> None:
        if status is None:
            label = "none"
        else:
            label = status.strip().lower()
            if label not in _CALLBACK_STATUSES:
                label = "other"
        key = (label, signature)
        child = self._callbacks.get(key)
        if child is None:
            child = self._callbacks[key] = self.callbacks.labels(label, signature)
        child.inc()

    def optout_changed(self, action: str, source: str) -> None:
        label = source.split(":", 1)[0]
        child = self._optouts.get((action, label))
        if child is not None:  # a fixed set: nothing else becomes a series
            child.inc()

    def inbound(self, signature: str) -> None:
        child = self._inbound.get(signature)
        if child is not None:
            child.inc()

    def reconcile_lookup(self, result: str) -> None:
        self._lookups[result].inc()

    def set_reconcile_backlog(self, value: int) -> None:
        self.reconcile_backlog.set(value)

    def webhook_endpoints(self, names: list[str]) -> None:
        """Every configured endpoint's series exist from the start (at 0)."""
        for name in names:
            for outcome in ("delivered", "retry", "failed"):
                self.webhook_attempts.labels(name, outcome).inc(0)
            self.webhook_duration.labels(name)
        self.webhook_pending.set(0)
        self.webhook_oldest_pending.set(0)

    def webhook_attempt(self, endpoint: str, outcome: str, seconds: float | None) -> None:
        # Children bound once per label set (endpoints are configured, outcomes fixed): one
        # attempt per event makes `.labels()` a per-send cost otherwise.
        key = (endpoint, outcome)
        attempts = self._webhook_attempts.get(key)
        if attempts is None:
            attempts = self._webhook_attempts[key] = self.webhook_attempts.labels(*key)
        attempts.inc()
        if seconds is not None:
            duration = self._webhook_durations.get(endpoint)
            if duration is None:
                duration = self._webhook_durations[endpoint] = self.webhook_duration.labels(
                    endpoint
                )
            duration.observe(seconds)

    def set_webhook_backlog(self, pending: int, oldest_age_seconds: float) -> None:
        self.webhook_pending.set(pending)
        self.webhook_oldest_pending.set(oldest_age_seconds)

    def set_outbox_backlog(self, due: int, future: int, oldest_age_seconds: float) -> None:
        self.outbox_due.set(due)
        self.outbox_future.set(future)
        self.outbox_oldest_due_age.set(oldest_age_seconds)

    def outbox_outcome(self, outcome: str) -> None:
        if outcome in OUTBOX_OUTCOMES:
            self.outbox_outcomes.labels(outcome).inc()

    def send_recorded(self, origin: str, status: str) -> None:
        if origin in ("sync", "outbox") and status in _CALLBACK_STATUSES:
            key = (origin, status)
            child = self._sends_by_origin.get(key)
            if child is None:
                child = self._sends_by_origin[key] = self.sends_by_origin.labels(*key)
            child.inc()

    def store_batch(self, size: int, seconds: float) -> None:
        self.store_batch_size.observe(size)
        self.store_commit_seconds.observe(seconds)

    def store_health(self, writable: bool, pending: int) -> None:
        self.store_write_failing.set(0 if writable else 1)
        self.store_records_pending.set(pending)

    # Exposition ------------------------------------------------------------------------
    def render(self) -> bytes:
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        # A fresh registry per scrape, as prometheus-client's multiprocess docs say: the
        # collector reads every worker's files each time.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def process_exiting(self) -> None:
        """Drop this worker's `live*` gauge values (its in-flight count, breaker state...)."""
        if self.multiproc_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiproc_dir)  # type: ignore[no-untyped-call]
