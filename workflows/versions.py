"""Workflow versions: what pins a run to its definition, and which definitions a process has.

A committed workflow has an optional explicit ``version`` (``Workflow(id=..., version="2")``) and always a
**fingerprint**: a hash of its id, that version and its committed tree (node kinds, ids, nesting and the
shape of every schema; see ``Node.shape``). Step code is not part of it: a fix inside a step is the same
version, and runs that are under way pick it up. A run records both at start and is only ever executed by
a definition with the same fingerprint; a different tree would reinterpret its recorded paths.

Several definitions of one id may be registered at once (``deploy_app_v1`` kept next to ``deploy_app``
until its runs drain). New runs take the newest: the highest explicit version when every registered
definition of the id has one (compared part by part, numbers as numbers: ``"10"`` > ``"9"``, ``"2.1"`` >
``"2"``), otherwise the one registered last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .errors import DefinitionError

if TYPE_CHECKING:
    from storage.records import RunRecord

    from .workflow import CommittedWorkflow

#: Hex digits of a fingerprint (64 bits: collisions between the definitions of one database are not a concern).
FINGERPRINT_LENGTH = 16
#: Hex digits shown to people.
SHORT = 8

#: JSON-schema keywords that describe a schema to people and do not change what validates.
_PROSE = frozenset({"title", "description", "examples"})
#: Keywords whose value maps names to schemas (the names count, the prose inside each schema does not).
_NAMED_SCHEMAS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


#: Set while :func:`legacy_fingerprint` computes a fingerprint the way threadflow did before nested models were
#: named by their place in the schema (their class names counted then).
_LEGACY_SHAPES: ContextVar[bool] = ContextVar("threadflow_legacy_shapes", default=False)


def schema_shape(model: type[BaseModel] | None) -> str | None:
    """A short digest of what ``model`` accepts: its JSON schema without titles, descriptions and examples.

    Nested models are named by where they are first referenced, not by their class names (pydantic names them
    in ``$defs`` and ``$ref`` by class): renaming a model class, nested or not, is not a change of shape."""
    return _schema_shape(model, _LEGACY_SHAPES.get())


@cache
def _schema_shape(model: type[BaseModel] | None, legacy: bool) -> str | None:
    if model is None:
        return None
    try:
        schema: Any = model.model_json_schema()
        schema = _without_prose(schema if legacy else _defs_by_place(schema))
    except Exception:  # a type JSON schema cannot express (arbitrary types): the field names and types instead
        schema = [[name, repr(f.annotation), f.is_required()] for name, f in model.model_fields.items()]
    return _digest(schema)


def legacy_fingerprint(wf: CommittedWorkflow) -> str:
    """``wf``'s fingerprint as threadflow computed it before nested models were named by place (their class
    names were part of it). Runs recorded then carry it; the registry still matches them (see :class:`Registry`).
    """
    token = _LEGACY_SHAPES.set(True)
    try:
        return dataclasses.replace(wf).fingerprint  # a copy: the fingerprint is cached on the workflow
    finally:
        _LEGACY_SHAPES.reset(token)


def fingerprint_of(workflow_id: str, version: str | None, shape: list[Any]) -> str:
    return _digest([workflow_id, version, shape])[:FINGERPRINT_LENGTH]


def describe_version(version: str | None, fingerprint: str | None) -> str:
    """How a version is named to people: ``2 (3f9a1c2b)``, or the fingerprint alone when it has no number."""
    if fingerprint is None:
        return "(from before versions were recorded)"
    short = fingerprint[:SHORT]
    return f"{version} ({short})" if version else short


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for explicit versions: ``"2.10"`` after ``"2.9"``; numbers before words in the same place."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.findall(r"\d+|[^\d.\-_+]+", version))


def check_version(workflow_id: str, version: Any) -> str | None:
    if version is None:
        return None
    if not isinstance(version, str) or not version.strip() or len(version) > 100:
        raise DefinitionError(
            f"Workflow {workflow_id!r}: version must be a non-empty string of at most 100 characters, "
            f'e.g. version="2", not {version!r}.'
        )
    return version.strip()


def _without_prose(schema: Any, names: bool = False) -> Any:
    if isinstance(schema, dict):
        if names:
            return {k: _without_prose(v) for k, v in schema.items()}
        return {k: _without_prose(v, k in _NAMED_SCHEMAS) for k, v in schema.items() if k not in _PROSE}
    if isinstance(schema, list):
        return [_without_prose(v) for v in schema]
    return schema


#: Where pydantic keeps the schemas of nested models (a ``$ref`` names one: ``#/$defs/Item``).
_DEFS_KEYS = ("$defs", "definitions")


def _defs_by_place(schema: Any) -> Any:
    """``schema`` with its nested models renamed ``0``, ``1``, ... in the order a walk of the schema meets them
    (keys in sorted order: field names, never class names), so two schemas that differ only in class names match.
    """
    if not isinstance(schema, dict) or not any(isinstance(schema.get(k), dict) for k in _DEFS_KEYS):
        return schema
    defs: dict[str, Any] = {}
    for key in _DEFS_KEYS:
        if isinstance(schema.get(key), dict):
            defs.update({f"#/{key}/{name}": body for name, body in schema[key].items()})
    names: dict[str, str] = {}

    def refs_in(value: dict[str, Any], key: str) -> list[str] | None:
        """The references ``value[key]`` holds: a ``$ref``'s, or a discriminator's ``mapping`` (tag -> ref)."""
        found = value[key]
        if key == "$ref" and isinstance(found, str):
            return [found]
        if key == "mapping" and "propertyName" in value and isinstance(found, dict):
            return [found[tag] for tag in sorted(found) if isinstance(found[tag], str)]
        return None

    def meet(value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                refs = refs_in(value, key)
                if refs is None:
                    if not (value is schema and key in _DEFS_KEYS):
                        meet(value[key])
                    continue
                for ref in refs:
                    if ref in defs and ref not in names:
                        names[ref] = str(len(names))
                        meet(defs[ref])
        elif isinstance(value, list):
            for item in value:
                meet(item)

    def renamed(value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if value is schema and key in _DEFS_KEYS:
                    continue
                if refs_in(value, key) is None:
                    out[key] = renamed(item)
                elif isinstance(item, str):
                    out[key] = place(item)
                else:
                    out[key] = {tag: place(ref) if isinstance(ref, str) else ref for tag, ref in item.items()}
            return out
        if isinstance(value, list):
            return [renamed(item) for item in value]
        return value

    def place(ref: str) -> str:
        return f"#/$defs/{names[ref]}" if ref in names else ref

    meet(schema)
    out = renamed(schema)
    out["$defs"] = {names[ref]: renamed(defs[ref]) for ref in names}
    return out


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class VersionInfo:
    """One registered definition as listed to people (``threadflow workflows``, error messages)."""

    workflow_id: str
    version: str | None
    fingerprint: str
    newest: bool

    def describe(self) -> str:
        return describe_version(self.version, self.fingerprint)


class VersionStatus(BaseModel):
    """One version of a workflow as ``threadflow workflows`` lists it: where it is registered, what is still on it."""

    workflow_id: str
    version: str | None = None
    #: None: runs started before versions were recorded (any definition of the id continues them).
    fingerprint: str | None = None
    newest: bool = False
    registered: bool = False
    served_by: list[str] = []
    open_runs: int = 0

    def describe(self) -> str:
        return describe_version(self.version, self.fingerprint)


class Registry:
    """The definitions one engine has: every version of every id, and the newest of each id."""

    def __init__(self) -> None:
        self._versions: dict[str, list[CommittedWorkflow]] = {}
        self._by_fingerprint: dict[str, CommittedWorkflow] = {}
        self._newest: dict[str, CommittedWorkflow] = {}
        #: Definitions by the fingerprint threadflow gave them before nested models were named by place, where it
        #: differs (a workflow with nested models): runs recorded then carry that one (see ``legacy_fingerprint``).
        self._legacy: dict[str, CommittedWorkflow] = {}

    def add(self, wf: CommittedWorkflow) -> None:
        """Register ``wf`` beside the other versions of its id (the same fingerprint replaces: new step code)."""
        versions = self._versions.setdefault(wf.id, [])
        same = next((i for i, old in enumerate(versions) if old.fingerprint == wf.fingerprint), None)
        if same is not None:
            replaced, versions[same] = versions[same], wf
            self._legacy = {fp: wf if old is replaced else old for fp, old in self._legacy.items()}
        else:
            clash = next((old for old in versions if wf.version is not None and old.version == wf.version), None)
            if clash is not None:
                raise DefinitionError(
                    f"Workflow {wf.id!r} version {wf.version!r} is registered twice with different steps "
                    f"({clash.fingerprint[:SHORT]} and {wf.fingerprint[:SHORT]}). Give the changed definition a "
                    "new version, e.g. version=\"" + _next_version(wf.version) + "\", and keep the old one registered "
                    "until its runs finish."
                )
            versions.append(wf)
        self._by_fingerprint[wf.fingerprint] = wf
        legacy = legacy_fingerprint(wf)
        if legacy != wf.fingerprint:
            self._legacy.setdefault(legacy, wf)
        if all(v.version is not None for v in versions):
            self._newest[wf.id] = max(versions, key=lambda v: version_key(v.version or ""))
        else:
            self._newest[wf.id] = versions[-1]

    def newest(self) -> dict[str, CommittedWorkflow]:
        return dict(self._newest)

    def get(self, workflow_id: str) -> CommittedWorkflow | None:
        return self._newest.get(workflow_id)

    def by_fingerprint(self, fingerprint: str) -> CommittedWorkflow | None:
        """The definition registered with this fingerprint (one version of one id; or the fingerprint it had before
        nested models were named by place, which runs recorded then carry), if any."""
        return self._by_fingerprint.get(fingerprint) or self._legacy.get(fingerprint)

    def for_run(self, run: RunRecord) -> CommittedWorkflow | None:
        """The definition that may execute ``run``: its own version (the newest of its id for older runs)."""
        if run.workflow_fingerprint is None:
            return self._newest.get(run.workflow_id)
        return self.by_fingerprint(run.workflow_fingerprint)

    def fingerprints(self) -> tuple[str, ...]:
        """The fingerprints of the runs this registry's definitions execute (the earlier ones included)."""
        return (*self._by_fingerprint, *(fp for fp in self._legacy if fp not in self._by_fingerprint))

    def served(self) -> list[tuple[str, str | None, str]]:
        """``(workflow_id, version, fingerprint)`` of every run fingerprint executed here (what a process lists in
        ``served_versions``), the earlier fingerprints of definitions with nested models included."""
        legacy = [(fp, wf) for fp, wf in self._legacy.items() if fp not in self._by_fingerprint]
        return [(wf.id, wf.version, fp) for fp, wf in [*self._by_fingerprint.items(), *legacy]]

    def workflow_ids(self) -> tuple[str, ...]:
        return tuple(self._versions)

    def infos(self, workflow_id: str | None = None) -> list[VersionInfo]:
        """Registered versions (of one id, or all), newest first within an id."""
        out: list[VersionInfo] = []
        for wid in sorted(self._versions) if workflow_id is None else [workflow_id]:
            newest = self._newest.get(wid)
            for wf in sorted(self._versions.get(wid, []), key=lambda v: v is not newest):
                out.append(VersionInfo(wid, wf.version, wf.fingerprint, wf is newest))
        return out

    def __iter__(self) -> Iterator[CommittedWorkflow]:
        return iter(self._by_fingerprint.values())


def _next_version(version: str | None) -> str:
    digits = re.findall(r"\d+", version or "")
    return str(int(digits[-1]) + 1) if digits and digits[-1] == version else f"{version}.1"
