"""The ``threadflow`` command: run and inspect workflows, and start the bot.

Every command uses the same engine against the same database as the bot. Bad input, and a database URL
that is malformed or a database that cannot be reached, print one line that says what to do and exit with
status 2; a run that fails exits with status 1.

Start-up is kept short: building the parser imports nothing beyond argparse, and each command imports what
it needs when it runs (``threadflow --help`` does not load the engine, the database driver or pydantic).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import FrameType

    from storage.records import RunRecord
    from workflows import Engine, RunHandle

    from .settings import Settings

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141


class CLIError(Exception):
    """Bad command-line input; printed as one line, exit status 2."""


def parse_json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"{what} is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}") from None


def emit(data: Any) -> None:
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    if not _printable(text):
        # A lone surrogate (text cut in the middle of an emoji by a UTF-16 length limit, as Slack's and
        # JavaScript's are) or a character the terminal's encoding lacks: JSON's own \u escapes print it.
        text = json.dumps(data, indent=2, default=str)
    print(text)


def _printable(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except UnicodeEncodeError:
        return False
    except LookupError:  # an encoding Python does not know: let print try
        pass
    return True


# -- commands -----------------------------------------------------------------------------------------


async def cmd_workflows(engine: Engine, args: argparse.Namespace) -> int:
    statuses = await engine.version_status()
    newest = engine.workflows
    if args.json:
        emit([{
            "id": wid, "description": wf.description if wf else None, "input_schema": wf.input_schema() if wf else None,
            "version": wf.version if wf else None, "fingerprint": wf.fingerprint if wf else None,
            "registered": wf is not None, "open_runs": sum(v.open_runs for v in statuses if v.workflow_id == wid),
            "versions": [v.model_dump(mode="json", exclude={"workflow_id"}) for v in statuses if v.workflow_id == wid],
        } for wid, wf in ((wid, newest.get(wid)) for wid in dict.fromkeys(v.workflow_id for v in statuses))])
    else:
        from .render_text import print_workflows

        print_workflows(newest.values(), statuses)
    return EXIT_OK


async def settle_and_report(engine: Engine, handle: RunHandle, args: argparse.Namespace) -> int:
    """Print the run's result once it settles, waiting at most ``--wait`` seconds (or not at all: ``--no-wait``)."""
    if args.no_wait:
        emit((await engine.result_of(await engine.get_run(handle.run_id))).to_json())
        return EXIT_OK
    try:
        result = await handle.result(timeout=args.wait)
    except TimeoutError:
        result = await engine.result_of(await engine.get_run(handle.run_id))
        emit(result.to_json())
        print(f"threadflow: stopped waiting after {args.wait:g} seconds: run {handle.run_id} is still {result.status}. "
              "It goes on in the processes that execute runs (threadflow serve or worker); follow it with "
              f"`threadflow show {handle.run_id}`, or wait longer with --wait SECONDS.", file=sys.stderr)
        return EXIT_RUN_FAILED
    emit(result.to_json())
    return EXIT_RUN_FAILED if result.status in ("failed", "canceled") else EXIT_OK


async def cmd_run(engine: Engine, args: argparse.Namespace) -> int:
    data = parse_json(args.input, "--input") if args.input is not None else {}
    handle = await engine.start(args.workflow, data, thread_id=args.thread, resource_id=args.resource,
                                started_by=args.by)
    return await settle_and_report(engine, handle, args)


async def cmd_runs(engine: Engine, args: argparse.Namespace) -> int:
    return show_runs(await engine.list_runs(status=args.status, workflow_id=args.workflow, limit=args.limit), args)


def quick_runs(settings: Settings, args: argparse.Namespace) -> int | None:
    """``runs`` without an engine: a one-shot listing of a SQLite file (see ``storage.run_listing``).

    None when it does not apply (``--status stranded`` asks which versions this process registers; PostgreSQL,
    a database that does not exist yet or needs migrating): the command then runs on an engine as before.
    """
    if args.status == "stranded":
        return None
    from storage.run_listing import list_runs_readonly

    runs = list_runs_readonly(settings.database_url, status=args.status, workflow_id=args.workflow, limit=args.limit)
    return None if runs is None else show_runs(runs, args)


def show_runs(runs: list[RunRecord], args: argparse.Namespace) -> int:
    if args.json:
        emit([r.model_dump(mode="json", exclude={"owner", "lease_expires_at"}) for r in runs])
    else:
        from .render_text import print_runs

        print_runs(runs)
    return EXIT_OK


async def cmd_show(engine: Engine, args: argparse.Namespace) -> int:
    details = await engine.details(args.run_id)
    contexts = None
    if args.context:
        contexts = await _agent_contexts(engine, args.run_id)
    if args.json:
        data = details.model_dump(mode="json")
        if contexts is not None:
            data["contexts"] = contexts
        emit(data)
    else:
        from .render_text import print_details

        print_details(details, contexts)
    return EXIT_OK


async def _agent_contexts(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    try:
        from storage.memory_store import MemoryStore
    except ImportError:  # pragma: no cover
        return []
    records = await MemoryStore(engine.db).agent_contexts(run_id)
    return [r.model_dump(mode="json") if hasattr(r, "model_dump") else dict(r) for r in records]


async def cmd_resume(engine: Engine, args: argparse.Namespace) -> int:
    data = parse_json(args.data, "--data") if args.data is not None else {}
    handle = await engine.resume(args.run_id, step=args.step, data=data, by=args.by)
    return await settle_and_report(engine, handle, args)


async def cmd_cancel(engine: Engine, args: argparse.Namespace) -> int:
    result = await engine.cancel(args.run_id, by=args.by)
    emit(result.to_json())
    return EXIT_OK


async def cmd_rerun(engine: Engine, args: argparse.Namespace) -> int:
    data = parse_json(args.input, "--input")
    handle = await engine.rerun(args.run_id, from_step=args.from_step, input=data, started_by=args.by)
    return await settle_and_report(engine, handle, args)


async def cmd_send_event(engine: Engine, args: argparse.Namespace) -> int:
    data = parse_json(args.data, "--data") if args.data is not None else {}  # (false, 0 or [] are data too)
    outcome = await engine.send_event(args.run_id, args.name, data)
    emit({"run_id": args.run_id, "event": args.name, "delivery": outcome})
    return EXIT_OK


async def cmd_recover(engine: Engine, args: argparse.Namespace) -> int:
    recovered = await engine.recover()
    if args.no_wait:  # handed back (queued) for the processes that execute runs; nothing executes here
        results = [(await engine.result_of(await engine.get_run(run_id))).to_json() for run_id in recovered]
        emit({"recovered": recovered, "results": results})
        return EXIT_OK
    here: Engine | None = getattr(args, "unserved_engine", None)
    if here is not None:  # the runs of versions no live process executes are executed here (closed by the caller)
        recovered = list(dict.fromkeys([*recovered, *await here.recover()]))
    results = await _wait_for_each(engine, recovered, args.wait)
    emit({"recovered": recovered, "results": results})
    unsettled = [r["run_id"] for r in results if r["status"] in ("running", "pending")]
    if unsettled:
        print(f"threadflow: stopped waiting after {args.wait:g} seconds; still running: {', '.join(unsettled)}. "
              "They go on in the processes that execute runs (threadflow serve or worker).", file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_OK


async def _wait_for_each(engine: Engine, run_ids: list[str], wait: float) -> list[dict[str, Any]]:
    """Each run's result once it settles, or as it stands after ``wait`` seconds in all."""
    deadline = time.monotonic() + wait
    results = []
    for run_id in run_ids:
        try:
            results.append((await engine.wait_for(run_id, max(0.001, deadline - time.monotonic()))).to_json())
        except TimeoutError:
            results.append((await engine.result_of(await engine.get_run(run_id))).to_json())
    return results


async def cmd_migrate(engine: Engine, args: argparse.Namespace) -> int:
    await engine.open()  # (this engine does not execute runs: opening it only migrates the database)
    print(f"Database is up to date ({engine.db.dialect}).")
    return EXIT_OK


ENGINE_COMMANDS: dict[str, Callable[[Engine, argparse.Namespace], Awaitable[int]]] = {
    "workflows": cmd_workflows,
    "run": cmd_run,
    "runs": cmd_runs,
    "show": cmd_show,
    "resume": cmd_resume,
    "cancel": cmd_cancel,
    "rerun": cmd_rerun,
    "send-event": cmd_send_event,
    "recover": cmd_recover,
    "migrate": cmd_migrate,
}

#: Commands that only read: their engine does not execute runs.
READ_ONLY = {"workflows", "runs", "show", "migrate", "cancel", "send-event"}


#: How long ``run``, ``resume`` and ``rerun`` wait for the run to settle by default (seconds).
DEFAULT_WAIT = 60.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0, or use --no-wait")
    return value


#: The most runs ``runs --limit`` lists (a database's LIMIT takes a 64-bit number; this is far below it).
MAX_LIMIT = 1_000_000_000


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of runs from 1 to {MAX_LIMIT}")
    return value


def add_wait_options(p: argparse.ArgumentParser) -> None:
    wait = p.add_mutually_exclusive_group()
    wait.add_argument("--wait", type=_seconds, default=DEFAULT_WAIT, metavar="SECONDS",
                      help=f"wait at most this long for the run to settle (default {DEFAULT_WAIT:g}); "
                      "then print where it stands and exit with status 1")
    wait.add_argument("--no-wait", action="store_true",
                      help="return at once; a process that executes runs (serve, worker) continues the run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadflow", description="Durable AI agent workflows, run from Slack.")
    parser.add_argument("--database-url", help="overrides THREADFLOW_DATABASE_URL")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("workflows", help="list workflows: input schema, versions, and how many runs each version has open")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="run a workflow and print its result as JSON")
    p.add_argument("workflow")
    p.add_argument("--input", help="the workflow input as JSON, e.g. '{\"name\": \"Ada\"}'")
    p.add_argument("--thread", help="memory thread id for agent steps")
    p.add_argument("--resource", help="resource id the thread belongs to")
    p.add_argument("--by", default="cli", help="who started it (recorded)")
    add_wait_options(p)

    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--status", choices=["pending", "running", "waiting", "suspended", "success", "failed", "canceled",
                                        "stranded"],
                   help="stranded: unfinished runs whose workflow version no running process (nor this one) has")
    p.add_argument("--workflow")
    p.add_argument("--limit", type=_limit, default=50, help=f"at most this many runs, newest first (1 to {MAX_LIMIT})")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("show", help="show a run: steps, outputs, events, who resumed")
    p.add_argument("run_id")
    p.add_argument("--context", action="store_true", help="also print what each agent step was given")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("resume", help="resume a suspended run")
    p.add_argument("run_id")
    p.add_argument("--step", help="step id or path (needed when several steps wait)")
    p.add_argument("--data", help="resume data as JSON, e.g. '{\"approved\": true}'")
    p.add_argument("--by", default="cli", help="who resumes it (recorded)")
    add_wait_options(p)

    p = sub.add_parser("cancel", help="cancel a run")
    p.add_argument("run_id")
    p.add_argument("--by", default="cli")

    p = sub.add_parser("rerun", help="re-run a run from a step on the newest version, reusing earlier results "
                       "(a stranded run is moved: the old one is canceled)")
    p.add_argument("run_id")
    p.add_argument("--from", dest="from_step", required=True, help="step id or path to re-run from")
    p.add_argument("--input", help="new input for that step, as JSON")
    p.add_argument("--by", default="cli")
    add_wait_options(p)

    p = sub.add_parser("send-event", help="send an event a run waits for")
    p.add_argument("run_id")
    p.add_argument("name")
    p.add_argument("--data", help="event data as JSON")

    p = sub.add_parser("recover", help="continue runs whose process died, and wait for them (a running serve or "
                       "worker executes them if there is one)")
    add_wait_options(p)
    sub.add_parser("migrate", help="create or upgrade the database schema")

    from .commands_server import add_server_commands

    add_server_commands(sub)
    from .commands_ops import add_ops_commands

    add_ops_commands(sub)
    return parser


async def _run_engine_command(settings: Settings, args: argparse.Namespace) -> int:
    from .runtime import build_engine

    # --no-wait: leave the run to the processes that execute runs (this one would hand it back on exit).
    engine = build_engine(settings, execute=args.command not in READ_ONLY and not getattr(args, "no_wait", False))
    try:
        if engine.execute_runs and await _executed_elsewhere(engine, args):
            # A running serve or worker executes this version: the run is queued for it and this command only
            # waits. Executing it here too would race that process's dispatcher, and a step still running when
            # this command stops waiting would be handed back half done and run again.
            engine.execute_runs = False  # (before the engine opens: its dispatcher is never started)
            if args.command == "recover":
                # Runs of versions no live process executes (its process died after a deploy) are executed here,
                # by an engine that has only those versions: it never takes a run a live process would.
                unserved = [wf for wf in engine.registry if not await engine.live_executors(fingerprint=wf.fingerprint)]
                args.unserved_engine = build_engine(settings, workflows=unserved) if unserved else None
        return await ENGINE_COMMANDS[args.command](engine, args)
    finally:
        await engine.close()
        if getattr(args, "unserved_engine", None) is not None:
            await args.unserved_engine.close()


async def _executed_elsewhere(engine: Engine, args: argparse.Namespace) -> bool:
    """Whether a live process (``served_versions``, refreshed with its heartbeat) executes what this command would."""
    if args.command == "run":
        return bool(await engine.live_executors(fingerprint=engine.get_workflow(args.workflow).fingerprint))
    if args.command == "recover":
        return bool(await engine.live_executors())
    await engine.db.open()
    run = await engine.store.get_run(args.run_id)
    if run is None:
        return False  # the command itself says the run does not exist
    if args.command == "rerun":  # the new run takes the newest version
        newest = engine.workflows.get(run.workflow_id)
        return newest is not None and bool(await engine.live_executors(fingerprint=newest.fingerprint))
    if run.workflow_fingerprint is None:  # recorded before versions were: any version of its workflow id
        return bool(await engine.live_executors(workflow_id=run.workflow_id))
    return bool(await engine.live_executors(fingerprint=run.workflow_fingerprint))


#: Commands that can answer without an engine (and without asyncio's event loop, the ORM or a driver): the
#: function returns the exit status, or None when it cannot and the command runs on an engine as usual.
QUICK_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int | None]] = {"runs": quick_runs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Imported once the command is known (``--help`` and bad arguments exit above without them).
    from storage.errors import StorageError
    from workflows.errors import DefinitionError, InvalidInput, ThreadflowError, UsageError

    from .inspector.config import InspectorError
    from .settings import SettingsError, load_settings

    _never_fail_on_unencodable_text()
    restore_sigterm = _stop_on_sigterm_as_on_ctrl_c()
    try:
        overrides = {"database_url": args.database_url} if args.database_url else {}
        settings = load_settings(**overrides)
        quick = QUICK_COMMANDS.get(args.command)
        code = quick(settings, args) if quick is not None else None
        if code is None and args.command in ENGINE_COMMANDS:
            import asyncio

            code = asyncio.run(_run_engine_command(settings, args))
        elif code is None:
            code = args.handler(settings, args)
        sys.stdout.flush()  # here, so a reader that went away is noticed below, not at exit
    except (CLIError, SettingsError, UsageError, InvalidInput, DefinitionError, InspectorError, StorageError) as exc:
        # StorageError: a malformed THREADFLOW_DATABASE_URL, or a database that cannot be reached or written.
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except ThreadflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_RUN_FAILED
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        if not _reader_gone():
            raise  # another pipe or socket broke: that is a real error
        # The reader stopped reading (``threadflow runs | head``): stop quietly, as a Unix tool killed by
        # SIGPIPE would (status 128 + 13), and send what is still buffered nowhere, so exit does not fail on it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    finally:
        restore_sigterm()
    return code


def _never_fail_on_unencodable_text() -> None:
    """Print what standard output's encoding cannot encode (a lone surrogate in a run's input: text cut in the
    middle of an emoji) as a backslash escape, as standard error does, instead of dying with UnicodeEncodeError.
    (``emit`` prints JSON's own escapes before it comes to that.)"""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")


def _stop_on_sigterm_as_on_ctrl_c() -> Callable[[], None]:
    """Make SIGTERM (what ``kill``, ``timeout``, systemd and CI runners send) stop the command as Ctrl-C does;
    returns what puts the previous handler back.

    A command that executes runs (``run``, ``resume``, ``rerun``, ``recover``) then hands them back as it stops
    (pending, no owner), where the default SIGTERM killed it at once and left them ``running`` under a dead
    owner until a recovery counted a crash against them. The handler calls the current SIGINT handler (asyncio's
    while the command runs: it cancels the command, the engine closes, then KeyboardInterrupt): exactly Ctrl-C,
    including a second signal interrupting a step that holds the event loop (see ``workflows.interrupts``).
    ``serve``, ``worker``, ``dev`` and ``ui`` put their own handler in place once started (``wait_for_stop_signal``).
    """
    import signal
    import threading

    from workflows import interrupts

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        ctrl_c = signal.getsignal(signal.SIGINT)
        if callable(ctrl_c):
            ctrl_c(signal.SIGINT, frame)
            return
        interrupts.note(signal.SIGINT)  # SIGINT is ignored (a script's background job): stop as Ctrl-C would
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if previous is not None:  # (None: a handler not installed from Python, which cannot be put back)
            signal.signal(signal.SIGTERM, previous)

    return restore


def _reader_gone() -> bool:
    """Whether standard output is a pipe whose reading end is closed (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() here (Windows), or stdout is not a file
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
