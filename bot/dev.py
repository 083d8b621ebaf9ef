"""``threadflow dev``: the real bot plus a local Slack emulator and its web page (see the sandbox issue)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import Settings


def add_dev_command(sub: Any) -> None:
    from .commands_server import port_number

    p = sub.add_parser("dev", help="try threadflow locally: the bot plus a Slack sandbox page, on SQLite")
    p.add_argument("--port", type=port_number, default=8080, help="port of the sandbox page")
    p.add_argument("--bot-port", type=port_number, default=0, help="port of the bot (default: any free port)")
    p.add_argument("--ui-port", type=port_number, default=8090, help="port of the run inspector (0: any free port)")
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--realistic-slack", action="store_true",
                   help="make the local Slack answer like the real one: 0.1-0.3 s per call, and Slack's rate limits")
    p.add_argument("--workspaces", type=int, default=1, choices=range(1, 5), metavar="N",
                   help="serve N Slack workspaces (1-4); with 2 or more the app is installed in each through the "
                        "local Slack's OAuth flow, as a distributed app is, and each gets its own page")
    p.set_defaults(handler=run_dev)


def run_dev(settings: Settings, args: argparse.Namespace) -> int:
    from .sandbox import run_sandbox

    return run_sandbox(settings, args)
