"""``workflows`` is the package users import: its ``__all__`` is its public API, pinned here.

Every error of ``workflows/errors.py`` (the tree a caller catches) is importable from ``workflows``, including
the run-time failures issue 14 names (``StepTimeout``, ``StepCrashed``, ``OutputUnstorable``).
"""

from __future__ import annotations

import inspect

import workflows
from workflows import errors

PUBLIC = {
    # engine, runs and workflows
    "Engine", "CommittedWorkflow", "Workflow", "Step", "StepContext", "RetryPolicy", "step", "new_run_id",
    "RunDetails", "RunHandle", "RunResult", "SuspendedStep", "WorkflowEvent", "RunView", "load_run_view",
    "WorkflowGraph", "workflow_graph", "VersionInfo", "VersionStatus", "describe_version",
    # agents, models, tools, memory
    "Agent", "AgentResult", "AgentText", "agent_step", "FunctionModel", "OfflineModel", "resolve_embedder",
    "resolve_model", "Tool", "ToolContext", "tool", "Memory", "Recall", "ThreadMemory", "WorkingMemory",
    # errors
    "ThreadflowError", "DefinitionError", "UsageError", "WorkflowNotFound", "RunNotFound", "InvalidInput",
    "NotSuspended", "AlreadyResumed", "NotWaitingForEvent", "RunFinished", "VersionNotRegistered", "RunFailure",
    "StepFailed", "StepTimeout", "StepCrashed", "OutputInvalid", "OutputUnstorable", "LoopLimitExceeded",
    "EventTimeout", "ModelError", "ToolFailed",
}


def test_the_run_time_errors_of_issue_14_import_from_the_package() -> None:
    from workflows import OutputUnstorable, StepCrashed, StepTimeout

    assert issubclass(StepTimeout, workflows.RunFailure)
    assert issubclass(StepCrashed, workflows.RunFailure)
    assert issubclass(OutputUnstorable, workflows.OutputInvalid)


def test_all_is_the_pinned_public_api() -> None:
    assert set(workflows.__all__) == PUBLIC
    assert len(workflows.__all__) == len(PUBLIC)  # no name listed twice
    for name in workflows.__all__:
        assert hasattr(workflows, name), name


def test_every_error_class_in_the_error_tree_is_exported() -> None:
    declared = {name for name, obj in vars(errors).items()
                if inspect.isclass(obj) and issubclass(obj, errors.ThreadflowError) and obj.__module__ == errors.__name__}
    assert declared <= set(workflows.__all__), sorted(declared - set(workflows.__all__))
    for name in declared:
        assert getattr(workflows, name) is getattr(errors, name)
