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

import hashlib
import json
import re
from collections.abc import Iterator
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


@cache
def schema_shape(model: type[BaseModel] | None) -> str | None:
    """A short digest of what ``model`` accepts: its JSON schema without titles, descriptions and examples."""
    if model is None:
        return None
    try:
        schema: Any = _without_prose(model.model_json_schema())
    except Exception:  # a type JSON schema cannot express (arbitrary types): the field names and types instead
        schema = [[name, repr(f.annotation), f.is_required()] for name, f in model.model_fields.items()]
    return _digest(schema)


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

    def add(self, wf: CommittedWorkflow) -> None:
        """Register ``wf`` beside the other versions of its id (the same fingerprint replaces: new step code)."""
        versions = self._versions.setdefault(wf.id, [])
        same = next((i for i, old in enumerate(versions) if old.fingerprint == wf.fingerprint), None)
        if same is not None:
            versions[same] = wf
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
        if all(v.version is not None for v in versions):
            self._newest[wf.id] = max(versions, key=lambda v: version_key(v.version or ""))
        else:
            self._newest[wf.id] = versions[-1]

    def newest(self) -> dict[str, CommittedWorkflow]:
        return dict(self._newest)

    def get(self, workflow_id: str) -> CommittedWorkflow | None:
        return self._newest.get(workflow_id)

    def for_run(self, run: RunRecord) -> CommittedWorkflow | None:
        """The definition that may execute ``run``: its own version (the newest of its id for older runs)."""
        if run.workflow_fingerprint is None:
            return self._newest.get(run.workflow_id)
        return self._by_fingerprint.get(run.workflow_fingerprint)

    def fingerprints(self) -> tuple[str, ...]:
        return tuple(self._by_fingerprint)

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
