"""Prometheus metrics for ``GET /metrics``: what the engine, the Slack client and the database report.

Each :class:`Metrics` has its own ``CollectorRegistry`` (nothing global), so two bots in one test process
never share counters. It counts from the engine's observation events (``workflows.observe``; step timeouts,
recoveries and event-loop stalls included), from the database's commit and fault hooks (transient errors it
retried), and from the Slack client (``slack_call`` after each Web API call, and
:class:`CountingRateLimitRetryHandler` for the 429s slack_sdk retries by itself). Gauges that describe
the database (suspended runs) are read from it at scrape time, so every replica reports the same truth.

Labels are workflow ids, step ids, model names and Slack method names: all bounded by the code, never by
user input.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler

from workflows.observe import add_observer, remove_observer

if TYPE_CHECKING:
    from slack_sdk.http_retry.request import HttpRequest
    from slack_sdk.http_retry.response import HttpResponse
    from slack_sdk.http_retry.state import RetryState

    from workflows import Engine

log = logging.getLogger("threadflow.metrics")

#: How long a scrape waits for the gauges read from the database. During an outage a read retries for 10 s,
#: as long as Prometheus' default scrape timeout: the outage counters would never be scraped while it lasts.
GAUGE_READ_TIMEOUT = 2.0

CONTENT_TYPE = CONTENT_TYPE_LATEST

_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_COMMIT_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_STALL_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The metrics of one process; ``await render()`` is the body of ``GET /metrics``."""

    def __init__(self, engine: Engine | None = None, *, registry: CollectorRegistry | None = None) -> None:
        self.engine = engine
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs_started = Counter("threadflow_runs_started", "Runs started.", ["workflow"], registry=r)
        self.runs_finished = Counter(
            "threadflow_runs_finished", "Runs finished, by final status.", ["workflow", "status"], registry=r)
        self.step_duration = Histogram(
            "threadflow_step_duration_seconds", "Time a step took, retries included, by outcome.",
            ["workflow", "step", "status"], buckets=_STEP_BUCKETS, registry=r)
        self.step_retries = Counter("threadflow_step_retries", "Step attempts that failed and were retried.",
                                    ["workflow", "step"], registry=r)
        self.runs_suspended = Gauge("threadflow_runs_suspended", "Runs suspended, waiting for a person.", registry=r)
        self.step_threads_abandoned = Gauge(
            "threadflow_step_threads_abandoned", "Threads of plain def steps that timed out (or whose run stopped) "
            "and still run in this process; they cannot be stopped and end with the process.", registry=r)
        self.approvals = Counter("threadflow_approvals", "Suspensions resumed, by decision.",
                                 ["workflow", "step", "decision"], registry=r)
        self.slack_calls = Counter("threadflow_slack_api_calls", "Slack Web API calls, by method and outcome.",
                                   ["method", "outcome"], registry=r)
        self.slack_ratelimited = Counter(
            "threadflow_slack_ratelimited", "Slack Web API responses with HTTP 429 (retried ones included).",
            ["method"], registry=r)
        self.slack_deliveries = Counter(
            "threadflow_slack_deliveries", "Outbox deliveries to Slack, by message kind and outcome "
            "(sent, streamed, found, retried, ratelimited, shortened, reposted, failed).", ["kind", "outcome"], registry=r)
        self.slack_delivery_failures = Counter(
            "threadflow_slack_delivery_failures", "Messages Slack refused for good, by Slack error code.",
            ["error"], registry=r)
        self.slack_outbox = Gauge("threadflow_slack_outbox", "Outbox messages by state (pending: not taken by "
                                  "Slack yet).", ["state"], registry=r)
        self.slack_streams = Counter(
            "threadflow_slack_streams", "Streamed answers' Slack calls, by step (start, append, finish) and "
            "outcome (ok, retried, refused; a finish is streamed, posted, updated or failed).", ["step", "outcome"],
            registry=r)
        self.agent_feedback = Counter(
            "threadflow_agent_feedback", "Feedback people gave on agent answers (the feedback buttons), by rating.",
            ["rating"], registry=r)
        self.llm_calls = Counter("threadflow_llm_calls", "Model calls, by outcome.", ["model", "outcome"], registry=r)
        self.llm_tokens = Counter("threadflow_llm_tokens", "Tokens used, by kind (prompt or completion).",
                                  ["model", "kind"], registry=r)
        self.llm_errors = Counter("threadflow_llm_errors", "Model calls that failed, by error type.",
                                  ["model", "error"], registry=r)
        self.llm_output_retries = Counter(
            "threadflow_llm_output_retries", "Structured answers that did not fit and were asked for again.",
            ["model", "agent"], registry=r)
        self.llm_fallbacks = Counter(
            "threadflow_llm_fallbacks", "Capabilities a model server refused, so calls go without them from then on.",
            ["model", "capability"], registry=r)
        self.llm_duration = Histogram("threadflow_llm_call_duration_seconds", "Time a model call took.", ["model"],
                                      buckets=_STEP_BUCKETS, registry=r)
        self.commit_size = Histogram("threadflow_commit_batch_size", "Writes committed per transaction.",
                                     buckets=_COMMIT_SIZE_BUCKETS, registry=r)
        self.commit_seconds = Histogram("threadflow_commit_duration_seconds", "Time a group commit took.",
                                        buckets=_COMMIT_SECONDS_BUCKETS, registry=r)
        self.step_timeouts = Counter("threadflow_step_timeouts", "Step attempts that ran past their timeout.",
                                     ["workflow", "step"], registry=r)
        self.runs_recovered = Counter(
            "threadflow_runs_recovered", "Runs taken over here from a process that died holding them.",
            ["workflow"], registry=r)
        self.loop_stalls = Counter(
            "threadflow_loop_stalls", "Times the event loop did not answer for over a second, by the step blocking it "
            "(empty: no step).", ["workflow", "step"], registry=r)
        self.loop_stall_seconds = Histogram("threadflow_loop_stall_seconds", "How long each event loop stall lasted.",
                                            buckets=_STALL_BUCKETS, registry=r)
        self.db_errors = Counter(
            "threadflow_db_transient_errors", "Database reads and writes that failed with a transient error and were "
            "retried, by kind (connection, locked, disk_full, io_error, resources, conflict).", ["kind"], registry=r)
        self.db_outages = Counter("threadflow_db_outages", "Episodes of transient database errors (each logged once).",
                                  ["kind"], registry=r)
        self._closed = False
        add_observer(self.observe)
        if engine is not None:
            engine.db.on_commit(self._on_commit)
            engine.db.on_fault(self._on_db_fault)

    def close(self) -> None:
        """Stop counting (the database has no way to drop a hook, so that one just stops recording)."""
        self._closed = True
        remove_observer(self.observe)

    # -- sources -----------------------------------------------------------------------------------------

    def observe(self, kind: str, data: dict[str, Any]) -> None:
        """The engine's observation events (``workflows.observe``)."""
        workflow = str(data.get("workflow_id") or "")
        if kind == "run.started":
            self.runs_started.labels(workflow).inc()
        elif kind == "run.finished":
            self.runs_finished.labels(workflow, str(data.get("status"))).inc()
        elif kind == "step.finished":
            self.step_duration.labels(workflow, str(data.get("step_id")), str(data.get("status"))).observe(
                float(data.get("duration") or 0.0))
        elif kind == "step.retrying":
            self.step_retries.labels(workflow, str(data.get("step_id"))).inc()
        elif kind == "approval.decided":
            self.approvals.labels(workflow, str(data.get("step_id")), str(data.get("decision"))).inc()
        elif kind == "llm.call":
            self._llm_call(data)
        elif kind == "llm.output_retry":
            self.llm_output_retries.labels(str(data.get("model") or ""), str(data.get("agent") or "")).inc()
        elif kind == "llm.fallback":
            self.llm_fallbacks.labels(str(data.get("model") or ""), str(data.get("capability") or "")).inc()
        elif kind == "commit":
            self._commit(int(data.get("batch_size") or 0), float(data.get("duration") or 0.0))
        elif kind == "step.timeout":
            self.step_timeouts.labels(workflow, str(data.get("step_id"))).inc()
        elif kind == "run.recovered":
            self.runs_recovered.labels(workflow).inc()
        elif kind == "loop.stalled":
            self.loop_stalls.labels(workflow, str(data.get("step_id") or "")).inc()
            self.loop_stall_seconds.observe(float(data.get("seconds") or 0.0))

    def _on_db_fault(self, kind: str, new_outage: bool) -> None:
        if self._closed:
            return
        self.db_errors.labels(kind).inc()
        if new_outage:
            self.db_outages.labels(kind).inc()

    def _llm_call(self, data: dict[str, Any]) -> None:
        model = str(data.get("model") or "")
        error = data.get("error")
        self.llm_calls.labels(model, "error" if error else "ok").inc()
        if error:
            self.llm_errors.labels(model, str(error)).inc()
        for kind in ("prompt", "completion"):
            tokens = int(data.get(f"{kind}_tokens") or 0)
            if tokens:
                self.llm_tokens.labels(model, kind).inc(tokens)
        if data.get("duration") is not None:
            self.llm_duration.labels(model).observe(float(data["duration"]))

    def _on_commit(self, batch_size: int) -> None:
        if not self._closed and self.engine is not None:
            self._commit(batch_size, self.engine.db.last_commit_seconds)

    def _commit(self, batch_size: int, seconds: float) -> None:
        self.commit_size.observe(batch_size)
        self.commit_seconds.observe(seconds)

    def slack_call(self, method: str, ok: bool, ratelimited: bool = False) -> None:
        """Count one finished Web API call (``method`` as slack_sdk names it, e.g. ``chat_postMessage``).

        ``ratelimited`` means the call finally failed with 429 (the handler's retries were used up); the
        429s that were retried are counted by :class:`CountingRateLimitRetryHandler`.
        """
        method = _method_name(method)
        self.slack_calls.labels(method, "ok" if ok else "ratelimited" if ratelimited else "error").inc()
        if ratelimited:
            self.slack_ratelimited.labels(method).inc()

    def rate_limit_handler(self, max_retry_count: int = 3) -> CountingRateLimitRetryHandler:
        """slack_sdk's 429 retry handler, counting each 429 it retries here."""
        return CountingRateLimitRetryHandler(self, max_retry_count=max_retry_count)

    # -- scraping ----------------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the gauges that live in the database (within GAUGE_READ_TIMEOUT)."""
        if self.engine is None:
            return
        self.step_threads_abandoned.set(self.engine.abandoned_step_threads)
        try:
            async with asyncio.timeout(GAUGE_READ_TIMEOUT):
                suspended = await self.engine.store.count_runs("suspended")
                from storage.slack_store import SlackStore

                counts = await SlackStore(self.engine.db).delivery_counts()
        except TimeoutError:  # the database is down (reads retry for 10 s): scrape what this process counted
            log.warning("metrics: the database's gauges were not read within %g s; they keep their last values",
                        GAUGE_READ_TIMEOUT)
            return
        except Exception as exc:  # a scrape still answers; the gauges keep their last values
            log.warning("metrics: could not read the database's gauges: %s", type(exc).__name__)
            return
        self.runs_suspended.set(suspended)
        for state in ("pending", "sent", "failed"):
            self.slack_outbox.labels(state).set(counts.get(state, 0))

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)


class CountingRateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """``AsyncRateLimitErrorRetryHandler`` that counts every 429 it is about to retry."""

    def __init__(self, metrics: Metrics, max_retry_count: int = 3) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.metrics = metrics

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        if response is not None:
            self.metrics.slack_ratelimited.labels(_method_name(request.url)).inc()
        await super().prepare_for_next_attempt_async(state=state, request=request, response=response, error=error)


def _method_name(method_or_url: str) -> str:
    """``chat_postMessage``, ``chat.postMessage`` and ``https://…/api/chat.postMessage`` all name one method."""
    name = method_or_url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    return name.replace("_", ".")


__all__ = ["CONTENT_TYPE", "CountingRateLimitRetryHandler", "Metrics"]
