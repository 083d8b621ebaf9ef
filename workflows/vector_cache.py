"""The newest vectors of each recall scope, kept in memory between queries.

Recall compares a query with the newest ``vector_candidates`` vectors of a thread or resource. Reading
them all from the database on every query (3 MB for 2,000 384-d vectors) cost more than the similarity
itself. Vectors of a message never change and new messages get higher ids, so a scope's matrix is read
once and then only extended with the vectors written since (``message_id > newest seen``).

Staleness is bounded: a vector written for an *older* message by another process (a backfill with
``add_vectors``), or a message pruned elsewhere, is seen at the next full reload, at most
``REFRESH_SECONDS`` later; a pruned id that is still cached only finds nothing to show. Writes through
this process's memory store clear the cache at once. Memory is bounded by ``MAX_BYTES`` (least recently
used scopes are dropped).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage.memory_store import MemoryStore

if TYPE_CHECKING:
    import numpy as np

#: A scope's cached vectors are reloaded whole at least this often (see the module's docstring).
REFRESH_SECONDS = 60.0
#: Upper bound of the cached matrices, all scopes together.
MAX_BYTES = 64 * 1024 * 1024

ScopeKey = tuple[str, str | None, str | None, int | None, int]


@dataclass
class ScopeVectors:
    """Newest first: ``ids[i]`` is the message of ``matrix[i]``; ``norms`` are the rows' lengths."""

    ids: list[int]
    matrix: np.ndarray
    norms: np.ndarray
    newest: int
    loaded_at: float
    generation: int

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes + self.norms.nbytes)


class VectorCache:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self._scopes: OrderedDict[ScopeKey, ScopeVectors] = OrderedDict()

    async def vectors(
        self, *, model: str, dim: int, thread_id: str | None, resource_id: str | None, limit: int | None
    ) -> ScopeVectors:
        """The newest ``limit`` vectors of ``dim`` float32 values of the scope (others are not comparable)."""
        key: ScopeKey = (model, thread_id, resource_id, limit, dim)
        entry = self._scopes.get(key)
        now = time.monotonic()
        if entry is None or now - entry.loaded_at > REFRESH_SECONDS or entry.generation != self.store.vector_generation:
            generation = self.store.vector_generation
            rows = await self.store.vector_rows(model=model, thread_id=thread_id, resource_id=resource_id, limit=limit)
            entry = _build(rows, dim, now, generation)
        else:
            rows = await self.store.vector_rows(
                model=model, thread_id=thread_id, resource_id=resource_id, limit=limit, after_id=entry.newest
            )
            if rows:
                entry = _extend(entry, _build(rows, dim, entry.loaded_at, entry.generation), limit)
        self._scopes[key] = entry
        self._scopes.move_to_end(key)
        self._trim()
        return entry

    def clear(self) -> None:
        self._scopes.clear()

    def _trim(self) -> None:
        total = sum(e.nbytes for e in self._scopes.values())
        while total > MAX_BYTES and len(self._scopes) > 1:
            _, dropped = self._scopes.popitem(last=False)
            total -= dropped.nbytes


def _build(rows: list[tuple[int, bytes]], dim: int, loaded_at: float, generation: int) -> ScopeVectors:
    import numpy as np  # on first use: a CLI command that never recalls by vector does not load numpy

    newest = max((mid for mid, _ in rows), default=0)  # of every row read, comparable or not
    width = dim * 4
    rows = [r for r in rows if len(r[1]) == width]
    matrix = (
        np.frombuffer(b"".join(vector for _, vector in rows), dtype=np.float32).reshape(len(rows), dim)
        if rows else np.zeros((0, dim), dtype=np.float32)
    )
    # row norms without a matrix-sized temporary (np.linalg.norm squares a copy of the matrix)
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    return ScopeVectors([mid for mid, _ in rows], matrix, norms, newest, loaded_at, generation)


def _extend(old: ScopeVectors, new: ScopeVectors, limit: int | None) -> ScopeVectors:
    import numpy as np  # on first use: a CLI command that never recalls by vector does not load numpy

    keep = len(old.ids) if limit is None else max(0, limit - len(new.ids))
    return ScopeVectors(
        ids=(new.ids + old.ids[:keep])[:limit] if limit is not None else new.ids + old.ids,
        matrix=np.concatenate([new.matrix, old.matrix[:keep]])[:limit],
        norms=np.concatenate([new.norms, old.norms[:keep]])[:limit],
        newest=max(new.newest, old.newest),
        loaded_at=old.loaded_at,
        generation=old.generation,
    )
