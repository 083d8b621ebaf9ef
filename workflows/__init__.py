"""threadflow's engine: durable, typed workflows of steps and agents.

    from workflows import Workflow, step, StepContext, Engine
"""

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
