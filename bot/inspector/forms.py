"""Forms generated from a workflow's input schema (JSON Schema from its pydantic model), and back.

Simple fields get inputs of their type (text, number, checkbox, a select for enums, one line per item for
lists of strings); anything else (nested objects, lists of objects) gets a JSON text area. The parsed
form is validated by the engine itself (``engine.start``), so its errors name the field like the CLI's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel

FieldKind = Literal["text", "textarea", "number", "integer", "checkbox", "select", "lines", "json"]


class FormError(Exception):
    """A form value could not be read; the message names the field."""


class FormField(BaseModel):
    name: str
    label: str
    kind: FieldKind
    required: bool = False
    value: str = ""
    checked: bool = False
    options: list[str] = []
    description: str | None = None


def form_fields(schema: Mapping[str, Any] | None) -> list[FormField]:
    if not schema:
        return []
    required = set(schema.get("required") or [])
    fields = []
    for name, prop in (schema.get("properties") or {}).items():
        prop = _plain(prop)
        kind = _kind(prop)
        default = prop.get("default")
        fields.append(FormField(
            name=name, label=str(prop.get("title") or name), kind=kind, required=name in required,
            value=_as_text(kind, default), checked=bool(default) if kind == "checkbox" else False,
            options=[str(o) for o in prop.get("enum") or []], description=prop.get("description"),
        ))
    return fields


def parse_form(schema: Mapping[str, Any] | None, form: Mapping[str, str]) -> dict[str, Any]:
    """The form's values as the workflow's input; empty optional fields are left out (defaults apply)."""
    data: dict[str, Any] = {}
    for field in form_fields(schema):
        raw = form.get(field.name)
        if field.kind == "checkbox":
            data[field.name] = raw is not None and raw not in ("", "false", "off", "0")
            continue
        if raw is None or raw.strip() == "":
            continue
        data[field.name] = _parse(field, raw)
    return data


def parse_json_object(text: str | None, what: str) -> Any:
    """A JSON value typed into a text area (empty: None)."""
    if text is None or not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).") from None


def _plain(prop: Mapping[str, Any]) -> Mapping[str, Any]:
    """``Optional[X]`` (anyOf X | null) as X, keeping the outer title, default and description."""
    options = prop.get("anyOf")
    if isinstance(options, list):
        real = [o for o in options if o.get("type") != "null"]
        if len(real) == 1:
            return {**real[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
    return prop


def _kind(prop: Mapping[str, Any]) -> FieldKind:
    if prop.get("enum"):
        return "select"
    kind = prop.get("type")
    if kind == "string":
        return "textarea" if (prop.get("maxLength") or 0) > 200 or prop.get("format") == "textarea" else "text"
    if kind == "integer":
        return "integer"
    if kind == "number":
        return "number"
    if kind == "boolean":
        return "checkbox"
    if kind == "array" and (prop.get("items") or {}).get("type") == "string":
        return "lines"
    return "json"


def _as_text(kind: FieldKind, value: Any) -> str:
    if value is None:
        return ""
    if kind == "lines" and isinstance(value, list):
        return "\n".join(str(v) for v in value)
    if kind == "json":
        return json.dumps(value, indent=2)
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if kind == "integer" else f"{value:g}"
    return str(value)


def _parse(field: FormField, raw: str) -> Any:
    if field.kind == "integer":
        try:
            return int(raw.strip())
        except ValueError:
            raise FormError(f"{field.label} must be a whole number, not {raw!r}.") from None
    if field.kind == "number":
        try:
            return float(raw.strip())
        except ValueError:
            raise FormError(f"{field.label} must be a number, not {raw!r}.") from None
    if field.kind == "lines":
        return [line.strip() for line in raw.splitlines() if line.strip()]
    if field.kind == "json":
        return parse_json_object(raw, field.label)
    return raw
