"""Shared pieces of the benchmarks: result rows, percentiles, timing, and the table they print."""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@dataclass
class Row:
    """One measured configuration: what ran, how fast, how long each operation took (ms)."""

    bench: str
    system: str
    setup: str = ""
    n: int | None = None
    throughput: float | None = None
    unit: str = ""
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    total_s: float | None = None
    ratio: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Target:
    bench: str
    text: str
    value: float | None
    limit: float
    higher_is_better: bool
    unit: str

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.higher_is_better else self.value < self.limit

    def line(self) -> str:
        if self.value is None:
            return f"{self.text}: not measured"
        verdict = "MET" if self.met else "NOT MET"
        return f"{self.text}: {fmt_num(self.value)} {self.unit} -> {verdict}"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print("  " + short_line(row), flush=True)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def target(self, bench: str, text: str, value: float | None, limit: float, *, higher_is_better: bool,
               unit: str) -> None:
        t = Target(bench, text, value, limit, higher_is_better, unit)
        self.targets.append(t)
        print(f"  target: {t.line()}", flush=True)

    def failed(self, bench: str, system: str, exc: BaseException) -> Row:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1][:200]
        return self.add(Row(bench=bench, system=system, note=f"error: {detail}"))


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def latency_fields(seconds: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 in milliseconds from latencies in seconds."""
    ms = [s * 1000.0 for s in seconds]
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "p99": percentile(ms, 99)}


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def fmt_num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.{digits}f}"


def short_line(row: Row) -> str:
    parts = [f"{row.system}"]
    if row.setup:
        parts.append(f"[{row.setup}]")
    if row.throughput is not None:
        parts.append(f"{fmt_num(row.throughput)} {row.unit}")
    if row.p50 is not None:
        parts.append(f"p50 {fmt_num(row.p50)} ms")
    if row.p95 is not None:
        parts.append(f"p95 {fmt_num(row.p95)} ms")
    if row.p99 is not None:
        parts.append(f"p99 {fmt_num(row.p99)} ms")
    if row.ratio:
        parts.append(f"({row.ratio})")
    if row.note:
        parts.append(f"- {row.note}")
    return " ".join(parts)


COLUMNS = ["Benchmark", "System", "Setup", "N", "Throughput", "p50 ms", "p95 ms", "p99 ms", "Ratio", "Notes"]


def table_cells(row: Row) -> list[str]:
    throughput = f"{fmt_num(row.throughput)} {row.unit}" if row.throughput is not None else "-"
    return [row.bench, row.system, row.setup, "-" if row.n is None else f"{row.n:,}", throughput,
            fmt_num(row.p50), fmt_num(row.p95), fmt_num(row.p99), row.ratio or "", row.note]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * len(COLUMNS)) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in table_cells(row)) + " |")
    return "\n".join(lines)


def text_table(rows: list[Row]) -> str:
    cells = [COLUMNS] + [table_cells(r) for r in rows]
    widths = [min(60, max(len(c[i]) for c in cells)) for i in range(len(COLUMNS))]
    out = []
    for k, line in enumerate(cells):
        out.append("  ".join(c[:60].ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "versions": {d: version_of(d) for d in (
            "threadflow", "sqlalchemy", "aiosqlite", "asyncpg", "langgraph", "langgraph-checkpoint",
            "langgraph-checkpoint-sqlite", "dbos", "slack-bolt", "numpy")},
    }
    return info


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory on the same disk as /tmp, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"tfbench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def env(**values: str | None) -> Iterator[None]:
    """Set environment variables for the duration (None removes one)."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def until(predicate: Callable[[], Awaitable[Any]], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``await predicate()`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False


async def run_limited(n: int, concurrency: int, fn: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """Call ``fn(i)`` for i in range(n) with at most ``concurrency`` in flight; return results in order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with sem:
            return await fn(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


class Clock:
    """``with Clock() as c: ...`` then ``c.seconds``."""

    def __enter__(self) -> Clock:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def restore_default_executor() -> None:
    """Give the running loop a fresh default executor: DBOS.launch() installs its own, DBOS.destroy() shuts
    it down, and every later ``run_in_executor(None, ...)`` (the benchmarks that follow) would fail."""
    from concurrent.futures import ThreadPoolExecutor

    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(thread_name_prefix="bench"))
