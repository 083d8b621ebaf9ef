"""Prepared statements: hot statements compiled once by SQLAlchemy, executed straight on the SQLite cursor.

On SQLite a statement costs about 15 us in sqlite3 and 60-100 us through SQLAlchemy's execution layer
(execution context, parameter processing, result setup). The engine's hot path runs a few fixed statements
per step (record a result, add events, settle a run), so that layer was most of the writer thread's time.

A statement marked with :func:`prepared` is an ordinary SQLAlchemy statement: PostgreSQL, and any call this
module cannot serve, runs it through SQLAlchemy as usual. On SQLite, :func:`plan_for` compiles it once per
set of parameter names with SQLAlchemy's own compiler and bind processors (JSON serialisation included) and
:meth:`Plan.run` binds the values positionally on the DBAPI cursor. DML without RETURNING and without
Python-side column defaults qualifies, and SELECTs of plain columns, whose rows come back through the
columns' own result processors (JSON parsed); everything else falls back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import Select

S = TypeVar("S")

#: id(statement) -> statement (kept alive, so an id is never reused for another object).
_PREPARED: dict[int, Any] = {}
#: (id(statement), parameter names) -> compiled plan, or None when the statement must go through SQLAlchemy.
_PLANS: dict[tuple[int, tuple[str, ...]], Plan | None] = {}

_MISSING = object()


def prepared(statement: S) -> S:
    """Mark a module-level (or long-lived) statement as hot; returns it unchanged."""
    if not isinstance(statement, UpdateBase | Select):
        raise TypeError(f"only INSERT/UPDATE/DELETE/SELECT statements can be prepared, not {type(statement).__name__}")
    _PREPARED[id(statement)] = statement
    return statement


@dataclass(frozen=True)
class Plan:
    sql: str
    #: per positional slot: (parameter name, literal value or _MISSING, bind processor or None)
    slots: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]
    #: for a SELECT: per result column, (key, result processor or None)
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None = None

    def values(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, literal, process in self.slots:
            value = params[name] if literal is _MISSING else literal
            out.append(process(value) if process is not None else value)  # as SQLAlchemy: None too
        return tuple(out)

    def run(self, cursor: Any, parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> PreparedResult:
        if self.columns is not None:
            assert isinstance(parameters, Mapping)
            cursor.execute(self.sql, self.values(parameters))
            processors = [process for _, process in self.columns]
            rows = [
                tuple(value if process is None else process(value) for value, process in zip(row, processors, strict=True))
                for row in cursor.fetchall()
            ]
            return PreparedResult(-1, tuple(key for key, _ in self.columns), rows)
        if isinstance(parameters, Mapping):
            cursor.execute(self.sql, self.values(parameters))
        else:
            cursor.executemany(self.sql, [self.values(p) for p in parameters])
        return PreparedResult(cursor.rowcount)


@dataclass(frozen=True)
class PreparedResult:
    """The part of SQLAlchemy's Result the repositories use: ``rowcount``, rows, ``mappings()``, ``first()``."""

    rowcount: int
    keys: tuple[str, ...] = ()
    rows: list[tuple[Any, ...]] | None = None

    def first(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def mappings(self) -> Mappings:
        return Mappings(dict(zip(self.keys, row, strict=True)) for row in self.rows or [])


class Mappings(list[dict[str, Any]]):
    def first(self) -> dict[str, Any] | None:
        return self[0] if self else None


def plan_for(statement: Any, parameters: Any, dialect: Dialect) -> Plan | None:
    """The compiled plan for a prepared statement and these parameters, or None to use SQLAlchemy."""
    if id(statement) not in _PREPARED or not parameters:
        return None
    if isinstance(parameters, Mapping):
        keys = tuple(sorted(parameters))
    elif isinstance(statement, Select):
        return None  # a SELECT runs with one set of parameters
    elif isinstance(parameters, Sequence) and all(isinstance(p, Mapping) for p in parameters):
        keys = tuple(sorted(parameters[0]))
        if any(len(p) != len(keys) or any(k not in p for k in keys) for p in parameters):
            return None  # rows with different columns: SQLAlchemy handles that
    else:
        return None
    key = (id(statement), keys)
    try:
        return _PLANS[key]
    except KeyError:
        plan = _PLANS[key] = _compile(statement, keys, dialect)
        return plan


def _compile(statement: Any, keys: tuple[str, ...], dialect: Dialect) -> Plan | None:
    if dialect.paramstyle != "qmark":
        return None
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None = None
    if isinstance(statement, Select):
        columns = tuple(
            (str(column.key), column.type.dialect_impl(dialect).result_processor(dialect, None))
            for column in statement.selected_columns
        )
        if len({key for key, _ in columns}) != len(columns):
            return None  # duplicate keys: SQLAlchemy's Result disambiguates them
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys))
    if compiled.insert_prefetch or compiled.update_prefetch or getattr(compiled, "effective_returning", None):
        return None  # Python-side defaults or RETURNING need SQLAlchemy's execution context
    sql: str = compiled.string
    slots: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if bind.expanding:
            values = bind.effective_value
            if bind.callable is not None or not isinstance(values, (list, tuple)) or not values:
                return None
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * len(values)), 1)
            slots.extend((name, v, process) for v in values)
        elif name in keys:
            slots.append((name, _MISSING, process))
        elif bind.callable is None and not bind.required:
            slots.append((name, bind.value, process))
        else:
            return None  # a required value is missing: let SQLAlchemy raise its own clear error
    if "__[POSTCOMPILE_" in sql:
        return None
    return Plan(sql, tuple(slots), columns)
