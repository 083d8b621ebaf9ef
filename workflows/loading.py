"""Finding workflows: the built-in examples plus the modules named in ``THREADFLOW_WORKFLOWS``."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Iterable

from .errors import DefinitionError, ThreadflowError
from .workflow import CommittedWorkflow


def load_workflows(modules: Iterable[str] | str | None = None, *, builtins: bool = True) -> list[CommittedWorkflow]:
    """Import each ``module`` or ``module:attribute`` and collect its committed workflows.

    A module contributes every module-level :class:`CommittedWorkflow` (or the list in its ``WORKFLOWS``).
    Several definitions of one id are kept, in order, as versions of it (``deploy_app_v1`` beside
    ``deploy_app``; see ``workflows/versions.py``); the same definition found twice counts once. A module's
    definition of a built-in example's id replaces the built-in.
    """
    if modules is None:
        modules = os.environ.get("THREADFLOW_WORKFLOWS", "")
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",") if m.strip()]
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: dict[tuple[str, str], CommittedWorkflow] = {}
    for spec in modules:
        for wf in _load_one(spec):
            found.setdefault((wf.id, wf.fingerprint), wf)
    builtin: list[CommittedWorkflow] = []
    if builtins:
        from .examples import builtin_workflows

        ids = {wid for wid, _ in found}
        builtin = [wf for wf in builtin_workflows() if wf.id not in ids]
    return builtin + list(found.values())


def _load_one(spec: str) -> list[CommittedWorkflow]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DefinitionError(
            f"Could not import workflow module {module_name!r} (from THREADFLOW_WORKFLOWS): {exc}. "
            "Check the name and that it is importable from the current directory."
        ) from exc
    except ThreadflowError:  # a definition the module commits is wrong: that error names it already
        raise
    except Exception as exc:  # a SyntaxError in it, or code that raises at import (a setting it reads is missing)
        raise DefinitionError(
            f"Workflow module {module_name!r} (from THREADFLOW_WORKFLOWS) failed to import: {type(exc).__name__}: "
            f"{_described(exc)}. Fix the module, or take it out of THREADFLOW_WORKFLOWS."
        ) from exc
    if attr:
        value = getattr(module, attr, None)
        if value is None:
            raise DefinitionError(f"Module {module_name!r} has no attribute {attr!r}.")
        values = value if isinstance(value, list | tuple) else [value]
    elif hasattr(module, "WORKFLOWS"):
        values = list(module.WORKFLOWS)
    else:
        values = [v for v in vars(module).values() if isinstance(v, CommittedWorkflow)]
    workflows = [v for v in values if isinstance(v, CommittedWorkflow)]
    if not workflows:
        raise DefinitionError(
            f"Module {spec!r} defines no committed workflows; call .commit() on your Workflow at module level."
        )
    return workflows


def _described(exc: Exception) -> str:
    """The error's message and where it was raised: a SyntaxError names its file and line itself, any other
    error the innermost frame of its traceback (the line in the module, or in what it called)."""
    if isinstance(exc, SyntaxError):
        return str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{exc}{where}"
