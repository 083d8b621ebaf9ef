"""threadflow's engine: durable, typed workflows of steps and agents.

    from workflows import Workflow, step, StepContext, Engine
"""

from .context import StepContext
from .engine import Engine
from .errors import (
    AlreadyResumed,
    DefinitionError,
    InvalidInput,
    LoopLimitExceeded,
    ModelError,
    NotSuspended,
    NotWaitingForEvent,
    OutputInvalid,
    RunFailure,
    RunFinished,
    RunNotFound,
    StepFailed,
    ThreadflowError,
    ToolFailed,
    UsageError,
    WorkflowNotFound,
)
from .events import WorkflowEvent
from .run import RunDetails, RunHandle, RunResult, SuspendedStep
from .step import RetryPolicy, Step, step
from .workflow import CommittedWorkflow, Workflow

__all__ = [
    "AlreadyResumed",
    "CommittedWorkflow",
    "DefinitionError",
    "Engine",
    "InvalidInput",
    "LoopLimitExceeded",
    "ModelError",
    "NotSuspended",
    "NotWaitingForEvent",
    "OutputInvalid",
    "RetryPolicy",
    "RunDetails",
    "RunFailure",
    "RunFinished",
    "RunHandle",
    "RunNotFound",
    "RunResult",
    "Step",
    "StepContext",
    "StepFailed",
    "SuspendedStep",
    "ThreadflowError",
    "ToolFailed",
    "UsageError",
    "Workflow",
    "WorkflowEvent",
    "WorkflowNotFound",
    "step",
]
