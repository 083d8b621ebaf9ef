"""Plain-text rendering for the CLI (the Slack rendering lives in ``blocks.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from workflows.versions import describe_version

if TYPE_CHECKING:  # types only: ``threadflow runs`` prints without loading the engine's modules
    from storage.records import RunRecord
    from workflows import CommittedWorkflow, RunDetails, VersionStatus


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_workflows(workflows: Iterable[CommittedWorkflow], versions: Sequence[VersionStatus] = ()) -> None:
    """Each workflow's input, then its versions: registered here or elsewhere, and how many runs each has open."""
    registered = {wf.id: wf for wf in workflows}
    for wid in sorted(set(registered) | {v.workflow_id for v in versions}):
        wf = registered.get(wid)
        if wf is None:
            print(f"{wid}  (not registered here)")
        else:
            print(f"{wf.id}" + (f"  - {wf.description}" if wf.description else ""))
            _print_input(wf)
        for v in (v for v in versions if v.workflow_id == wid):
            where = ["newest"] if v.newest else []
            where.append("registered here" if v.registered else "not registered here")
            if v.served_by:
                where.append(f"served by {len(v.served_by)} running process{'es' if len(v.served_by) > 1 else ''}")
            elif v.open_runs and not v.registered:
                where.append("STRANDED: no running process has it")
            runs = f"{v.open_runs} open run{'s' if v.open_runs != 1 else ''}"
            print(f"    version {v.describe()}: {', '.join(where)}; {runs}")


def _print_input(wf: CommittedWorkflow) -> None:
    schema = wf.input_schema()
    if not schema or not schema.get("properties"):
        print("    input: (none)")
        return
    required = set(schema.get("required", []))
    for name, prop in schema["properties"].items():
        kind = prop.get("type") or "/".join(p.get("type", "?") for p in prop.get("anyOf", [])) or "object"
        flag = "required" if name in required else f"optional, default {json.dumps(prop.get('default'))}"
        desc = f"  {prop['description']}" if prop.get("description") else ""
        print(f"    input.{name}: {kind} ({flag}){desc}")


def print_runs(runs: list[RunRecord]) -> None:
    if not runs:
        print("No runs.")
        return
    print(f"{'RUN ID':<18} {'WORKFLOW':<20} {'VERSION':<14} {'STATUS':<10} {'STARTED':<24} BY")
    for r in runs:
        version = describe_version(r.workflow_version, r.workflow_fingerprint) if r.workflow_fingerprint else "-"
        print(f"{r.id:<18} {r.workflow_id:<20} {version:<14} {r.status:<10} {when(r.created_at):<24} "
              f"{r.started_by or '-'}")


def print_details(details: RunDetails, contexts: list[dict[str, Any]] | None = None) -> None:
    run = details.run
    version = f"  version={describe_version(run.workflow_version, run.workflow_fingerprint)}" if run.workflow_fingerprint else ""
    print(f"Run {run.id}  workflow={run.workflow_id}{version}  status={run.status}")
    print(f"  started {when(run.created_at)} by {run.started_by or '-'}; finished {when(run.finished_at)}")
    if run.rerun_of:
        print(f"  re-run of {run.rerun_of} from {run.rerun_from}")
    if run.thread_id:
        print(f"  memory thread {run.thread_id} (resource {run.resource_id or '-'})")
    print(f"  input:  {short(run.input, 300)}")
    if run.output is not None:
        print(f"  output: {short(run.output, 300)}")
    if run.error:
        print(f"  error:  {run.error.get('message')}")
    print("Steps:")
    if not details.steps:
        print("  (none finished)")
    for s in details.steps:
        if s.kind == "override":
            continue
        took = f"{s.finished_at - s.started_at:.3f}s" if s.started_at else "-"
        print(f"  {s.path:<28} {s.kind:<6} attempts={s.attempts} took={took}  {short(s.output)}")
    if details.suspensions:
        print("Suspensions:")
        for sp in details.suspensions:
            line = f"  {sp.path:<28} {sp.kind:<7} {sp.status}"
            if sp.status == "resolved":
                line += f" by {sp.resolved_by or '-'} at {when(sp.resolved_at)} with {short(sp.resume_data)}"
            else:
                line += f" payload {short(sp.payload)}"
            print(line)
    print("Events:")
    for ev in details.events:
        extra = {k: v for k, v in ev.data.items() if k not in ("output", "input")}
        print(f"  #{ev.id:<5} {when(ev.at)}  {ev.type:<15} {ev.path or '':<24} {short(extra, 80) if extra else ''}")
    if contexts is not None:
        print_contexts(contexts)


def print_contexts(contexts: list[dict[str, Any]]) -> None:
    print("Agent contexts (what each agent knew):")
    if not contexts:
        print("  (no agent calls recorded for this run)")
    for c in contexts:
        where = c.get("path") or "- (thread chat)"
        print(f"  -- step {where}  agent {c.get('agent')}  call {c.get('id')}  thread {c.get('thread_id') or '-'}")
        ctx = c.get("context") or {}
        for key, value in ctx.items():
            if isinstance(value, list):
                print(f"     {key}: {len(value)} item(s)")
                for item in value:
                    if isinstance(item, dict):
                        who = item.get("role") or item.get("name") or ""
                        print(f"       - {who}: {short(item.get('content', item), 160)}")
                    else:
                        print(f"       - {short(item, 160)}")
            else:
                print(f"     {key}: {short(value, 300)}")
        answer = c.get("answer") or {}
        feedback = answer.get("feedback") if isinstance(answer, dict) else None
        shown = {k: v for k, v in answer.items() if k != "feedback"} if isinstance(answer, dict) else answer
        print(f"     answer: {short(shown, 300)}")
        for f in feedback or []:
            print(f"     feedback: {f.get('rating')} from {f.get('user')} at {when(f.get('at'))}")
