"""threadflow's engine: durable, typed workflows of steps and agents.

from workflows import Workflow, step, StepContext, Engine

Names are imported on first use (see :mod:`storage.lazy`), so importing the package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage.lazy import keep_exports_over_submodules, lazy_exports

if TYPE_CHECKING:
    from .agent import Agent, AgentResult
    from .agent_step import AgentText, agent_step
    from .context import StepContext
    from .engine import Engine, new_run_id
    from .errors import (
        AlreadyResumed,
        DefinitionError,
        EventTimeout,
        InvalidInput,
        LoopLimitExceeded,
        ModelError,
        NotSuspended,
        NotWaitingForEvent,
        OutputInvalid,
        OutputUnstorable,
        RunFailure,
        RunFinished,
        RunNotFound,
        StepCrashed,
        StepFailed,
        StepTimeout,
        ThreadflowError,
        ToolFailed,
        UsageError,
        VersionNotRegistered,
        WorkflowNotFound,
    )
    from .events import WorkflowEvent
    from .graph_export import WorkflowGraph, workflow_graph
    from .memory import Memory, Recall, ThreadMemory, WorkingMemory
    from .models import FunctionModel, OfflineModel, resolve_embedder, resolve_model
    from .run import RunDetails, RunHandle, RunResult, SuspendedStep
    from .run_view import RunView, load_run_view
    from .step import RetryPolicy, Step, step
    from .tools import Tool, ToolContext, tool
    from .versions import VersionInfo, VersionStatus, describe_version
    from .workflow import CommittedWorkflow, Workflow

_EXPORTS = {
    "Agent": ".agent",
    "AgentResult": ".agent",
    "AgentText": ".agent_step",
    "agent_step": ".agent_step",
    "StepContext": ".context",
    "Engine": ".engine",
    "new_run_id": ".engine",
    "AlreadyResumed": ".errors",
    "DefinitionError": ".errors",
    "EventTimeout": ".errors",
    "InvalidInput": ".errors",
    "LoopLimitExceeded": ".errors",
    "ModelError": ".errors",
    "NotSuspended": ".errors",
    "NotWaitingForEvent": ".errors",
    "OutputInvalid": ".errors",
    "OutputUnstorable": ".errors",
    "RunFailure": ".errors",
    "RunFinished": ".errors",
    "RunNotFound": ".errors",
    "StepCrashed": ".errors",
    "StepFailed": ".errors",
    "StepTimeout": ".errors",
    "ThreadflowError": ".errors",
    "ToolFailed": ".errors",
    "UsageError": ".errors",
    "VersionNotRegistered": ".errors",
    "WorkflowNotFound": ".errors",
    "WorkflowEvent": ".events",
    "WorkflowGraph": ".graph_export",
    "workflow_graph": ".graph_export",
    "Memory": ".memory",
    "Recall": ".memory",
    "ThreadMemory": ".memory",
    "WorkingMemory": ".memory",
    "FunctionModel": ".models",
    "OfflineModel": ".models",
    "resolve_embedder": ".models",
    "resolve_model": ".models",
    "RunDetails": ".run",
    "RunHandle": ".run",
    "RunResult": ".run",
    "SuspendedStep": ".run",
    "RunView": ".run_view",
    "load_run_view": ".run_view",
    "RetryPolicy": ".step",
    "Step": ".step",
    "step": ".step",
    "Tool": ".tools",
    "ToolContext": ".tools",
    "tool": ".tools",
    "VersionInfo": ".versions",
    "VersionStatus": ".versions",
    "describe_version": ".versions",
    "CommittedWorkflow": ".workflow",
    "Workflow": ".workflow",
}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
# ``workflows.step`` and ``workflows.agent_step`` are the decorators, not the modules that define them.
keep_exports_over_submodules(__name__, frozenset({"step", "agent_step"}))

__all__ = [
    "Agent",
    "AgentResult",
    "AgentText",
    "RunView",
    "WorkflowGraph",
    "load_run_view",
    "workflow_graph",
    "FunctionModel",
    "Memory",
    "OfflineModel",
    "Recall",
    "ThreadMemory",
    "Tool",
    "ToolContext",
    "WorkingMemory",
    "agent_step",
    "describe_version",
    "resolve_embedder",
    "resolve_model",
    "new_run_id",
    "tool",
    "AlreadyResumed",
    "CommittedWorkflow",
    "DefinitionError",
    "EventTimeout",
    "Engine",
    "InvalidInput",
    "LoopLimitExceeded",
    "ModelError",
    "NotSuspended",
    "NotWaitingForEvent",
    "OutputInvalid",
    "OutputUnstorable",
    "RetryPolicy",
    "RunDetails",
    "RunFailure",
    "RunFinished",
    "RunHandle",
    "RunNotFound",
    "RunResult",
    "Step",
    "StepContext",
    "StepCrashed",
    "StepFailed",
    "StepTimeout",
    "SuspendedStep",
    "ThreadflowError",
    "ToolFailed",
    "UsageError",
    "VersionInfo",
    "VersionNotRegistered",
    "VersionStatus",
    "Workflow",
    "WorkflowEvent",
    "WorkflowNotFound",
    "step",
]
