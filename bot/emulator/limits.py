"""Slack's documented limits on what one message may carry, enforced by the emulator as Slack does.

Real Slack refuses ``chat.postMessage`` / ``chat.update`` / ``chat.postEphemeral`` with ``msg_too_long`` (the
``text`` over 40,000 characters) or ``invalid_blocks`` (a block over its limit; the reasons are listed in
``response_metadata.messages``). An emulator taking anything would let a bot pass here and lose its messages
in a real workspace.

Sources: https://api.slack.com/reference/block-kit/blocks (section text 3,000, fields 10 of 2,000; header 150;
context 10 elements; actions 25 elements; block_id 255; 50 blocks a message; markdown blocks 12,000 in all),
https://api.slack.com/reference/block-kit/block-elements#button (text 75, value 2,000, action_id 255) and
https://api.slack.com/methods/chat.postMessage (text 40,000).
"""

from __future__ import annotations

from typing import Any

TEXT_LIMIT = 40_000
MAX_BLOCKS = 50
SECTION_TEXT = 3000
SECTION_FIELD = 2000
MAX_FIELDS = 10
HEADER_TEXT = 150
CONTEXT_ELEMENTS = 10
ACTIONS_ELEMENTS = 25
BUTTON_TEXT = 75
BUTTON_VALUE = 2000
ID_LIMIT = 255
MARKDOWN_TOTAL = 12_000


def text_too_long(text: Any) -> bool:
    return isinstance(text, str) and len(text) > TEXT_LIMIT


def block_problems(blocks: Any) -> list[str]:
    """Why Slack would refuse these blocks with ``invalid_blocks`` (empty: it takes them)."""
    if not isinstance(blocks, list):
        return []
    found = [f"must provide no more than {MAX_BLOCKS} items [json-pointer:/blocks]"] if len(blocks) > MAX_BLOCKS else []
    markdown = 0
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            continue
        where = f"[json-pointer:/blocks/{i}"
        if len(str(block.get("block_id") or "")) > ID_LIMIT:
            found.append(f"must be less than {ID_LIMIT + 1} characters {where}/block_id]")
        kind = block.get("type")
        if kind == "markdown":
            markdown += len(str(block.get("text") or ""))
        else:
            found += _CHECKS.get(str(kind), _nothing)(block, where)
    if markdown > MARKDOWN_TOTAL:
        found.append(f"markdown blocks must hold no more than {MARKDOWN_TOTAL} characters in all [json-pointer:/blocks]")
    return found


def _text_of(obj: Any) -> str:
    return str(obj.get("text") or "") if isinstance(obj, dict) else str(obj or "")


def _nothing(block: dict[str, Any], where: str) -> list[str]:
    return []


def _section(block: dict[str, Any], where: str) -> list[str]:
    found = []
    if len(_text_of(block.get("text"))) > SECTION_TEXT:
        found.append(f"must be less than {SECTION_TEXT + 1} characters {where}/text]")
    fields = block.get("fields") or []
    if len(fields) > MAX_FIELDS:
        found.append(f"must provide no more than {MAX_FIELDS} items {where}/fields]")
    found += [f"must be less than {SECTION_FIELD + 1} characters {where}/fields/{j}]"
              for j, f in enumerate(fields) if len(_text_of(f)) > SECTION_FIELD]
    return found


def _header(block: dict[str, Any], where: str) -> list[str]:
    too_long = len(_text_of(block.get("text"))) > HEADER_TEXT
    return [f"must be less than {HEADER_TEXT + 1} characters {where}/text]"] if too_long else []


def _context(block: dict[str, Any], where: str) -> list[str]:
    elements = block.get("elements") or []
    found = [f"must provide no more than {CONTEXT_ELEMENTS} items {where}/elements]"] \
        if len(elements) > CONTEXT_ELEMENTS else []
    found += [f"must be less than {SECTION_TEXT + 1} characters {where}/elements/{j}/text]"
              for j, e in enumerate(elements) if isinstance(e, dict) and len(_text_of(e)) > SECTION_TEXT]
    return found


def _actions(block: dict[str, Any], where: str) -> list[str]:
    elements = block.get("elements") or []
    found = [f"must provide no more than {ACTIONS_ELEMENTS} items {where}/elements]"] \
        if len(elements) > ACTIONS_ELEMENTS else []
    for j, e in enumerate(elements):
        if not isinstance(e, dict):
            continue
        at = f"{where}/elements/{j}"
        if len(str(e.get("value") or "")) > BUTTON_VALUE:
            found.append(f"must be less than {BUTTON_VALUE + 1} characters {at}/value]")
        if len(str(e.get("action_id") or "")) > ID_LIMIT:
            found.append(f"must be less than {ID_LIMIT + 1} characters {at}/action_id]")
        if e.get("type") == "button" and len(_text_of(e.get("text"))) > BUTTON_TEXT:
            found.append(f"must be less than {BUTTON_TEXT + 1} characters {at}/text]")
    return found


_CHECKS = {"section": _section, "header": _header, "context": _context, "actions": _actions}
