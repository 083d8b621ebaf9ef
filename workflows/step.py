"""Steps: typed functions, the unit the engine records exactly once per path.

A step is ``async def`` (it runs on the event loop) or a plain ``def`` (it runs in a thread of the engine's,
so blocking code, a sync HTTP client or CPU-bound work cannot stall the other runs).
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from .errors import DefinitionError, InvalidInput, OutputInvalid, OutputUnstorable

if TYPE_CHECKING:
    from .context import StepContext

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)

#: ``async def fn(ctx)``, or a plain ``def fn(ctx)`` (run in a thread).
StepFn = Callable[["StepContext[Any]"], Awaitable[Any]] | Callable[["StepContext[Any]"], Any]


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
        """Whether to try again after ``exc``. What a step raises that is not an Exception (``SystemExit``,
        ``KeyboardInterrupt``) counts as one here: it is the step's failure like any other."""
        if attempt >= self.attempts:
            return False
        return isinstance(exc, self.retry_on) or (not isinstance(exc, Exception) and Exception in self.retry_on)

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
    #: Seconds one attempt may take; None: the workflow's ``step_timeout``, else ``THREADFLOW_STEP_TIMEOUT``.
    timeout: float | None = None
    #: ``async def`` (runs on the event loop) or a plain function (runs in a thread).
    is_async: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        validate_id(self.id, "step")
        if not callable(self.fn):
            raise DefinitionError(f"Step {self.id!r}: the step function must be a function, got {self.fn!r}.")
        if inspect.isasyncgenfunction(self.fn) or inspect.isgeneratorfunction(self.fn):
            raise DefinitionError(
                f"Step {self.id!r}: the step function must return its output, not yield it "
                "(use `async def` with `return`, or a plain `def`)."
            )
        self.is_async = inspect.iscoroutinefunction(self.fn)
        if self.timeout is not None and not self.timeout > 0:
            raise DefinitionError(f"Step {self.id!r}: timeout must be a positive number of seconds, got {self.timeout!r}.")
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
        try:
            output = storable(value) if self.output is None else checked_dump(dump_value(self.output, value))
        except ValidationError as exc:
            raise OutputInvalid(
                f"Step {self.id!r} returned output that does not fit {self.output.__name__ if self.output else 'its model'}: "
                + InvalidInput.from_validation("output", exc).args[0].removeprefix("Invalid output: ")
            ) from exc
        except (PydanticSerializationError, OutputUnstorable) as exc:
            reason = exc.problem if isinstance(exc, OutputUnstorable) else str(exc).splitlines()[0]
            raise OutputUnstorable(
                f"Step {self.id!r} returned output that cannot be stored: {reason}. Return JSON data (dicts, lists, "
                "strings, numbers, booleans, None) or a pydantic model; encode bytes as base64 text."
            ) from exc
        return output


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
    timeout: float | None = None,
) -> Callable[[StepFn], Step[Any, Any]]:
    """Turn ``async def fn(ctx) -> Output`` (or a plain ``def``, run in a thread) into a :class:`Step`.

    ``suspend``/``resume`` are the models of the payload a step suspends with and of the data that resumes
    it; ``suspend_ttl`` (seconds) makes an open suspension expire and take the reject path;
    ``approvers`` limits who may resume it from Slack; ``metadata`` is free-form data for adapters
    (``{"post_output": True}`` makes the Slack bot post the step's output in the run's thread);
    ``timeout`` (seconds) fails an attempt that runs longer with StepTimeout, and the retry policy applies.
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
            timeout=timeout,
        )

    return decorate


#: The longest id the database stores (``runs.workflow_id``, ``step_results.step_id``).
MAX_ID_LENGTH = 200


def validate_id(value: str, what: str) -> None:
    bad = set("/#[]") & set(value)
    if not value or not isinstance(value, str) or bad or value != value.strip():
        raise DefinitionError(
            f"{what.capitalize()} id {value!r} is not allowed: use a non-empty name without spaces at the ends "
            "and without '/', '#', '[' or ']' (they separate parts of a step's path)."
        )
    if len(value) > MAX_ID_LENGTH:
        raise DefinitionError(f"{what.capitalize()} id {value[:40]!r}... is {len(value)} characters long; "
                              f"use at most {MAX_ID_LENGTH}.")


def parse_model(model: type[BaseModel] | None, data: Any, where: str, *, known_keys_only: bool = False) -> Any:
    """Validate JSON-ready ``data`` (or a model instance) into ``model``; raise InvalidInput naming fields.

    ``known_keys_only``: data a person or a caller typed (a workflow's input, resume data, event data) may
    not carry keys the model does not have. pydantic ignores them by default, so a misspelt field would be
    dropped silently and the run go on with the default; a model that sets ``extra`` itself is left alone.

    Fields are read by alias and by name: the engine stores a model's data as ``model_dump`` gives it (by name), and
    a model with aliases (a camelCase API payload) must read back what it stored; a caller may send either form.
    """
    if model is None:
        return data
    if isinstance(data, model):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    unknown: list[str] = []
    if known_keys_only and isinstance(data, dict) and "extra" not in model.model_config:
        unknown = unknown_keys(model, data)
    try:
        value = model.model_validate(data, by_alias=True, by_name=True)
    except ValidationError as exc:
        if not unknown:
            raise InvalidInput.from_validation(where, exc) from exc
        raise InvalidInput.with_unknown_keys(
            where, unknown, list(model.model_fields), [dict(e) for e in exc.errors(include_url=False)]) from exc
    if unknown:
        raise InvalidInput.with_unknown_keys(where, unknown, list(model.model_fields))
    return value


def unknown_keys(model: type[BaseModel], data: dict[str, Any]) -> list[str]:
    """The keys of ``data`` that ``model`` has no field (or alias) for."""
    known: set[str] = set()
    for name, info in model.model_fields.items():
        known.add(name)
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                known.add(alias)
    return [str(k) for k in data if k not in known]


def dump_value(model: type[BaseModel] | None, value: Any) -> Any:
    """JSON-ready form of a step's value, validated against ``model`` when there is one."""
    if model is not None:
        if not isinstance(value, model):
            value = model.model_validate(
                value.model_dump() if isinstance(value, BaseModel) else value, by_alias=True, by_name=True)
        return value.model_dump(mode="json")
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return to_jsonable(value)


#: Values that are JSON as they are (most step inputs and outputs are these, or None, or a dict of them).
_JSON_SCALARS = (str, int, float, bool, type(None))


def checked_dump(value: Any, where: str = "output") -> Any:
    """A model's dump (JSON data already, which may still hold NaN, an infinity or an integer beyond 64 bits: the
    database would give back null or a float), checked as :func:`storable` would, without walking it when orjson
    shows there is nothing to find: it refuses such an integer, and writes NaN and infinities as ``null``."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return storable(value, where)  # names what it is (or finds it storable after all)
    return storable(value, where) if b"null" in text else value


def parse_data(model: type[BaseModel] | None, data: Any, where: str, *, known_keys_only: bool = True) -> Any:
    """Data given to a run (its input, resume data, an event's data) validated against ``model`` and made JSON-ready,
    as the database can hold it and give it back; InvalidInput (``where``: what the data is) names what does not fit
    the model, or what the database cannot hold."""
    value = dump_value(model, parse_model(model, data, where, known_keys_only=known_keys_only))
    try:
        return storable(value, "data")
    except OutputUnstorable as exc:
        raise InvalidInput(where, exc.problem) from None


def to_jsonable(value: Any) -> Any:
    if type(value) in _JSON_SCALARS:
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


#: The integers the database's JSON reader gives back as integers (orjson: 64 bits); one beyond comes back a float.
_INT_MIN, _INT_END = -(2**63), 2**64


def storable(value: Any, where: str = "output") -> Any:
    """``value`` as JSON data the database can hold, and give back as it was (models dumped, tuples as lists);
    OutputUnstorable names the first thing that is not (``output.files[2] is a bytes object``, ``output.ratio is
    nan``, an integer beyond 64 bits)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if _INT_MIN <= value < _INT_END:
            return value
        raise OutputUnstorable(f"{where} is an integer beyond 64 bits ({value}), which would be read back as a "
                               "float; store it as a string")
    if isinstance(value, BaseModel):
        return storable(value.model_dump(mode="json"), where)
    if isinstance(value, dict):
        return {str(k): storable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OutputUnstorable(f"{where} is {value!r}, which JSON cannot hold")
        return value
    raise OutputUnstorable(f"{where} is {_kind(value)}, which JSON cannot hold")


def _kind(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name} object"
