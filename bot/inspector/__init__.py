"""The run inspector: every run, every step, and what each agent knew, in a browser.

``threadflow ui`` serves it alone; ``threadflow serve`` serves it too with THREADFLOW_UI=true;
``threadflow dev`` serves it next to the sandbox. Server-rendered pages (aiohttp + Jinja2) with a few
kilobytes of script for live updates and the graph (laid out by the vendored dagre).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage.lazy import lazy_exports

if TYPE_CHECKING:
    from .app import RunningInspector, create_app, start_inspector
    from .config import InspectorConfig, InspectorError, SlackSignIn, is_loopback

# Imported on first use, so the CLI can build ``threadflow ui``'s parser without the web stack.
__getattr__, __dir__ = lazy_exports(globals(), {
    "RunningInspector": ".app", "create_app": ".app", "start_inspector": ".app",
    "InspectorConfig": ".config", "InspectorError": ".config", "SlackSignIn": ".config", "is_loopback": ".config",
})

__all__ = [
    "InspectorConfig",
    "InspectorError",
    "RunningInspector",
    "SlackSignIn",
    "create_app",
    "is_loopback",
    "start_inspector",
]
