"""``python -m bench.readme_table [bench/results.json]``: rewrite README.md's speed table from one bench run.

The table between ``<!-- speed-table:start -->`` and ``<!-- speed-table:end -->`` in README.md is made of
the saved JSON alone: every threadflow row (peers and floors show in its "compared with" column as the
ratios the run computed), then the run's targets with MET / NOT MET. Nothing is typed by hand, so the README
says what the run measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .common import fmt_num

ROOT = Path(__file__).resolve().parent.parent
#: Rows of other systems (and floors): they appear as the ratios of threadflow's rows, not as rows.
PEERS = ("LangGraph", "DBOS", "Mastra", "floor", "numpy")
START, END = "<!-- speed-table:start -->", "<!-- speed-table:end -->"


def _result(row: dict[str, Any]) -> str:
    parts = []
    if row.get("throughput") is not None:
        parts.append(f"{fmt_num(row['throughput'])} {row['unit']}")
    if row.get("p50") is not None and "median" not in str(row.get("unit")):
        parts.append(f"p50 {fmt_num(row['p50'])} ms, p99 {fmt_num(row['p99'])} ms")
    return "; ".join(parts) or "-"


def table(data: dict[str, Any]) -> str:
    info = data["environment"]
    rows = data["rows"]
    lines = [
        f"Measured {info['date']} with `python -m bench{' --quick' if data.get('quick') else ''}` "
        f"({data.get('seconds', 0) / 60:.0f} min) on {info['cpus']} CPUs shared with other work (load average "
        f"{'/'.join(f'{v:.1f}' for v in info.get('load_average') or [])} at the start); the full table with every "
        "peer and floor row is [bench/RESULTS.md](bench/RESULTS.md).",
        "",
        "| benchmark | setup | threadflow | compared in the same run |",
        "|---|---|---|---|",
    ]
    for row in rows:
        if str(row["system"]).startswith(PEERS) or row.get("throughput") is None and row.get("p50") is None:
            continue  # peers show as this row's ratios; floors are listed after
        lines.append(" | ".join([
            f"| {row['bench']}",
            (row["setup"] if row["system"] == "threadflow" else f"{row['system']}: {row['setup']}").replace("|", "/"), _result(row), str(row.get("ratio") or "").replace("|", "/"),
        ]) + " |")
    floors = [r for r in rows if str(r["system"]).startswith("floor") and r.get("throughput") is not None]
    for row in floors:
        lines.append(f"| {row['bench']} | {row['system']}: {row['setup']} | {fmt_num(row['throughput'])} {row['unit']} | |")
    lines += ["", "Targets (issue 17 and earlier ones), as the run judged them:", ""]
    for t in data["targets"]:
        verdict = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        value = "-" if t["value"] is None else f"{fmt_num(t['value'])} {t['unit']}".strip()
        lines.append(f"- {t['bench']}: {t['text']}: {value}, **{verdict}**")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else ROOT / "bench" / "results.json"
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} block to rewrite")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table(json.loads(path.read_text()))}\n{END}{tail}")
    print(f"Rewrote the speed table in {readme} from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
