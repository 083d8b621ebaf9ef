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


#: Bounds on what a slash command may carry: Slack must get an answer within 3 seconds, whatever was typed.
MAX_TEXT = 8_000
MAX_DEPTH = 32
MAX_INT_DIGITS = 64


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
    if len(text or "") > MAX_TEXT:
        raise CommandError(f"That command is {len(text):,} characters long; `{command}` takes at most {MAX_TEXT:,}.")
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
    return Command(verb=verb, args=args)


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
        data = loads_bounded(raw, f"input of workflow {wf.id!r}")
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
            out[key] = loads_bounded(value, f"input field {key!r}")
        except _NotJson:
            out[key] = value
    return out


class _NotJson(ValueError):
    """The text is not JSON at all (a plain value of a ``key=value`` pair)."""


def loads_bounded(raw: str, where: str) -> Any:
    """``json.loads`` with bounds on nesting and on the length of integers, checked before parsing, so no
    input can make the parser spin past Slack's deadline or fail with something other than a clear error."""
    depth = 0
    in_string = escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise InvalidInput(where, f"the JSON is nested more than {MAX_DEPTH} levels deep")
        elif ch in "]}":
            depth -= 1

    def bounded_int(text: str) -> int:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            raise InvalidInput(where, f"a number has more than {MAX_INT_DIGITS} digits")
        return int(text)

    try:
        return json.loads(raw, parse_int=bounded_int)
    except json.JSONDecodeError as exc:
        if raw.lstrip()[:1] not in ("{", "["):
            raise _NotJson(raw) from None
        raise InvalidInput(where, f"the JSON is malformed ({exc.msg} at column {exc.colno})") from None
    except (RecursionError, ValueError) as exc:
        if isinstance(exc, InvalidInput):
            raise
        raise InvalidInput(where, "the JSON could not be read (too large or too deep)") from None


def _unquote(raw: str) -> str:
    for q in ('"', "'", "“"):
        close = "”" if q == "“" else q
        if len(raw) >= 2 and raw.startswith(q) and raw.endswith(close):
            return raw[1:-1]
    return raw
