"""Finding workflows: the built-in examples plus the modules named in ``THREADFLOW_WORKFLOWS``."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable

from .errors import DefinitionError
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
