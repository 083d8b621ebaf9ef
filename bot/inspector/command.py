"""``threadflow ui [--host 127.0.0.1] [--port 8090]``, and the inspector next to ``serve``."""

from __future__ import annotations

import argparse
import errno
import secrets
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used, so ``threadflow --help`` stays cheap
    from workflows import Engine

    from ..settings import Settings
    from .app import RunningInspector


def add_ui_command(sub: Any) -> None:
    from ..commands_server import port_number

    p = sub.add_parser("ui", help="serve the run inspector in a browser (127.0.0.1:8090 by default)")
    p.add_argument("--host", help="address to listen on (THREADFLOW_UI_HOST, default 127.0.0.1); any other "
                                  "than loopback needs THREADFLOW_UI_TOKEN or Sign in with Slack")
    p.add_argument("--port", type=port_number, help="port (THREADFLOW_UI_PORT, default 8090; 0 picks a free one)")
    p.set_defaults(handler=run_ui)


async def start_for(settings: Settings, engine: Engine, *, host: str | None = None,
                    port: int | None = None) -> RunningInspector:
    """Start the inspector on ``engine`` as the settings say; InspectorError if it may not, OSError if it cannot."""
    from .app import start_inspector
    from .config import InspectorConfig

    return await start_inspector(engine, InspectorConfig.from_settings(settings, host=host, port=port))


def run_ui(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio  # here, not at the top: `threadflow --help` does not need it

    from ..commands_server import configure_logging, wait_for_stop_signal
    from ..runtime import build_engine
    from .app import start_inspector
    from .config import InspectorConfig, InspectorError

    configure_logging(settings)

    async def main() -> int:
        try:
            config = InspectorConfig.from_settings(settings, host=args.host, port=args.port)
            config.check_exposure()
        except InspectorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # The inspector's engine executes runs too: a run started or resumed from a page continues here
        # (any other process may take it as well; claims are compare-and-set).
        engine = build_engine(settings)
        try:
            # Its port first: on a port that is taken nothing has been claimed or started (opening the engine
            # starts its dispatcher, which takes queued runs and starts their steps).
            try:
                running = await start_inspector(engine, config)
            except OSError as exc:
                from ..commands_server import bind_reason

                advice = ("Stop what uses that port, or pass another --port (THREADFLOW_UI_PORT)."
                          if exc.errno == errno.EADDRINUSE else "Check --host and --port (THREADFLOW_UI_HOST, _PORT).")
                print(f"error: the run inspector cannot listen on {config.host}:{config.port} ({bind_reason(exc)}). "
                      f"{advice}", file=sys.stderr)
                return 2
            await engine.open()
            where = running.url
            if config.host in ("0.0.0.0", "::", ""):  # every address: this machine's own is one of them
                where = "http://127.0.0.1:" + running.url.rstrip("/").rsplit(":", 1)[-1] + "/"
            print(f"threadflow inspector: open {where}runs"
                  + (f" (listening on {config.host or 'every address'})" if where != running.url else ""), flush=True)
            try:
                await wait_for_stop_signal()
            finally:
                await running.stop()
        finally:
            await engine.close()
        return 0

    return asyncio.run(main())


async def start_for_sandbox(engine: Engine, emulator: Any, *, host: str, port: int,
                            approvers: tuple[str, ...] = ()) -> RunningInspector:
    """The inspector of ``threadflow dev``: open to this machine, with Sign in with Slack through the emulator
    (optional: sign in as alice or bob to see the channel and approver rules apply to a person)."""
    from .app import start_inspector
    from .config import InspectorConfig, SlackSignIn

    client_id, secret = "sandbox-inspector", secrets.token_urlsafe(24)
    emulator.openid.register_client(client_id, secret)
    config = InspectorConfig(
        host=host, port=port, slack=SlackSignIn(client_id, secret, emulator.api_url), bot_token=emulator.bot_token,
        slack_api_url=emulator.api_url, sign_in_optional=True, approvers=approvers,
    )
    return await start_inspector(engine, config)
