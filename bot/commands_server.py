"""CLI commands that run long-lived processes: ``serve``, ``worker``, ``dev``, and ``manifest``."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from workflows import interrupts
from workflows.errors import UsageError

if TYPE_CHECKING:
    from aiohttp import web

    from .inspector.app import RunningInspector
    from .settings import Settings

log = logging.getLogger("threadflow.bot")


class PortInUse(UsageError):
    """``serve`` cannot listen on its port (or the inspector's): one line and exit status 2, like ``threadflow ui``."""


def add_server_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the Slack bot (HTTP on THREADFLOW_PORT, or Socket Mode with SLACK_APP_TOKEN)")
    p.add_argument("--host", help="overrides THREADFLOW_HOST")
    p.add_argument("--port", type=port_number, help="overrides THREADFLOW_PORT")
    p.add_argument("--ui", action="store_true", default=None,
                   help="also serve the run inspector (THREADFLOW_UI=true) on THREADFLOW_UI_HOST:THREADFLOW_UI_PORT")
    p.set_defaults(handler=run_serve)

    p = sub.add_parser("worker", help="execute runs only (scale-out); no Slack")
    p.add_argument("--concurrency", type=concurrency, default=200, help="runs executed at once (1 or more)")
    p.set_defaults(handler=run_worker)

    p = sub.add_parser("manifest", help="print a Slack app manifest to paste into api.slack.com")
    p.add_argument("--url", help="public base URL of this bot, e.g. https://bot.example.com (or THREADFLOW_PUBLIC_URL)")
    p.add_argument("--name", default="threadflow")
    p.set_defaults(handler=run_manifest)

    from .dev import add_dev_command
    from .inspector.command import add_ui_command

    add_dev_command(sub)
    add_ui_command(sub)


def port_number(text: str) -> int:
    """A TCP port, 0 (pick a free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is a number from 0 to 65535 (0 picks a free one)")
    return value


def concurrency(text: str) -> int:
    """How many runs a worker executes at once: 1 or more. A worker that can execute none would still announce
    its versions, and every ``threadflow run`` would queue its run for it and wait in vain."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a worker must execute at least 1 run at once")
    return value


def configure_logging(settings: Settings) -> None:
    """Set up logging as THREADFLOW_LOG_LEVEL and THREADFLOW_LOG_FORMAT say (SettingsError when they are malformed)."""
    from .logs import setup_logging

    settings.require_logging()
    setup_logging(settings.log_level, settings.log_format)


def run_serve(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio  # here, not at the top: `threadflow --help` does not need it

    from .runtime import build_engine
    from .server import start_server

    settings.require_slack()
    configure_logging(settings)
    with_ui = args.ui or settings.ui
    if with_ui:
        from .inspector import InspectorConfig

        InspectorConfig.from_settings(settings).check_exposure()  # refuse before anything starts

    async def main() -> None:
        engine = build_engine(settings)
        host = args.host or settings.host
        port = settings.port if args.port is None else args.port
        inspector: RunningInspector | None = None

        async def listen_for_inspector() -> None:  # (before the bot and its engine start: see start_server)
            nonlocal inspector
            from .inspector.command import start_for

            try:
                inspector = await start_for(settings, engine)
            except OSError as exc:
                raise PortInUse(f"the run inspector cannot listen on {settings.ui_host}:{settings.ui_port} "
                                f"({bind_reason(exc)}). " + ("Stop what uses that port, or set another THREADFLOW_UI_PORT."
                                if exc.errno == errno.EADDRINUSE else "Check THREADFLOW_UI_HOST and THREADFLOW_UI_PORT."))\
                    from None

        runner: web.AppRunner | None = None
        socket_handler = None
        try:
            try:
                runner, bot, port = await start_server(settings, engine, host=host, port=port,
                                                       before_start=listen_for_inspector if with_ui else None)
            except OSError as exc:
                raise PortInUse(f"threadflow cannot listen on {host}:{port} ({bind_reason(exc)}). " + (
                    "Another process uses the port (an earlier `threadflow serve` still stopping?): stop it, or pass "
                    "another --port (THREADFLOW_PORT)." if exc.errno == errno.EADDRINUSE else
                    "Check --host and --port (THREADFLOW_HOST, THREADFLOW_PORT).")) from None
            if inspector is not None:
                print(f"threadflow inspector: open {inspector.url}runs", flush=True)
            if settings.socket_mode:
                from .server import connect_socket_mode

                socket_handler = await connect_socket_mode(bot, settings)
                print(f"threadflow is running in Socket Mode (health on port {port})", flush=True)
            else:
                print(f"threadflow is listening on http://{host}:{port}/slack/events", flush=True)
            await wait_for_stop_signal()
        finally:  # (also after a second signal: the engine hands its runs back in the runner's cleanup)
            if socket_handler is not None:
                await socket_handler.close_async()
            if inspector is not None:
                await inspector.stop()
            if runner is not None:
                await runner.cleanup()

    asyncio.run(main())
    return 0


def bind_reason(exc: OSError) -> str:
    """``Address already in use``, not asyncio's "error while attempting to bind on address ...: ..." around it."""
    if isinstance(exc, socket.gaierror):  # a host name that does not resolve: its errno is the resolver's
        return f"{exc.strerror or exc}"
    return os.strerror(exc.errno) if exc.errno else str(exc)


def run_worker(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio  # here, not at the top: `threadflow --help` does not need it

    from .runtime import build_engine

    configure_logging(settings)

    async def main() -> None:
        from workflows.schedules import Scheduler

        engine = build_engine(settings, capacity=args.concurrency)
        await engine.open()
        scheduler = Scheduler(engine)  # fires schedules that post nowhere; the bot fires channel schedules
        scheduler.start(settings.schedule_interval)
        try:
            print(f"threadflow worker {engine.owner} executing runs ({engine.db.dialect})", flush=True)
            await wait_for_stop_signal()
        finally:  # (also when a second signal interrupted a step that held the loop: the runs are handed back)
            await scheduler.stop()
            await engine.close()

    asyncio.run(main())
    return 0


#: Every scope the bot asks for, and what it uses it for (the README's table is made from this).
BOT_SCOPES: dict[str, str] = {
    "commands": "the slash command",
    "chat:write": "post and update run messages, approval cards, answers and ephemeral notes",
    "chat:write.public": "post a run's messages in a public channel the bot was not invited to",
    "app_mentions:read": "answer when someone mentions the bot",
    "channels:history": "thread replies in public channels (chat with the agents; a deleted approval card)",
    "groups:history": "the same in private channels the bot was invited to",
    "im:history": "direct messages to the bot (answered there)",
    # The run inspector shows a signed-in person only runs of channels they belong to (users.conversations).
    "channels:read": "the run inspector: which public channels a signed-in person is in",
    "groups:read": "the run inspector: which private channels a signed-in person is in",
    "im:read": "the run inspector: a signed-in person's direct-message conversations",
    "mpim:read": "the run inspector: a signed-in person's group direct messages",
    # Streamed answers (chat.startStream/appendStream/stopStream) and "is thinking..." need only chat:write.
    "assistant:write": "the assistant container: suggested prompts and thread titles (assistant.threads.*)",
}

BOT_EVENTS = ["app_mention", "message.channels", "message.groups", "message.im",
              # The assistant container (bolt's Assistant): a person opens a thread, or moves to another channel.
              "assistant_thread_started", "assistant_thread_context_changed"]

OAUTH_EVENTS = ["app_uninstalled", "tokens_revoked"]

ASSISTANT_DESCRIPTION = "Starts threadflow workflows and answers questions about their runs."


def manifest(settings: Settings, url: str | None, name: str = "threadflow") -> dict[str, Any]:
    """The Slack app manifest: the slash command, scopes, interactivity and event URLs."""
    base = (url or settings.public_url or "https://YOUR-PUBLIC-HOST").rstrip("/")
    events_url = f"{base}/slack/events"
    socket_mode = settings.slack_app_token is not None
    command: dict[str, Any] = {
        "command": settings.command,
        "description": "Run and follow AI agent workflows",
        "usage_hint": "run WORKFLOW [input] | runs | status RUN_ID | cancel RUN_ID | schedule | schedules | help",
        "should_escape": False,
    }
    if not socket_mode:
        command["url"] = events_url
    settings_section: dict[str, Any] = {
        # Installs through OAuth: an uninstall or a revocation removes the workspace's tokens at once.
        "event_subscriptions": {"bot_events": list(BOT_EVENTS) + (list(OAUTH_EVENTS) if settings.oauth_enabled else [])},
        "interactivity": {"is_enabled": True},
        # Enterprise Grid org-wide installs are offered when the app is distributed through OAuth.
        "org_deploy_enabled": settings.oauth_enabled,
        "socket_mode_enabled": socket_mode,
        "token_rotation_enabled": settings.slack_token_rotation,
    }
    redirect_urls: list[str] = []
    if settings.oauth_enabled:  # installs through OAuth: Slack sends people back here after "Allow"
        redirect_urls.append(f"{base}/slack/oauth_redirect")
    if settings.ui_url:
        redirect_urls.append(settings.ui_url.rstrip("/") + "/auth/slack/callback")
    if not socket_mode:
        settings_section["event_subscriptions"]["request_url"] = events_url
        settings_section["interactivity"]["request_url"] = events_url
    return {
        "display_information": {"name": name, "description": "Durable AI agent workflows, run from Slack."},
        "features": {
            "app_home": {"messages_tab_enabled": True, "messages_tab_read_only_enabled": False},
            "bot_user": {"display_name": name, "always_online": True},
            "slash_commands": [command],
            # Slack's assistant container (Agents & AI Apps); the bot offers the workflows as prompts per thread.
            "assistant_view": {"assistant_description": ASSISTANT_DESCRIPTION, "suggested_prompts": []},
        },
        "oauth_config": {
            "scopes": {"bot": list(BOT_SCOPES)},
            **({"redirect_urls": redirect_urls} if redirect_urls else {}),
        },
        "settings": settings_section,
    }


def run_manifest(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(manifest(settings, args.url, args.name), indent=2))
    return 0


#: After a second signal, how long the process may take to hand its runs back before it exits regardless.
STOP_GRACE_SECONDS = 5.0
EXIT_INTERRUPTED = 130


async def wait_for_stop_signal() -> None:
    """Block until SIGINT or SIGTERM, so shutdown hands runs back cleanly.

    The handlers are installed with ``signal.signal``: Python runs them in the main thread between bytecodes
    (and interrupts ``time.sleep``), even while a step holds the event loop, where ``loop.add_signal_handler``
    would only run once the loop gets control back. The first signal asks for a graceful stop (which needs the
    loop). A second one raises KeyboardInterrupt wherever the main thread is, in a step that blocks the loop for
    instance: the engine lets it through (it came from a signal), hands the runs back on the way out, and the
    command exits with 130. Should even that not get through (a C call that never returns) or the hand-back
    hang, the process exits after STOP_GRACE_SECONDS; a third signal exits at once.
    """
    import asyncio  # here, not at the top: `threadflow --help` does not need it

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        interrupts.note(signum)
        if received == 1:
            loop.call_soon_threadsafe(stop.set)
            return
        if received == 2:
            # (os.write: a signal handler may interrupt a print in progress, and print is not reentrant)
            os.write(2, f"threadflow: {signal.Signals(signum).name} again: stopping now; runs are handed back on "
                        f"the way out (exiting within {STOP_GRACE_SECONDS:g} s regardless)\n".encode())
            timer = threading.Timer(STOP_GRACE_SECONDS, os._exit, (EXIT_INTERRUPTED,))
            timer.daemon = True
            timer.start()
            raise KeyboardInterrupt
        os._exit(EXIT_INTERRUPTED)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
    else:  # pragma: no cover (the CLI runs its loop in the main thread)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
    await stop.wait()
