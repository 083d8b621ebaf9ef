"""The pages: ``/runs``, ``/runs/<run_id>``, ``/workflows`` and ``/login``."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from storage.records import RunRecord
from storage.run_queries import RunCursor, RunFilter
from workflows.errors import RunNotFound
from workflows.graph import WaitForEventNode
from workflows.graph_export import workflow_graph
from workflows.run_view import RunView, load_run_view
from workflows.workflow import CommittedWorkflow, _walk

from .forms import form_fields
from .render import STATUSES, render, timeline
from .session import SESSION, VIEWER, Session, Viewer
from .state import Inspector, inspector_of

PAGE_SIZE = 50
_RUN_ID = re.compile(r"^[0-9a-zA-Z_-]{1,40}$")


def install(app: web.Application) -> None:
    app.router.add_get("/runs", runs_page)
    app.router.add_get("/runs/{run_id}", run_page)
    app.router.add_get("/workflows", workflows_page)
    app.router.add_get("/login", login_page)


def viewer_of(request: web.Request) -> Viewer:
    """Who is looking; the guard lets no request without a viewer reach a page that calls this."""
    viewer = request[VIEWER]
    assert viewer is not None
    return viewer


# -- /runs -------------------------------------------------------------------------------------------


async def runs_page(request: web.Request) -> web.Response:
    insp, viewer = inspector_of(request), viewer_of(request)
    q = request.query
    status = q.get("status") if q.get("status") in STATUSES else None
    workflow = q.get("workflow") or None
    search = (q.get("q") or "").strip()
    visible = await insp.access.visibility(viewer)
    if search and _RUN_ID.match(search):
        exact = await insp.engine.store.get_run(search)
        if exact is not None and await insp.access.can_see(viewer, exact):
            raise web.HTTPFound(f"/runs/{exact.id}")
    where = RunFilter(status=status, workflow_id=workflow, id_prefix=search or None, visible_to=visible)
    before = RunCursor.parse(q["before"]) if q.get("before") else None
    after = RunCursor.parse(q["after"]) if q.get("after") else None
    page = await insp.queries.page(where, before=before, after=after, limit=PAGE_SIZE)
    if after is not None and not page.runs:
        page = await insp.queries.page(where, limit=PAGE_SIZE)
    total = await insp.queries.count(where)
    channels = await insp.queries.channels_of(r.id for r in page.runs)
    base = {k: v for k, v in (("status", status), ("workflow", workflow), ("q", search)) if v}
    context: dict[str, Any] = dict(
        runs=page.runs, total=total, channels=channels, status=status, workflow=workflow, search=search,
        older_url=f"/runs?{urlencode({**base, 'before': page.older.token})}" if page.older else None,
        newer_url=f"/runs?{urlencode({**base, 'after': page.newer.token})}" if page.newer else None,
    )
    if q.get("partial") == "table":
        session: Session = request[SESSION]
        return render(insp.templates, "_runs_table.html", csrf=session.csrf, **context)
    keep = {k: v for k, v in q.items() if k != "partial"}
    return insp.page(request, "runs.html", nav="runs", workflow_ids=sorted(insp.engine.workflows),
                     partial_url=f"/runs?{urlencode({**keep, 'partial': 'table'})}", **context)


# -- /runs/<run_id> ----------------------------------------------------------------------------------


async def visible_run(request: web.Request) -> RunRecord:
    """The run in the URL, if this viewer may see it; 404 otherwise (whether or not it exists)."""
    insp = inspector_of(request)
    run_id = request.match_info["run_id"]
    try:
        run = await insp.engine.get_run(run_id)
    except RunNotFound:
        run = None
    if run is None or not await insp.access.can_see(viewer_of(request), run):
        page = insp.page(request, "error.html", http_status=404, heading="No such run",
                         message=f"There is no run {run_id!r}, or it was started in a Slack channel you are not in.")
        raise web.HTTPNotFound(text=page.text, content_type="text/html")
    return run


async def run_page(request: web.Request) -> web.Response:
    insp = inspector_of(request)
    run = await visible_run(request)
    view = await load_run_view(insp.engine, run.id)
    wf = insp.engine.workflow_of(run)  # the run's own version: its graph, its steps
    viewer = viewer_of(request)
    return insp.page(
        request, "run.html", nav="runs", graph=workflow_graph(wf).model_dump() if wf else None,
        may_act=insp.access.may_act(viewer, view.run), approvers=list(insp.config.approvers),
        step_ids=rerun_targets(insp.engine.workflows.get(run.workflow_id), view),  # a re-run takes the newest
        event_names=event_names(wf),
        **await live_context(insp, viewer, view),
    )


async def live_context(insp: Inspector, viewer: Viewer, view: RunView) -> dict[str, Any]:
    """What ``_run_live.html`` (the part of the run page that live updates replace) needs."""
    run = view.run
    slack = await insp.slack_store.get_run(run.id)
    link = None
    if slack is not None and slack.root_ts and insp.directory is not None:
        link = await insp.directory.permalink(slack.channel_id, slack.root_ts)
    wf = insp.engine.workflow_of(run)
    suspensions = []
    for susp in view.open_suspensions:
        step = wf.find_step_at(susp.path) if wf else None
        fields = step.resume.model_fields if step is not None and step.resume is not None else {}
        suspensions.append({
            "record": susp, "may_decide": insp.access.may_decide(viewer, run, susp.path),
            "deciders": sorted(insp.access.deciders(run, susp.path)),
            "decision": "approved" in fields, "reason": "reason" in fields,
        })
    rows, total = timeline(view)
    return dict(run=run, view=view, slack=slack, slack_link=link, suspensions=suspensions, timeline=rows,
                total=total, node_status={k: v.model_dump() for k, v in view.node_status.items()})


def rerun_targets(wf: CommittedWorkflow | None, view: RunView) -> list[str]:
    """Steps a re-run may start from: the workflow's step ids, then the paths this run recorded."""
    if wf is None:
        return []
    ids = [s.id for s in wf.steps()]
    return ids + [s.path for s in view.steps if s.path not in ids and s.kind == "step"]


def event_names(wf: CommittedWorkflow | None) -> list[str]:
    if wf is None:
        return []
    return sorted({n.event for n in _walk(wf.root) if isinstance(n, WaitForEventNode)})


# -- /workflows --------------------------------------------------------------------------------------


def workflow_cards(insp: Inspector, errors: dict[str, str] | None = None,
                   values: dict[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    cards = []
    for wf in sorted(insp.engine.workflows.values(), key=lambda w: w.id):
        schema = wf.input_schema()
        fields = form_fields(schema)
        for f in fields:
            given = (values or {}).get(wf.id, {})
            if f.name in given:
                f.value, f.checked = given[f.name], given[f.name] not in ("", "false")
        cards.append({"id": wf.id, "description": wf.description, "schema": schema or {}, "fields": fields,
                      "graph": workflow_graph(wf).model_dump(), "error": (errors or {}).get(wf.id)})
    return cards


async def workflows_page(request: web.Request) -> web.Response:
    insp = inspector_of(request)
    return insp.page(request, "workflows.html", nav="workflows", workflows=workflow_cards(insp))


# -- /login ------------------------------------------------------------------------------------------


def safe_next(value: str | None) -> str:
    """Only a path on this site: no open redirect through sign-in.

    Browsers and URL libraries drop tabs, newlines and other control characters and read ``\\`` as ``/``,
    so ``/\t/evil.example`` would become ``//evil.example``: anything but a plain absolute path is refused."""
    if not value or any(ord(ch) < 33 or ch == "\\" for ch in value):
        return "/runs"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return "/runs"
    return value


async def login_page(request: web.Request) -> web.Response:
    insp = inspector_of(request)
    cfg = insp.config
    return insp.page(request, "login.html", slack=cfg.slack is not None, token=cfg.token is not None,
                     next=safe_next(request.query.get("next")))
