"""Errors raised by threadflow's engine, agents and memory.

Split by whose fault it is, so callers (the CLI, the Slack adapter) know what to tell whom::

    ThreadflowError
     +-- DefinitionError            a developer built a workflow or agent wrong (raised at commit/define time)
     +-- UsageError                 a user's request can't be honoured; nothing was changed
     |    +-- WorkflowNotFound      no registered workflow has that id
     |    +-- RunNotFound           no run has that id
     |    +-- InvalidInput          data failed a step's/workflow's pydantic model
     |    +-- NotSuspended          resume named a run or step that is not waiting for input
     |    +-- AlreadyResumed        someone else resumed that suspension first (names who)
     |    +-- NotWaitingForEvent    send_event to a run that can no longer receive it
     |    +-- RunFinished           the run is terminal; it cannot be changed
     |    +-- VersionNotRegistered  the run's workflow version is not registered (here, or anywhere live)
     +-- RunFailure                 something failed while a run executed (recorded on the run)
          +-- StepFailed            a step raised after its retries
          +-- StepTimeout           a step ran longer than its timeout (its retry policy applies)
          +-- StepCrashed           the process running a step died THREADFLOW_MAX_RECOVERIES times
          +-- OutputInvalid         a step returned data that does not fit its output model
          |    +-- OutputUnstorable a step returned data the database cannot hold (bytes, an object)
          +-- LoopLimitExceeded     a loop ran past its iteration cap
          +-- EventTimeout          an awaited event did not arrive in time
          +-- ModelError            the LLM failed after retries (429, 5xx, timeout, bad response)
          +-- ToolFailed            a tool raised (reported back to the model, not fatal by itself)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class ThreadflowError(Exception):
    """Base class of every threadflow error."""


class DefinitionError(ThreadflowError):
    """A workflow, step or agent is defined wrongly; the message says which and how to fix it."""


class UsageError(ThreadflowError):
    """A request that cannot be honoured. Nothing was changed by it."""


class WorkflowNotFound(UsageError):
    def __init__(self, workflow_id: str, known: list[str]) -> None:
        self.workflow_id = workflow_id
        self.known = known
        known_text = ", ".join(sorted(known)) or "none"
        super().__init__(f"Workflow {workflow_id!r} is not registered. Known workflows: {known_text}.")


class RunNotFound(UsageError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"Run {run_id!r} does not exist. List recent runs with `runs`.")


class InvalidInput(UsageError):
    """Data does not fit a model. ``where`` names the step/workflow, ``errors`` the failing fields."""

    def __init__(self, where: str, errors: list[dict[str, Any]] | str) -> None:
        self.where = where
        if isinstance(errors, str):
            self.errors: list[dict[str, Any]] = []
            super().__init__(f"Invalid {where}: {errors}")
            return
        self.errors = errors
        super().__init__(f"Invalid {where}: {format_validation_errors(errors)}")

    @classmethod
    def from_validation(cls, where: str, exc: ValidationError) -> InvalidInput:
        return cls(where, [dict(e) for e in exc.errors(include_url=False)])

    @classmethod
    def with_unknown_keys(
        cls, where: str, unknown: list[str], expected: list[str], errors: list[dict[str, Any]] | None = None
    ) -> InvalidInput:
        """Keys the model has no field for (a typo would otherwise be dropped silently), plus any other errors."""
        names = ", ".join(repr(k) for k in unknown)
        fields = ", ".join(expected) or "none (it takes no input)"
        text = f"unknown field{'s' if len(unknown) > 1 else ''} {names}; expected fields: {fields}"
        err = cls(where, f"{text}; {format_validation_errors(errors)}" if errors else text)
        err.errors = [{"loc": (k,), "msg": "unknown field", "type": "extra_forbidden"} for k in unknown] + (errors or [])
        return err


class NotSuspended(UsageError):
    """The run (or the named step) has no open suspension to resume."""


class AlreadyResumed(UsageError):
    def __init__(self, run_id: str, path: str, by: str | None, at: float | None) -> None:
        self.run_id = run_id
        self.path = path
        self.by = by
        self.at = at
        super().__init__(f"Step {path!r} of run {run_id} was already resumed by {by or 'someone else'}.")


class NotWaitingForEvent(UsageError):
    """send_event could not be delivered: the run is finished, or its wait for that event timed out."""


class RunFinished(UsageError):
    """The run is in a terminal status (success, failed, canceled); it cannot change again."""


class VersionNotRegistered(UsageError):
    """The run's workflow version is not registered in this process (``served_by``: live replicas that have it).

    Raised before anything changes: a resume that gets it consumed nothing, so the decision can be given
    again once the version is registered.
    """

    def __init__(
        self, run_id: str, workflow_id: str, version: str, registered: str, served_by: list[str] | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.version = version
        self.registered = registered
        self.served_by = served_by or []
        if self.served_by:
            super().__init__(
                f"Run {run_id} is on version {version} of workflow {workflow_id!r}, which this process does not "
                f"have (it has: {registered}); {', '.join(self.served_by)} runs it. Nothing was changed: do this "
                f"there, or register version {version} here."
            )
            return
        super().__init__(
            f"Run {run_id} is on version {version} of workflow {workflow_id!r}, which no running process has "
            f"registered. Registered versions of {workflow_id!r}: {registered}. Nothing was changed: the run still "
            f"waits and can be decided once version {version} is registered again; or move it onto the current "
            f"version with `threadflow rerun {run_id} --from STEP`, or cancel it with `threadflow cancel {run_id}`."
        )


class RunFailure(ThreadflowError):
    """Something went wrong while executing a run."""


class StepFailed(RunFailure):
    """A step raised. ``deliberate`` failures (a RunFailure the step raised, like a rejection) read plainly."""

    def __init__(
        self, path: str, message: str, error_type: str = "Exception", attempts: int = 1, *, deliberate: bool = False
    ) -> None:
        self.path = path
        self.error_type = error_type
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        reason = message if deliberate else f"{error_type}: {message}" if message else error_type
        super().__init__(f"Step {path!r} failed{tries}: {reason}")


class StepTimeout(RunFailure):
    """A step attempt ran longer than its timeout (``@step(timeout=)``, the workflow's ``step_timeout``, or
    ``THREADFLOW_STEP_TIMEOUT``). Unlike other run failures it is retried by the step's retry policy."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path = path
        self.seconds = seconds
        super().__init__(
            f"Step {path!r} did not finish within its timeout of {seconds:g} seconds; make it faster, or give it "
            "a longer one with @step(timeout=...)."
        )


class StepCrashed(RunFailure):
    """The process executing a step died (os._exit, a segfault, the out-of-memory killer) too many times."""

    def __init__(self, path: str | None, deaths: int) -> None:
        self.path = path
        self.deaths = deaths
        if path is None:
            super().__init__(
                f"The run failed: the process running it died {deaths} time{'' if deaths == 1 else 's'} while no step "
                "was running (in a map, "
                "condition or items function of the workflow, or in the engine), so it was not recovered again."
            )
            return
        super().__init__(
            f"Step {path!r} failed: the process running step `{path}` died {deaths} {'time' if deaths == 1 else 'times'} "
            "(a crash, os._exit or "
            "the out-of-memory killer), so the run was failed instead of being recovered again. Fix the step, "
            f"then re-run it with `threadflow rerun RUN_ID --from {path}`."
        )


class OutputInvalid(RunFailure):
    """A step returned data that does not validate against its output model."""


class OutputUnstorable(OutputInvalid):
    """A step returned data that cannot be stored as JSON (bytes, sets, arbitrary objects, NaN).

    ``problem`` says what and where (``output.files[2] is a bytes object, which JSON cannot hold``).
    """

    def __init__(self, message: str, *, problem: str | None = None) -> None:
        self.problem = problem or message
        super().__init__(message)


class LoopLimitExceeded(RunFailure):
    """A dowhile/dountil loop reached its iteration cap without its condition ending it."""


class EventTimeout(RunFailure):
    """``wait_for_event(..., timeout=)`` passed without the event arriving."""

    path: str | None = None


class ModelError(RunFailure):
    """The language model could not answer (after retries for 429/5xx/timeouts)."""


class ToolFailed(RunFailure):
    """A tool raised; the agent reports this back to the model as a tool result."""


def format_validation_errors(errors: list[dict[str, Any]]) -> str:
    """``field 'name': Field required; field 'age': Input should be a valid integer``."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        parts.append(f"field {loc!r}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
