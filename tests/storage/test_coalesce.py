"""Reads of one key each, made at the same moment, share one query; a lone reader never waits."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from storage.coalesce import Coalescer


class Source:
    """The outside of a coalescer: records every ``load_many`` call, answers ``key * 10 + version``."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.version = 0
        self.fail_with: Exception | None = None
        #: a key whose row cannot be read (a corrupt record): any read that includes it fails
        self.bad_key: int | None = None

    async def load_many(self, keys: Sequence[int]) -> Mapping[int, int]:
        self.batches.append(list(keys))
        if self.fail_with is not None:
            raise self.fail_with
        if self.bad_key in keys:
            raise ValueError(f"row {self.bad_key} is corrupt")
        return {k: k * 10 + self.version for k in keys if k >= 0}


async def test_callers_in_one_loop_turn_share_one_read() -> None:
    source = Source()
    loader = Coalescer(source.load_many, missing=-1)

    values = await asyncio.gather(*(loader.load(k) for k in [1, 2, 3, 2, 4]))

    assert values == [10, 20, 30, 20, 40]
    # The first caller reads at once; everyone else who called in that turn shares the next read,
    # a key asked for twice included.
    assert source.batches == [[1], [2, 3, 4]]


async def test_a_lone_caller_reads_by_itself_each_time() -> None:
    source = Source()
    loader = Coalescer(source.load_many, missing=-1)

    assert await loader.load(1) == 10
    assert await loader.load(2) == 20  # the same task again, without yielding: it does not wait for a batch
    assert await loader.load(3) == 30
    assert source.batches == [[1], [2], [3]]


async def test_batches_are_capped_and_every_caller_gets_its_own_value() -> None:
    source = Source()
    loader = Coalescer(source.load_many, missing=-1, max_keys=4)

    values = await asyncio.gather(*(loader.load(k) for k in range(10)))

    assert values == [k * 10 for k in range(10)]
    assert source.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]


async def test_keys_the_source_does_not_have_get_the_missing_value() -> None:
    source = Source()
    loader = Coalescer(source.load_many, missing=-1)

    assert await asyncio.gather(loader.load(-5), loader.load(5), loader.load(-6)) == [-1, 50, -1]


async def test_nothing_is_cached_from_one_turn_to_the_next() -> None:
    source = Source()
    loader = Coalescer(source.load_many, missing=-1)

    assert await asyncio.gather(loader.load(1), loader.load(2)) == [10, 20]
    source.version = 1  # what a commit in between would do
    assert await asyncio.gather(loader.load(1), loader.load(2)) == [11, 21]


async def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_reads_again() -> None:
    source = Source()
    loader = Coalescer(source.load_many, missing=-1)
    source.fail_with = RuntimeError("database is gone")

    results = await asyncio.gather(*(loader.load(k) for k in [1, 2, 3]), return_exceptions=True)

    assert all(isinstance(r, RuntimeError) and str(r) == "database is gone" for r in results)
    source.fail_with = None
    assert await asyncio.gather(loader.load(1), loader.load(2)) == [10, 20]


async def test_one_bad_record_fails_only_its_own_callers() -> None:
    source = Source()
    loader = Coalescer(source.load_many, missing=-1)
    source.bad_key = 3

    results = await asyncio.gather(*(loader.load(k) for k in [1, 2, 3, 4, 3]), return_exceptions=True)

    assert results[:2] == [10, 20] and results[3] == 40
    assert [str(r) for r in (results[2], results[4])] == ["row 3 is corrupt"] * 2
    # The shared read failed, so each of its keys was read again on its own.
    assert source.batches == [[1], [2, 3, 4], [2], [3], [4]]


def test_a_loader_outlives_its_event_loop() -> None:
    """A loop that stops before a batch is read leaves nothing behind for the next loop to wait on."""
    source = Source()
    loader = Coalescer(source.load_many, missing=-1)

    async def first() -> int:
        return await loader.load(1)

    assert asyncio.run(first()) == 10
    assert asyncio.run(first()) == 10
    assert source.batches == [[1], [1]]


@pytest.mark.parametrize("concurrent", [1, 2, 300])
async def test_any_number_of_callers_complete(concurrent: int) -> None:
    source = Source()
    loader = Coalescer(source.load_many, missing=-1)

    values = await asyncio.gather(*(loader.load(k) for k in range(concurrent)))

    assert values == [k * 10 for k in range(concurrent)]
    assert sorted(k for batch in source.batches for k in batch) == list(range(concurrent))
