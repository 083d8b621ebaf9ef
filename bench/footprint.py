"""10. Footprint: what a waiting run costs a process that serves it, and how long the CLI takes to start.

Memory: N runs are started and suspend in their first step (they wait for an approval). Then a worker
process (``python -m bench.worker``: an Engine that executes runs, as ``threadflow worker`` is) opens that
database and serves it for a few dispatcher polls; its resident set size (``VmRSS``) is compared with the
same worker serving an empty database. A waiting run must cost a row in the database, not a task or an
object in every replica: the difference should not grow with N.

CLI start: the whole process, interpreter start-up included, as a person sees it: ``threadflow --help`` and
``threadflow runs`` on a small database (20 finished runs), median of several runs after one warm-up (so
Python's bytecode cache is written, as after ``pip install``). The targets are judged on those rows. Two
more rows, without targets, time the same commands with threadflow's own modules compiled from source on
every start (``PYTHONDONTWRITEBYTECODE=1`` and no ``__pycache__`` of ours, as on a machine that sets it;
the installed libraries keep their bytecode): a copy of ``bot``, ``storage`` and ``workflows`` without
``__pycache__`` is put first on ``PYTHONPATH``.

``python -m bench.footprint --cli [--repeats N]`` runs only the CLI rows (seconds, not the 100,000 runs).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .common import Clock, Report, Row, run_limited, scratch_dir, sqlite_url, until
from .workloads import NOOP, SUSPEND

NAME = "footprint"
BENCH = "10. footprint"
ROOT = Path(__file__).resolve().parent.parent
SERVE_SECONDS = 3.0


def sizes(quick: bool) -> dict[str, int]:
    return {"waiting": 10_000, "cli_repeats": 3} if quick else {"waiting": 100_000, "cli_repeats": 7}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/<pid>/status")


async def _worker_rss(url: str) -> int:
    """RSS (KiB) of a worker that has opened ``url`` and served it for SERVE_SECONDS."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.worker", url, "--capacity", "200", "--poll", "0.1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd=str(ROOT))
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"worker did not start: {line!r}")
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        await asyncio.sleep(SERVE_SECONDS)
        rss = _rss_kib(proc.pid)
        proc.stdin.write(b"stop\n")
        proc.stdin.close()
        await asyncio.wait_for(proc.communicate(), 60)
        return rss
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def waiting_memory(report: Report, n: int) -> None:
    from workflows import Engine

    with scratch_dir("footprint") as directory:
        empty_url, full_url = sqlite_url(directory / "empty.db"), sqlite_url(directory / "waiting.db")
        for url in (empty_url, full_url):  # both schemas exist before a worker opens them
            e = Engine(url, execute=False)
            await e.open()
            await e.close()
        engine = Engine(full_url, poll_interval=1.0)
        engine.register(SUSPEND, NOOP)
        await engine.open()
        try:
            with Clock() as started:
                await run_limited(n, 500, lambda i: engine.start(SUSPEND.id, {}))

                async def all_suspended() -> bool:
                    return await engine.store.count_runs("suspended") >= n

                ok = await until(all_suspended, 900, 0.05)
            if not ok:
                raise RuntimeError(f"not all {n:,} runs suspended after 900 s")
        finally:
            await engine.close()
        empty = await _worker_rss(empty_url)
        full = await _worker_rss(full_url)
        size_mb = (directory / "waiting.db").stat().st_size / 1e6
    delta_mb = (full - empty) / 1024
    report.add(Row(bench=BENCH, system="threadflow", setup=f"{n:,} suspended runs, SQLite, 1 worker process", n=n,
                   throughput=delta_mb, unit="MB RSS added",
                   note=(f"worker RSS {full / 1024:.0f} MB serving them vs {empty / 1024:.0f} MB serving an empty "
                         f"database ({SERVE_SECONDS:.0f} s of dispatcher polls each); database file {size_mb:.0f} MB; "
                         f"suspending them took {started.seconds:.0f} s"),
                   extra={"rss_kib_waiting": full, "rss_kib_empty": empty}))
    report.target(BENCH, f"{n:,} suspended runs add < 50 MB to a worker's RSS", delta_mb, 50, higher_is_better=False,
                  unit="MB")


#: threadflow's own packages (what a source-only start compiles).
PACKAGES = ("bot", "storage", "workflows")


def _source_copy(directory: Path) -> Path:
    """A copy of threadflow's packages without bytecode, for starts that compile them from source."""
    target = directory / "source"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _time_command(argv: list[str], cwd: Path, repeats: int, *, source: Path | None = None) -> list[float]:
    """Whole-process times of ``argv``; ``source``: with our packages from there, compiled at every start."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["THREADFLOW_DATABASE_URL"] = sqlite_url(cwd / "cli.db")
    if source is not None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=True, timeout=120)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=True, timeout=120)
        times.append(time.perf_counter() - t0)
    return times


async def cli_start(report: Report, repeats: int) -> None:
    from workflows import Engine

    exe = shutil.which("threadflow")
    base = [exe] if exe else [sys.executable, "-m", "bot.cli"]
    with scratch_dir("cli") as directory:
        engine = Engine(sqlite_url(directory / "cli.db"), poll_interval=1.0)
        engine.register(NOOP)
        await engine.open()
        try:
            for _ in range(20):
                await (await engine.start(NOOP.id, {})).result()
        finally:
            await engine.close()
        source = _source_copy(directory)
        for args, target in ((["--help"], 0.15), (["runs"], 0.35)):
            setup = f"`threadflow {' '.join(args)}`" + (" on a database of 20 runs" if args == ["runs"] else "")
            times = _time_command(base + args, directory, repeats)
            median = statistics.median(times)
            report.add(Row(bench=BENCH, system="threadflow CLI", setup=setup, n=repeats,
                           throughput=median * 1000, unit="ms (median)", p50=median * 1000, total_s=sum(times),
                           note=f"whole process, interpreter start-up included; min {min(times) * 1000:.0f} ms, "
                                f"max {max(times) * 1000:.0f} ms"))
            report.target(BENCH, f"`threadflow {' '.join(args)}` <= {target:g} s", median, target + 1e-9,
                          higher_is_better=False, unit="s")
            times = _time_command(base + args, directory, repeats, source=source)
            median = statistics.median(times)
            report.add(Row(bench=BENCH, system="threadflow CLI (no bytecode of ours)", setup=setup, n=repeats,
                           throughput=median * 1000, unit="ms (median)", p50=median * 1000, total_s=sum(times),
                           note=f"as above, our modules compiled from source at every start "
                                f"(PYTHONDONTWRITEBYTECODE=1); min {min(times) * 1000:.0f} ms, "
                                f"max {max(times) * 1000:.0f} ms"))


async def run(report: Report, quick: bool) -> None:
    size = sizes(quick)
    try:
        await cli_start(report, size["cli_repeats"])
    except Exception as exc:
        report.failed(BENCH, "threadflow CLI", exc)
    try:
        await waiting_memory(report, size["waiting"])
    except Exception as exc:
        report.failed(BENCH, "threadflow (waiting runs' memory)", exc)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.footprint --cli``: only the CLI rows, printed (nothing is saved)."""
    import argparse

    from .common import text_table

    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=main.__doc__)
    parser.add_argument("--cli", action="store_true", required=True, help="time the CLI's start only")
    parser.add_argument("--repeats", type=int, default=sizes(False)["cli_repeats"])
    args = parser.parse_args(argv)
    report = Report()
    asyncio.run(cli_start(report, args.repeats))
    print("\n" + text_table(report.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
