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

An INSERT marked ``deferrable`` (the events outbox: append-only, nobody needs its row count) may be held
back by a batch's connection and executed as one ``executemany`` for every writer in the batch, just
before anything else touches its table and before the commit (see ``SyncConnection`` in backends.py).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar, cast

import orjson
from sqlalchemy.dialects.sqlite import base as sqlite_base
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import sqltypes, visitors
from sqlalchemy.sql.dml import Insert, UpdateBase
from sqlalchemy.sql.elements import BindParameter, Null
from sqlalchemy.sql.selectable import Select
from sqlalchemy.sql.util import find_tables

from . import jsoncodec

S = TypeVar("S")

#: id(statement) -> statement (kept alive, so an id is never reused for another object).
_PREPARED: dict[int, Any] = {}
#: ids of the prepared INSERTs whose execution a batch may defer to the end (see the module docstring).
_DEFERRABLE: set[int] = set()
#: id(statement) -> names of its ``bindparam(..., expanding=True)`` lists, given at execution (``IN :ids``).
_EXPANDING: dict[int, tuple[str, ...]] = {}
#: (id(statement), parameter names) -> compiled plan, or None when the statement must go through SQLAlchemy.
_PLANS: dict[tuple[Any, ...], Plan | None] = {}
#: (id(statement), parameter names in the order the caller gave them) -> the same plans. Both keys end
#: with the compiled size of each list parameter, if the statement has any.
_BY_ORDER: dict[tuple[Any, ...], Plan | None] = {}
#: (id(statement), parameter names, dialect name) -> SQLAlchemy's compiled statement, shared by its plans of every size.
_COMPILED: dict[tuple[Any, ...], Any] = {}
#: id(statement) -> the tables it reads or writes.
_TABLES: dict[int, frozenset[str]] = {}

_MISSING = object()


def prepared(statement: S, *, deferrable: bool = False) -> S:
    """Mark a module-level (or long-lived) statement as hot; returns it unchanged.

    ``deferrable``: a plain INSERT whose callers never look at its result, so a batch may run it later
    (still inside the same transaction, before anything reads or writes its table).
    """
    if not isinstance(statement, UpdateBase | Select):
        raise TypeError(f"only INSERT/UPDATE/DELETE/SELECT statements can be prepared, not {type(statement).__name__}")
    if deferrable:
        if not isinstance(statement, Insert) or statement.select is not None or statement._returning:
            raise TypeError("only a plain INSERT ... VALUES without RETURNING can be deferred")
        _DEFERRABLE.add(id(statement))
    expanding = tuple(sorted({
        b.key for b in visitors.iterate(cast(Any, statement)) if isinstance(b, BindParameter) and b.expanding and b.required
    }))
    if expanding:
        _EXPANDING[id(statement)] = expanding
    _PREPARED[id(statement)] = statement
    return statement


@dataclass(frozen=True)
class Plan:
    sql: str
    #: per positional slot: (parameter name, literal value or _MISSING, bind processor or None)
    slots: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]
    #: for a SELECT: per result column, (key, result processor or None)
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None = None
    #: the tables the statement reads or writes
    tables: frozenset[str] = frozenset()
    #: a plain INSERT a batch may execute later (``prepared(..., deferrable=True)``)
    deferrable: bool = False
    #: some slots are items of a list parameter (``IN :ids``; see ``_Item``)
    expanding: bool = False
    #: the hot path of :meth:`values` for a plan without list items: one ``itemgetter`` call for all the values,
    #: then the bind processors of the few slots that have one (JSON). It is most of what a step's rows cost in
    #: Python, so it is worth the second code path.
    _get: Callable[[Mapping[str, Any]], Any] | None = field(default=None, init=False, repr=False, compare=False)
    _processed: tuple[tuple[int, Callable[[Any], Any]], ...] = field(default=(), init=False, repr=False, compare=False)
    #: the values of literal slots (``status = 'running'``), by the keys ``_get`` looks them up with
    _literals: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: for a plan with list items: the slots as segments, (name, items, literal, processor), ``items`` 0 for a
    #: single value (None if the items of a list are not its slots 0, 1, 2, ... in a row: the slot-by-slot path)
    _segments: tuple[tuple[str, int, Any, Callable[[Any], Any] | None], ...] | None = field(
        default=None, init=False, repr=False, compare=False)
    #: for a SELECT: (index, result processor) of the columns that have one (JSON), for :meth:`run`
    _column_processors: tuple[tuple[int, Callable[[Any], Any]], ...] = field(
        default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.columns is not None:
            object.__setattr__(self, "_column_processors", tuple(
                (i, process) for i, (_, process) in enumerate(self.columns) if process is not None))
        if self.expanding:
            object.__setattr__(self, "_segments", _segments(self.slots))
            return
        if not self.slots:
            return
        # A literal slot is looked up under a key of its own (a NUL and its position: no parameter is named so), as
        # one compiled name may stand for several literals (``IN ('a', 'b')``) or for a literal and a parameter.
        names = [name if literal is _MISSING else f"\0{i}" for i, (name, literal, _) in enumerate(self.slots)]
        literals = {f"\0{i}": literal for i, (_, literal, _) in enumerate(self.slots) if literal is not _MISSING}
        get = itemgetter(*names)
        object.__setattr__(self, "_get", get if len(names) > 1 else lambda params: (get(params),))
        object.__setattr__(self, "_literals", literals)
        object.__setattr__(self, "_processed", tuple(
            (i, process) for i, (_, _, process) in enumerate(self.slots) if process is not None))

    def rows(self, parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """The positional values of each row (bind processors applied: a bad value fails here, not later)."""
        if isinstance(parameters, Mapping):
            return [self.values(parameters)]
        return [self.values(p) for p in parameters]

    def values(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        get = self._get
        if get is not None:
            row = get({**params, **self._literals} if self._literals else params)
            if not self._processed:
                return row  # type: ignore[no-any-return]
            processed = list(row)
            for i, fn in self._processed:
                processed[i] = fn(processed[i])  # as SQLAlchemy: None too
            return tuple(processed)
        out: list[Any] = []
        segments = self._segments
        if segments is not None:  # a list parameter's items in one go, not slot by slot (a claim binds 256 ids)
            for name, size, literal, process in segments:
                if size:
                    items = list(params[name][:size])
                    items += [items[-1]] * (size - len(items))  # a shorter list repeats its last item (see _Item)
                    out.extend(map(process, items) if process is not None else items)
                else:
                    value = params[name] if literal is _MISSING else literal
                    out.append(process(value) if process is not None else value)
            return tuple(out)
        for name, literal, process in self.slots:  # slot by slot (a plan without slots, or list items out of order)
            if isinstance(literal, _Item):
                items = params[name]
                value = items[min(literal.index, len(items) - 1)]
            else:
                value = params[name] if literal is _MISSING else literal
            out.append(process(value) if process is not None else value)  # as SQLAlchemy: None too
        return tuple(out)

    def run(self, cursor: Any, parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> PreparedResult:
        if self.columns is not None:
            assert isinstance(parameters, Mapping)
            cursor.execute(self.sql, self.values(parameters))
            rows = cursor.fetchall()
            # Only the columns that have a result processor (JSON) are touched: a run's row has 22 columns and 3
            # of them JSON; a generator over every value of every row was most of what reading 200 runs cost.
            processed = self._column_processors
            if processed:
                for n, row in enumerate(rows):
                    values = list(row)
                    for i, process in processed:
                        values[i] = process(values[i])
                    rows[n] = tuple(values)
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

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """The rows, as iterating SQLAlchemy's Result gives them."""
        return iter(self.rows or ())

    def mappings(self) -> Mappings:
        return Mappings(dict(zip(self.keys, row, strict=True)) for row in self.rows or [])


def _segments(slots: Sequence[tuple[str, Any, Callable[[Any], Any] | None]]
              ) -> tuple[tuple[str, int, Any, Callable[[Any], Any] | None], ...] | None:
    """A plan's slots with each list parameter's items (``_Item`` 0, 1, 2, ... of one name) as one segment."""
    segments: list[tuple[str, int, Any, Callable[[Any], Any] | None]] = []
    for name, literal, process in slots:
        if not isinstance(literal, _Item):
            segments.append((name, 0, literal, process))
        elif literal.index == 0:
            segments.append((name, 1, None, process))
        else:
            last_name, size, _, last_process = segments[-1] if segments else ("", 0, None, None)
            if last_name != name or size != literal.index or last_process is not process:
                return None
            segments[-1] = (name, size + 1, None, process)
    return tuple(segments)


class PlannedWrite(NamedTuple):
    """A write made only of resolved plans and their values, with no database function to drive: statements that must
    each change exactly one row (fenced: an insert-if-absent, an insert or update only while this process holds the
    run), then the rows of further INSERTs, in that order; all or nothing.

    What the engine's lone commits are (a run's row, a step's result, a run's end, each with its events):
    ``Database.commit_planned_now`` runs one straight on the cursor, skipping what a function's path costs around the
    same statements (see ``ThreadBackend.commit_planned_now``).
    """

    fenced: tuple[tuple[Plan, tuple[Any, ...]], ...]
    then: tuple[tuple[Plan, list[tuple[Any, ...]]], ...]


@dataclass(frozen=True)
class _Item:
    """A slot holding item ``index`` of a list parameter. Plans are compiled for lists of 1, 2, 4, 8, ...
    items; a shorter list repeats its last item, which changes nothing in ``IN (...)``."""

    index: int


class Mappings(list[dict[str, Any]]):
    def first(self) -> dict[str, Any] | None:
        return self[0] if self else None


def plan_for(statement: Any, parameters: Any, dialect: Dialect) -> Plan | None:
    """The compiled plan for a prepared statement and these parameters, or None to use SQLAlchemy."""
    sid = id(statement)
    if sid not in _PREPARED or not parameters:
        return None
    if isinstance(parameters, Mapping):
        first = parameters
    elif isinstance(statement, Select) or not isinstance(parameters, list | tuple):
        return None  # a SELECT runs with one set of parameters
    else:
        first = parameters[0]
        if not isinstance(first, Mapping):
            return None
        names = first.keys()
        for p in parameters:
            if not isinstance(p, Mapping) or p.keys() != names:
                return None  # rows with different columns: SQLAlchemy handles that
    expanding = _EXPANDING.get(sid)
    sizes: tuple[int, ...] = ()
    if expanding is not None:
        if first is not parameters:
            return None  # list parameters only in a single execution (a SELECT ... IN)
        try:
            lengths = [len(first[name]) for name in expanding]
        except (KeyError, TypeError):
            return None  # missing or not a list: let SQLAlchemy raise its own clear error
        if min(lengths) == 0:
            return None  # SQLAlchemy renders an empty IN correctly
        sizes = tuple(1 << (n - 1).bit_length() for n in lengths)
    # Dicts built by the same code list their keys in the same order: look the plan up by that order, so
    # the hot path does not sort the names on every call.
    order = (sid, tuple(first), *sizes)
    try:
        return _BY_ORDER[order]
    except KeyError:
        pass
    keys = tuple(sorted(first))
    key = (sid, keys, *sizes)
    if key not in _PLANS:
        _PLANS[key] = _compile(statement, keys, dialect, dict(zip(expanding or (), sizes, strict=True)))
    plan = _BY_ORDER[order] = _PLANS[key]
    return plan


def _compile(statement: Any, keys: tuple[str, ...], dialect: Dialect, sizes: Mapping[str, int]) -> Plan | None:
    if dialect.paramstyle != "qmark":
        return None
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None = None
    if isinstance(statement, Select):
        columns = tuple(
            (str(column.key), _result_processor(column.type, dialect))
            for column in statement.selected_columns
        )
        if len({key for key, _ in columns}) != len(columns):
            return None  # duplicate keys: SQLAlchemy's Result disambiguates them
    # Compiled once for all sizes of its lists (SQLAlchemy leaves them as placeholders, filled in below): a burst of
    # resumes meets claims and reads of many sizes, and compiling each anew cost about 0.5 ms.
    compiled: Any = _COMPILED.get((id(statement), keys, dialect.name))
    if compiled is None:
        compiled = _COMPILED[id(statement), keys, dialect.name] = statement.compile(dialect=dialect, column_keys=list(keys))
    if compiled.insert_prefetch or compiled.update_prefetch or getattr(compiled, "effective_returning", None):
        return None  # Python-side defaults or RETURNING need SQLAlchemy's execution context
    sql: str = compiled.string
    slots: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        process = _bind_processor(bind.type, dialect)
        if bind.expanding and name in sizes:
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * sizes[name]), 1)
            slots.extend((name, _Item(i), process) for i in range(sizes[name]))
        elif bind.expanding:
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
    tables = _TABLES.get(id(statement))
    if tables is None:
        tables = _TABLES[id(statement)] = frozenset(
            str(t.name) for t in find_tables(statement, include_crud=True, include_selects=True, include_aliases=True,
                                             include_joins=True, check_columns=True) if hasattr(t, "name")
        )
    return Plan(sql, tuple(slots), columns, tables, id(statement) in _DEFERRABLE, bool(sizes))


# -- JSON columns -------------------------------------------------------------------------------------------
# SQLAlchemy's JSON processors wrap the dialect's codec (ours: jsoncodec) in a layer of their own; a step binds three
# or four JSON values and a claim parses a few per run, so the plans call the codec with the same rules, a layer less.
# Any JSON type these do not know exactly (a subclass, ``none_as_null``, another codec) keeps SQLAlchemy's processors.

#: SQLite's JSON type (its result processor passes a number through, as SQLite returns numbers from JSON functions).
_SQLITE_JSON: Any = getattr(sqlite_base, "_SQliteJson", None)


def _ours(impl: Any, dialect: Dialect) -> bool:
    return (isinstance(impl, sqltypes.JSON) and type(impl).bind_processor is sqltypes.JSON.bind_processor
            and not impl.none_as_null
            and not dialect.supports_native_json_serialization and not dialect.supports_native_json_deserialization
            and getattr(dialect, "_json_serializer", None) is jsoncodec.dumps
            and getattr(dialect, "_json_deserializer", None) is jsoncodec.loads
            and impl._str_impl.bind_processor(dialect) is None and impl._str_impl.result_processor(dialect, None) is None)


def _bind_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    impl = type_.dialect_impl(dialect)
    return _json_bind if _ours(impl, dialect) else impl.bind_processor(dialect)


def _result_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    impl = type_.dialect_impl(dialect)
    if _ours(impl, dialect):
        if type(impl).result_processor is sqltypes.JSON.result_processor:
            return _json_result
        if type(impl) is _SQLITE_JSON:
            return _sqlite_json_result
    process: Callable[[Any], Any] | None = impl.result_processor(dialect, None)
    return process


def _json_bind(value: Any, _null: Any = sqltypes.JSON.NULL, _orjson: Callable[..., bytes] = orjson.dumps,
               _options: int = jsoncodec.OPTIONS, _dumps: Callable[[Any], str] = jsoncodec.dumps) -> Any:
    """SQLAlchemy's JSON bind processor (``none_as_null=False``): ``None`` and ``JSON.NULL`` are stored as the JSON
    ``null``, an SQL ``null()`` as SQL NULL, anything else as its JSON text (``jsoncodec.dumps``, its first try
    inlined)."""
    if value is _null:
        value = None
    elif isinstance(value, Null):
        return None
    try:
        return _orjson(value, option=_options).decode()
    except TypeError:  # what orjson refuses, jsoncodec.dumps hands to json (which says what it cannot store)
        return _dumps(value)


def _json_result(value: Any, _loads: Callable[[Any], Any] = jsoncodec.loads) -> Any:
    """SQLAlchemy's JSON result processor: SQL NULL is ``None``, anything else parsed from its JSON text."""
    return None if value is None else _loads(value)


def _sqlite_json_result(value: Any, _loads: Callable[[Any], Any] = jsoncodec.loads) -> Any:
    """SQLAlchemy's for SQLite: as ``_json_result``, and a number (not JSON text) comes back as it is."""
    if value is None:
        return None
    try:
        return _loads(value)
    except TypeError:
        if isinstance(value, numbers.Number):
            return value
        raise
