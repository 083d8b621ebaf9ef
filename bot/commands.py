"""Parsing ``/flow ...`` text into a typed command, and a workflow's input from what a person typed.

Pure functions, no I/O: the slash command handler parses and validates before it acks, so a bad
command gets its error in the ack itself and nothing is started.
"""

from __future__ import annotations

import json
import shlex
from typing import Any, Literal

from pydantic import BaseModel

from workflows import CommittedWorkflow
from workflows.errors import InvalidInput, UsageError

Verb = Literal["help", "workflows", "run", "runs", "status", "cancel", "schedule", "schedules", "unschedule"]
VERBS: tuple[str, ...] = ("help", "workflows", "run", "runs", "status", "cancel", "schedule", "schedules", "unschedule")


class Command(BaseModel):
    verb: Verb
    args: str = ""


class CommandError(UsageError):
    """The command text could not be understood; the message includes the usage."""


def usage(command: str = "/flow") -> str:
    return "\n".join([
        f"*Usage of `{command}`*",
        f"• `{command} help`: this help",
        f"• `{command} workflows`: list the workflows you can run",
        f"• `{command} run WORKFLOW [input]`: start a run; input as JSON, `key=value` pairs, or plain text",
        f"• `{command} runs`: recent runs",
        f"• `{command} status RUN_ID`: where a run stands",
        f"• `{command} cancel RUN_ID`: cancel a run",
        f"• `{command} schedule WORKFLOW \"CRON\" [tz=Area/City] [input]`: run on a schedule in this channel",
        f"• `{command} schedules`: list this channel's schedules; `{command} unschedule ID` removes one",
    ])


def parse_command(text: str, command: str = "/flow") -> Command:
    stripped = (text or "").strip()
    if not stripped:
        return Command(verb="help")
    verb, _, rest = stripped.partition(" ")
    verb = verb.lower()
    if verb not in VERBS:
        raise CommandError(f"Unknown subcommand `{verb}`.\n{usage(command)}")
    args = rest.strip()
    if verb in ("run", "status", "cancel", "unschedule") and not args:
        what = "a workflow id" if verb == "run" else "a run id" if verb != "unschedule" else "a schedule id"
        raise CommandError(f"`{command} {verb}` needs {what}.\n{usage(command)}")
    return Command(verb=verb, args=args)  # type: ignore[arg-type]


def split_run_args(args: str) -> tuple[str, str]:
    workflow_id, _, rest = args.strip().partition(" ")
    return workflow_id, rest.strip()


def text_field(model: type[BaseModel] | None) -> str | None:
    """The one string field free text maps to: the only field, or the only required string field."""
    if model is None:
        return None
    fields = model.model_fields
    strings = string_fields(model)
    if len(fields) == 1 and strings:
        return strings[0]
    required = [n for n in strings if fields[n].is_required()]
    if len(required) == 1:
        return required[0]
    return strings[0] if len(strings) == 1 else None


def string_fields(model: type[BaseModel] | None) -> list[str]:
    """Fields that take text as typed: ``name=42`` must stay ``"42"`` there, not become a number."""
    if model is None:
        return []
    return [n for n, f in model.model_fields.items() if f.annotation in (str, str | None)]


def parse_run_input(wf: CommittedWorkflow, raw: str) -> Any:
    """JSON, ``key=value`` pairs, or free text for the workflow's single text field; validated."""
    raw = raw.strip()
    if not raw:
        data: Any = {}
    elif raw.startswith("{"):
        try:
            data = json.loads(raw)
        except RecursionError:
            raise InvalidInput(f"input of workflow {wf.id!r}", "the JSON is nested too deeply") from None
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"input of workflow {wf.id!r}", f"the JSON is malformed ({exc.msg} at column {exc.colno})") from None
    elif _looks_like_pairs(raw):
        data = _parse_pairs(raw, string_fields(wf.input))
    else:
        field = text_field(wf.input)
        if field is None:
            raise InvalidInput(
                f"input of workflow {wf.id!r}",
                "it has no single text field for plain text; give JSON or key=value pairs",
            )
        data = {field: _unquote(raw)}
    return wf.parse_input(data)


def _looks_like_pairs(raw: str) -> bool:
    try:
        parts = shlex.split(raw)
    except ValueError:
        return False
    return bool(parts) and all("=" in p and p.split("=", 1)[0].isidentifier() for p in parts)


def _parse_pairs(raw: str, text_fields: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON (numbers, booleans, lists) except for text fields."""
    out: dict[str, Any] = {}
    for part in shlex.split(raw):
        key, _, value = part.partition("=")
        if key in text_fields:
            out[key] = value
            continue
        try:
            out[key] = json.loads(value)
        except RecursionError:
            raise InvalidInput("input", f"the value of {key!r} is nested too deeply") from None
        except json.JSONDecodeError:
            out[key] = value
    return out


def _unquote(raw: str) -> str:
    for q in ('"', "'", "“"):
        close = "”" if q == "“" else q
        if len(raw) >= 2 and raw.startswith(q) and raw.endswith(close):
            return raw[1:-1]
    return raw
