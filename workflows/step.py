"""Steps: typed async functions, the unit the engine records exactly once per path."""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import DefinitionError, InvalidInput

if TYPE_CHECKING:
    from .context import StepContext

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)

StepFn = Callable[["StepContext[Any]"], Awaitable[Any]]


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing step is retried: ``attempts`` tries in all, exponential backoff with full jitter."""

    attempts: int = 1
    backoff: float = 0.5
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise DefinitionError("RetryPolicy.attempts must be at least 1 (1 means no retry).")
        if self.backoff < 0 or self.max_backoff < 0:
            raise DefinitionError("RetryPolicy backoff values must not be negative.")

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        return attempt < self.attempts and isinstance(exc, self.retry_on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.backoff * self.multiplier ** (attempt - 1))
        return random.uniform(0, base) if self.jitter else base


NO_RETRY = RetryPolicy()


@dataclass
class Step(Generic[In, Out]):
    """A workflow step. Build one with :func:`step`; add it to a workflow with ``.then(step)``."""

    id: str
    fn: StepFn
    input: type[BaseModel] | None = None
    output: type[BaseModel] | None = None
    suspend: type[BaseModel] | None = None
    resume: type[BaseModel] | None = None
    retry: RetryPolicy | None = None
    description: str | None = None
    suspend_ttl: float | None = None
    approvers: tuple[str, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_id(self.id, "step")
        if not inspect.iscoroutinefunction(self.fn):
            raise DefinitionError(f"Step {self.id!r}: the step function must be `async def`.")
        for name in ("input", "output", "suspend", "resume"):
            model = getattr(self, name)
            if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise DefinitionError(f"Step {self.id!r}: `{name}` must be a pydantic BaseModel class, got {model!r}.")

    def __repr__(self) -> str:
        return f"Step(id={self.id!r})"

    def parse_input(self, data: Any) -> BaseModel | Any:
        return parse_model(self.input, data, f"input of step {self.id!r}")

    def dump_output(self, value: Any) -> Any:
        """Validate what the step returned against its output model and make it JSON-ready."""
        from .errors import OutputInvalid

        try:
            return dump_value(self.output, value)
        except ValidationError as exc:
            raise OutputInvalid(
                f"Step {self.id!r} returned output that does not fit {self.output.__name__ if self.output else 'its model'}: "
                + InvalidInput.from_validation("output", exc).args[0].removeprefix("Invalid output: ")
            ) from exc


def step(
    *,
    id: str,
    input: type[BaseModel] | None = None,
    output: type[BaseModel] | None = None,
    suspend: type[BaseModel] | None = None,
    resume: type[BaseModel] | None = None,
    retry: RetryPolicy | None = None,
    description: str | None = None,
    suspend_ttl: float | None = None,
    approvers: list[str] | tuple[str, ...] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Callable[[StepFn], Step[Any, Any]]:
    """Turn ``async def fn(ctx) -> Output`` into a :class:`Step`.

    ``suspend``/``resume`` are the models of the payload a step suspends with and of the data that resumes
    it; ``suspend_ttl`` (seconds) makes an open suspension expire and take the reject path;
    ``approvers`` limits who may resume it from Slack; ``metadata`` is free-form data for adapters
    (``{"post_output": True}`` makes the Slack bot post the step's output in the run's thread).
    """

    def decorate(fn: StepFn) -> Step[Any, Any]:
        return Step(
            id=id,
            fn=fn,
            input=input,
            output=output,
            suspend=suspend,
            resume=resume,
            retry=retry,
            description=description or (inspect.getdoc(fn) or "").split("\n")[0] or None,
            suspend_ttl=suspend_ttl,
            approvers=tuple(approvers) if approvers else None,
            metadata=dict(metadata or {}),
        )

    return decorate


def validate_id(value: str, what: str) -> None:
    bad = set("/#[]") & set(value)
    if not value or not isinstance(value, str) or bad or value != value.strip():
        raise DefinitionError(
            f"{what.capitalize()} id {value!r} is not allowed: use a non-empty name without spaces at the ends "
            "and without '/', '#', '[' or ']' (they separate parts of a step's path)."
        )


def parse_model(model: type[BaseModel] | None, data: Any, where: str) -> Any:
    """Validate JSON-ready ``data`` (or a model instance) into ``model``; raise InvalidInput naming fields."""
    if model is None:
        return data
    if isinstance(data, model):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput.from_validation(where, exc) from exc


def dump_value(model: type[BaseModel] | None, value: Any) -> Any:
    """JSON-ready form of a step's value, validated against ``model`` when there is one."""
    if model is not None:
        if not isinstance(value, model):
            value = model.model_validate(value.model_dump() if isinstance(value, BaseModel) else value)
        return value.model_dump(mode="json")
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return to_jsonable(value)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value
