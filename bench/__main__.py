"""``python -m bench [--quick] [--only NAME[,NAME]]``: run the benchmarks, print a table, save JSON and Markdown.

Benchmarks never fail: a system that cannot run (a peer not installed, PostgreSQL unreachable) gets a row
that says why, and the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import Report, Row, Target, environment, markdown_table, text_table

HERE = Path(__file__).resolve().parent

#: name -> module (each has ``NAME``, ``BENCH`` and ``async run(report, quick)``)
BENCHMARKS = {
    "steps": "bench.steps",
    "waiting": "bench.waiting",
    "slack": "bench.slack",
    "recall": "bench.recall",
    "scaleout": "bench.scaleout",
    "inspector": "bench.inspector",
    "streaming": "bench.streaming",
    "postgres": "bench.postgres",
    "footprint": "bench.footprint",
    "workspaces": "bench.workspaces",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small N: a smoke run in well under a minute")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help=f"run only these benchmarks (repeat or comma-separate): {', '.join(BENCHMARKS)}")
    p.add_argument("--json", type=Path, default=None, help="where to save the JSON (default bench/results[-quick].json)")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="do not run anything: rewrite the Markdown from a saved JSON file")
    p.add_argument("--markdown", type=Path, default=None,
                   help="where to write the Markdown table (default bench/RESULTS.md; bench/RESULTS-quick.md with --quick)")
    return p.parse_args(argv)


def render_markdown(report: Report, info: dict[str, Any], quick: bool, seconds: float) -> str:
    v = info["versions"]
    lines = [
        "# threadflow benchmarks",
        "",
        f"Measured {info['date']} with `python -m bench{' --quick' if quick else ''}` ({seconds:.0f} s) on "
        f"{info['cpus']} CPUs, Python {info['python']}, SQLite {info['sqlite']}; every peer ran in the same "
        "process run on the same machine.",
        f"threadflow {v.get('threadflow')}, SQLAlchemy {v.get('sqlalchemy')}, aiosqlite {v.get('aiosqlite')}, "
        f"asyncpg {v.get('asyncpg')}; peers: LangGraph {v.get('langgraph') or 'not installed'} "
        f"(langgraph-checkpoint-sqlite {v.get('langgraph-checkpoint-sqlite') or '-'}), "
        f"DBOS {v.get('dbos') or 'not installed'}.",
        f"Load average (1/5/15 min) at start {_load(info.get('load_average'))}, at the end "
        f"{_load(info.get('load_average_end'))}: other work on the machine makes absolute numbers noisy; the "
        "ratios between systems measured in the same run are steadier.",
        "Latencies are per operation in milliseconds (a whole run for benchmark 1, a query for 4); "
        "throughput is measured over the whole batch.",
        "",
        markdown_table(report.rows),
        "",
    ]
    if report.targets:
        lines += ["**Targets**", ""]
        lines += [f"- {t.bench}: {t.line()}" for t in report.targets]
        lines.append("")
    if report.notes:
        lines += ["**Notes**", ""]
        lines += [f"- {n}" for n in report.notes]
        lines.append("")
    return "\n".join(lines)


def _load(values: Any) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "n/a"


def report_from_json(path: Path) -> tuple[Report, dict[str, Any], bool, float]:
    data = json.loads(path.read_text())
    report = Report(rows=[Row(**r) for r in data["rows"]],
                    targets=[Target(**{k: v for k, v in t.items() if k != "met"}) for t in data["targets"]],
                    notes=list(data.get("notes", [])))
    return report, data["environment"], bool(data.get("quick")), float(data.get("seconds", 0))


async def main_async(args: argparse.Namespace) -> Report:
    names = [n.strip() for chunk in args.only for n in chunk.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    report = Report()
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        print(f"\n== {module.BENCH} ({'quick' if args.quick else 'full'}) ==", flush=True)
        started = time.perf_counter()
        try:
            await module.run(report, args.quick)
        except Exception as exc:  # a benchmark never fails the run: it reports what went wrong
            traceback.print_exc()
            report.failed(module.BENCH, "(benchmark)", exc)
        print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        report, info, quick, seconds = report_from_json(args.render)
        md_path = args.markdown or HERE / f"RESULTS{'-quick' if quick else ''}.md"
        md_path.write_text(render_markdown(report, info, quick, seconds))
        print(f"Wrote {md_path}")
        return 0
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    info = environment()
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    started = time.perf_counter()
    report = asyncio.run(main_async(args))
    seconds = time.perf_counter() - started
    info["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print("\n" + text_table(report.rows))
    if report.targets:
        print("\nTargets:")
        for t in report.targets:
            print(f"  {t.bench}: {t.line()}")
    suffix = "-quick" if args.quick else ""
    json_path = args.json or HERE / f"results{suffix}.json"
    md_path = args.markdown or HERE / f"RESULTS{suffix}.md"
    payload = {
        "environment": info, "quick": args.quick, "seconds": seconds,
        "rows": [r.to_json() for r in report.rows],
        "targets": [{**t.__dict__, "met": t.met} for t in report.targets],
        "notes": report.notes,
    }
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text(render_markdown(report, info, args.quick, seconds))
    print(f"\nSaved {json_path} and {md_path} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["Row", "main"]
