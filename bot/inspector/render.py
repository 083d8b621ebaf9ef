"""Jinja2 templates (autoescaped) and the small formatting helpers they use."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from pydantic import BaseModel

from workflows.run_view import RunView

TEMPLATES = Path(__file__).with_name("templates")

STATUSES = ("pending", "running", "waiting", "suspended", "success", "failed", "canceled")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(ago=ago, when=when, duration=duration, pretty=pretty, short=short)
    env.globals.update(STATUSES=STATUSES)
    return env


def render(env: jinja2.Environment, name: str, *, http_status: int = 200, **context: Any) -> web.Response:
    html = env.get_template(name).render(**context)
    return web.Response(text=html, status=http_status, content_type="text/html", charset="utf-8")


def ago(ts: float | None) -> str:
    if ts is None:
        return ""
    seconds = max(0.0, time.time() - ts)
    if seconds < 60:
        return f"{int(seconds)}s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)}m ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h ago"
    return f"{int(seconds // 86400)}d ago"


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def pretty(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Bar(BaseModel):
    kind: str
    left: float
    width: float
    ok: bool
    title: str
    ongoing: bool


class TimelineRow(BaseModel):
    path: str
    status: str
    bars: list[Bar]
    duration: str


def timeline(view: RunView, now: float | None = None) -> tuple[list[TimelineRow], float]:
    """Each step's spans as bars placed on the run's time axis (percent of its length); and that length."""
    now = time.time() if now is None else now
    start = view.run.created_at
    ends = [view.run.finished_at or now]
    ends += [s.end for step in view.steps for s in step.spans if s.end is not None]
    total = max(max(ends) - start, 0.001)
    rows = []
    for step in view.steps:
        bars = []
        for span in step.spans:
            end = span.end if span.end is not None else (view.run.finished_at or now)
            left = max(0.0, (span.start - start) / total * 100)
            width = max(0.4, (end - span.start) / total * 100)
            bars.append(Bar(kind=span.kind, left=round(min(left, 99.6), 3), width=round(min(width, 100 - left), 3),
                            ok=span.ok, ongoing=span.end is None,
                            title=f"{span.label}: {duration(end - span.start)}" + (" so far" if span.end is None else "")))
        rows.append(TimelineRow(path=step.path, status=step.status, bars=bars, duration=duration(step.duration)))
    return rows, total
