"""State-changing requests (every one behind the CSRF check in ``app.guard``), and signing in and out.

Each action goes through the engine's public API, as the Slack buttons and the CLI do: approvals are
``engine.resume`` (a compare-and-set; the Slack card updates from the ``run.resumed`` event it commits),
then cancel, re-run from a step, send an event, and start a run from the workflow form.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from urllib.parse import urlencode

from aiohttp import web

from storage.records import RunRecord
from workflows.errors import AlreadyResumed, ThreadflowError

from .forms import FormError, parse_form, parse_json_object
from .pages import safe_next, viewer_of, visible_run, workflow_cards
from .session import OPERATOR, SESSION, Session, Viewer
from .slack import SignInFailed
from .state import Inspector, inspector_of

log = logging.getLogger("threadflow.inspector")


def install(app: web.Application) -> None:
    app.router.add_post("/runs/{run_id}/resume", resume)
    app.router.add_post("/runs/{run_id}/cancel", cancel)
    app.router.add_post("/runs/{run_id}/rerun", rerun)
    app.router.add_post("/runs/{run_id}/event", send_event)
    app.router.add_post("/workflows/{workflow_id}/start", start)
    app.router.add_post("/login", token_login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/auth/slack", slack_start)
    app.router.add_get("/auth/slack/callback", slack_callback)


def _session(request: web.Request) -> Session:
    session: Session = request[SESSION]
    return session


async def _form(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}


def _done(request: web.Request, message: str, location: str | None = None, *, ok: bool = True) -> web.Response:
    """Tell the person what happened: JSON for the page's script (it stays open and live), else a redirect."""
    location = location or f"/runs/{request.match_info['run_id']}"
    if request.headers.get("X-Requested-With") == "fetch":
        return web.json_response({"ok": ok, "message": message, "location": location}, status=200 if ok else 409)
    _session(request).flash(message)
    raise web.HTTPSeeOther(location)


async def _run_to_act_on(request: web.Request, what: str) -> tuple[Inspector, Viewer, RunRecord]:
    """The run in the URL, if this viewer may see it (else 404) and may ``what`` it (else 403)."""
    insp, viewer = inspector_of(request), viewer_of(request)
    run = await visible_run(request)
    if not insp.access.may_act(viewer, run):
        raise web.HTTPForbidden(text=f"You may not {what} this run.")
    return insp, viewer, run


# -- runs --------------------------------------------------------------------------------------------


async def resume(request: web.Request) -> web.Response:
    insp, viewer = inspector_of(request), viewer_of(request)
    run = await visible_run(request)
    form = await _form(request)
    path = form.get("path") or None
    suspensions = [s for s in await insp.engine.store.suspensions_of(run.id) if s.kind == "suspend"]
    target = next((s for s in suspensions if path in (s.path, s.step_id)), None)
    if target is None:
        return _done(request, f"Run {run.id} does not wait at {path or 'any step'}.", ok=False)
    if not insp.access.may_decide(viewer, run, target.path):
        who = ", ".join(sorted(insp.access.deciders(run, target.path))) or "nobody"
        log.info("refused a decision on %s/%s by %s (approvers: %s)", run.id, target.path, viewer.actor, who)
        return web.Response(status=403, text=f"You can't decide this one: only {who} may.")
    decision = form.get("decision")
    try:
        if decision in ("approve", "reject"):
            data: object = {"approved": decision == "approve", "by": viewer.actor}
            if form.get("reason", "").strip():
                data = {**data, "reason": form["reason"].strip()}  # type: ignore[dict-item]
        else:
            data = parse_json_object(form.get("data"), "The resume data") or {}
            if isinstance(data, dict) and "by" in data:
                data = {**data, "by": viewer.actor}  # who decided is who is signed in, whatever the JSON says
        await insp.engine.resume(run.id, step=target.path, data=data, by=viewer.actor)
    except AlreadyResumed as exc:
        return _done(request, str(exc), ok=False)
    except (ThreadflowError, FormError) as exc:
        return _done(request, f"Not resumed: {exc}", ok=False)
    verdict = {"approve": "Approved", "reject": "Rejected"}.get(decision or "", "Resumed")
    return _done(request, f"{verdict} {target.path}.")


async def cancel(request: web.Request) -> web.Response:
    insp, viewer, run = await _run_to_act_on(request, "cancel")
    try:
        await insp.engine.cancel(run.id, by=viewer.actor)
    except ThreadflowError as exc:
        return _done(request, f"Not canceled: {exc}", ok=False)
    return _done(request, f"Canceled run {run.id}.")


async def rerun(request: web.Request) -> web.Response:
    insp, viewer, run = await _run_to_act_on(request, "re-run")
    form = await _form(request)
    try:
        data = parse_json_object(form.get("input"), "The new input")
        handle = await insp.engine.rerun(run.id, form.get("from") or "", data, started_by=viewer.user or run.started_by)
    except (ThreadflowError, FormError) as exc:
        return _done(request, f"Not re-run: {exc}", ok=False)
    return _done(request, f"Re-running {run.id} from {form.get('from')}.", f"/runs/{handle.run_id}")


async def send_event(request: web.Request) -> web.Response:
    insp, viewer, run = await _run_to_act_on(request, "send events to")
    form = await _form(request)
    name = form.get("name") or ""
    try:
        outcome = await insp.engine.send_event(run.id, name, parse_json_object(form.get("data"), "The event data"))
    except (ThreadflowError, FormError) as exc:
        return _done(request, f"Event not sent: {exc}", ok=False)
    return _done(request, f"Event {name} {outcome}.")


async def start(request: web.Request) -> web.Response:
    insp, viewer = inspector_of(request), viewer_of(request)
    workflow_id = request.match_info["workflow_id"]
    wf = insp.engine.workflows.get(workflow_id)
    if wf is None:
        raise web.HTTPNotFound(text=f"No workflow {workflow_id!r} is registered.")
    form = await _form(request)
    try:
        data = parse_form(wf.input_schema(), form)
        handle = await insp.engine.start(wf.id, data, started_by=viewer.actor)
    except (ThreadflowError, FormError) as exc:
        values = {wf.id: {k: v for k, v in form.items() if k != "csrf"}}
        return insp.page(request, "workflows.html", http_status=400, nav="workflows",
                         workflows=workflow_cards(insp, {wf.id: str(exc)}, values))
    _session(request).flash(f"Started {wf.id}.")
    raise web.HTTPSeeOther(f"/runs/{handle.run_id}")


# -- signing in --------------------------------------------------------------------------------------


async def token_login(request: web.Request) -> web.Response:
    insp = inspector_of(request)
    form = await _form(request)
    token, nxt = insp.config.token, safe_next(form.get("next"))
    if token is None or not hmac.compare_digest(form.get("token", "").encode(), token.encode()):
        _session(request).flash("That token is not right.")  # in the session, not the URL: no spoofed notices
        raise web.HTTPSeeOther("/login?" + urlencode({"next": nxt}))
    _session(request).sign_in(OPERATOR)
    _session(request).bind_to_token(token)
    raise web.HTTPSeeOther(nxt)


async def logout(request: web.Request) -> web.Response:
    _session(request).sign_out()
    raise web.HTTPSeeOther("/login" if inspector_of(request).config.sign_in_required else "/runs")


def _redirect_uri(request: web.Request) -> str:
    base = inspector_of(request).config.public_url or f"{request.scheme}://{request.host}"
    return base.rstrip("/") + "/auth/slack/callback"


async def slack_start(request: web.Request) -> web.Response:
    """Send the person to Slack's consent page; ``state`` (kept in their session) comes back with the code."""
    slack = inspector_of(request).config.slack
    if slack is None:
        raise web.HTTPNotFound(text="Sign in with Slack is not configured (SLACK_CLIENT_ID, SLACK_CLIENT_SECRET).")
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    _session(request).set("oidc", {"state": state, "nonce": nonce, "next": safe_next(request.query.get("next"))})
    query = urlencode({"response_type": "code", "scope": "openid profile email", "client_id": slack.client_id,
                       "state": state, "nonce": nonce, "redirect_uri": _redirect_uri(request)})
    raise web.HTTPFound(f"{slack.authorize_url}?{query}")


async def slack_callback(request: web.Request) -> web.Response:
    insp = inspector_of(request)
    session = _session(request)
    pending = session.pop("oidc") or {}
    state, code = request.query.get("state", ""), request.query.get("code", "")
    if not pending or not code or not hmac.compare_digest(str(pending.get("state")), state):
        session.flash("The sign-in expired or was not started here; try again.")
        raise web.HTTPSeeOther("/login")
    if insp.directory is None:
        raise web.HTTPNotFound(text="Sign in with Slack is not configured.")
    try:
        who = await insp.directory.identify(code, _redirect_uri(request))
    except SignInFailed as exc:
        session.flash(str(exc))
        raise web.HTTPSeeOther("/login") from None
    session.sign_in(Viewer(kind="slack", name=who.name, user=who.user, team=who.team))
    raise web.HTTPSeeOther(safe_next(pending.get("next")))
