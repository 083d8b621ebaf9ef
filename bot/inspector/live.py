"""Live updates as server-sent events: a run page follows ``engine.watch``; the runs page follows all events.

A run page's stream sends ``update`` with the run's new status, each graph node's status and the part of
the page that changed, re-rendered on the server; events that arrive together are folded into one update.
The runs page's stream sends ``changed`` when any run started or changed; the page then reloads its table.
Both end when the inspector shuts down (``Inspector.closing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from workflows.errors import RunNotFound
from workflows.events import WorkflowEvent
from workflows.run_view import load_run_view
from workflows.waits import wait_set

from .pages import live_context, viewer_of, visible_run
from .session import SESSION
from .state import Inspector, inspector_of

log = logging.getLogger("threadflow.inspector")

HEARTBEAT_SECONDS = 15.0
#: The runs page asks for its table again at most this often while runs keep changing.
RUNS_FEED_INTERVAL = 0.5


def install(app: web.Application) -> None:
    app.router.add_get("/runs/live", runs_feed)
    app.router.add_get("/runs/{run_id}/live", run_feed)


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


async def _open_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    await resp.write(b"retry: 1000\n\n")
    return resp


async def _next_batch(queue: asyncio.Queue[WorkflowEvent | None], closing: asyncio.Event,
                      timeout: float) -> list[WorkflowEvent | None] | None:
    """Everything queued, waiting up to ``timeout`` for the first; None on timeout, [] when closing."""
    getter = asyncio.ensure_future(queue.get())
    stopper = asyncio.ensure_future(closing.wait())
    try:
        done, _ = await asyncio.wait({getter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not getter.done():
            getter.cancel()
    if getter in done:
        batch: list[WorkflowEvent | None] = [getter.result()]
        while not queue.empty():
            batch.append(queue.get_nowait())
        return batch
    return [] if closing.is_set() else None


async def run_feed(request: web.Request) -> web.StreamResponse:
    insp = inspector_of(request)
    run = await visible_run(request)
    viewer = viewer_of(request)
    try:
        # A reconnecting EventSource says where it got to; the page's first connection passes ``after``.
        after = int(request.headers.get("Last-Event-ID") or request.query.get("after") or 0)
    except ValueError:
        after = 0
    resp = await _open_stream(request)
    queue: asyncio.Queue[WorkflowEvent | None] = asyncio.Queue()
    watcher = asyncio.ensure_future(_pump(insp.engine.watch(run.id, after), queue))
    try:
        if run.is_terminal and not await insp.engine.store.read_events(run.id, after, 1):
            await resp.write(sse("end", {"status": run.status}))
            return resp
        while True:
            batch = await _next_batch(queue, insp.closing, HEARTBEAT_SECONDS)
            if batch is None:
                await resp.write(b": keep-alive\n\n")
                continue
            if not batch:
                break
            events = [e for e in batch if e is not None]
            if events:
                await resp.write(await _update(insp, viewer, request[SESSION].csrf, run.id, events))
            if None in batch or any(e.is_final for e in events):
                await resp.write(sse("end", {}))
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the tab was closed, or the inspector is stopping
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return resp


async def _pump(events: AsyncIterator[WorkflowEvent], queue: asyncio.Queue[WorkflowEvent | None]) -> None:
    try:
        async for ev in events:
            queue.put_nowait(ev)
    finally:
        queue.put_nowait(None)


async def _update(insp: Inspector, viewer: Any, csrf: str, run_id: str, events: list[WorkflowEvent]) -> bytes:
    view = await load_run_view(insp.engine, run_id)
    context = await live_context(insp, viewer, view)
    html = insp.templates.get_template("_run_live.html").render(csrf=csrf, viewer=viewer, **context)
    return (f"id: {view.last_event_id}\n".encode() + sse("update", {
        "status": view.run.status, "last_event_id": view.last_event_id, "nodes": context["node_status"],
        "events": [{"id": e.id, "type": e.type, "path": e.path, "at": e.at} for e in events], "html": html,
    }))


async def runs_feed(request: web.Request) -> web.StreamResponse:
    """``changed`` whenever any run started or changed (the page reloads its table, filters applied there)."""
    insp = inspector_of(request)
    viewer = viewer_of(request)
    resp = await _open_stream(request)
    last = await insp.queries.last_event_id()
    changes = insp.engine.db.changes
    quiet_since = asyncio.get_running_loop().time()
    try:
        while not insp.closing.is_set():
            version = changes.version
            fresh = await insp.queries.events_after(last, 1000)
            if fresh:
                last = fresh[-1].id
                seen = await _visible_changes(insp, viewer, fresh)
                if seen:  # nothing about runs this person may not see, not even that they changed
                    await resp.write(sse("changed", {"last_event_id": seen[-1].id}))
                    quiet_since = asyncio.get_running_loop().time()
                await _sleep_or_close(insp, RUNS_FEED_INTERVAL)
                continue
            if asyncio.get_running_loop().time() - quiet_since > HEARTBEAT_SECONDS:
                await resp.write(b": keep-alive\n\n")
                quiet_since = asyncio.get_running_loop().time()
            # In-process commits wake this at once; other processes' are seen at the next poll.
            waiter = asyncio.ensure_future(changes.wait(version, insp.engine.poll_interval))
            closer = asyncio.ensure_future(insp.closing.wait())
            try:
                await asyncio.wait({waiter, closer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                closer.cancel()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def _visible_changes(insp: Inspector, viewer: Any, events: list[Any]) -> list[Any]:
    """The events of runs ``viewer`` may see (all of them for an operator)."""
    if await insp.access.visibility(viewer) is None:
        return events
    visible: dict[str, bool] = {}
    for run_id in dict.fromkeys(e.run_id for e in events):
        try:
            visible[run_id] = await insp.access.can_see(viewer, await insp.engine.get_run(run_id))
        except RunNotFound:
            visible[run_id] = False  # pruned meanwhile
    return [e for e in events if visible.get(e.run_id)]


async def _sleep_or_close(insp: Inspector, seconds: float) -> None:
    await wait_set(insp.closing, seconds)  # not wait_for: it can swallow a cancel (see workflows/waits.py)
