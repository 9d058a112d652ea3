"""``zooconform report RESULTS``: render (again) the report of a run from its results.json.

Writes ``index.html`` and ``summary.md`` beside the results (or into ``--out``), with the
trend plots and regression column from the history when there is one. The history is only
read, unless ``--append-history`` (a run already appended by ``zooconform run`` is never
appended twice).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="a run folder or its results.json")
    p.add_argument("--out", default=None, metavar="DIR", help="write the report here (default: beside the results)")
    p.add_argument("--report-dir", default="reports", help="where history.jsonl lives (default reports)")
    p.add_argument("--history", default=None, metavar="FILE", help="history file (default <report-dir>/history.jsonl)")
    p.add_argument("--append-history", action="store_true", help="also append this run to the history")


def main(args: argparse.Namespace, extra: list[str]) -> int:
    from ..errors import ZooconformError
    from ..report.merge import load_results
    from ..report.nightly import default_history, write_report
    from ..report.summary import one_screen

    if extra:
        print(f"zooconform report: unknown arguments {extra}", file=sys.stderr)
        return 4
    src = Path(args.results)
    try:
        doc = load_results(src)
        src_folder = src if src.is_dir() else src.parent
        out = Path(args.out) if args.out else src_folder
        history = Path(args.history) if args.history else default_history(args.report_dir)
        use_history = history if (history.exists() or args.append_history) else None
        written = write_report(doc, out, use_history, append_history=args.append_history,
                               write_results=out.resolve() != src_folder.resolve())
    except ZooconformError as e:
        print(f"zooconform report: {e}", file=sys.stderr)
        return 4
    for line in one_screen(doc):
        print(line)
    print(f"report: {written.index}")
    if written.history_error:
        print(f"zooconform report: {written.history_error}", file=sys.stderr)
        return 6  # an input error (harness/commands/run.py INPUT_ERROR): the report is written
    return 0
