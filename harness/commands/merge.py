"""``zooconform merge DIR...``: merge the results of shards (or of any runs' folders) into
one report and append it to the history.

Each DIR is a run folder (or a results.json). The merged run is complete only if every
shard 1..N of the split is there, once, and complete; a missing shard is named in the
report. Merging the same folders twice never duplicates history lines.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders (or results.json files) to merge")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the merged report (default <report-dir>/<nightly|smoke>/<UTC timestamp>-merged)")
    p.add_argument("--report-dir", default="reports", help="default parent of --out and of history.jsonl")
    p.add_argument("--history", default=None, metavar="FILE", help="history file (default <report-dir>/history.jsonl)")
    p.add_argument("--no-history", action="store_true", help="do not append the merged run to the history")


def main(args: argparse.Namespace, extra: list[str]) -> int:
    from ..errors import ZooconformError
    from ..report.merge import load_results, merge_documents
    from ..report.nightly import default_history, new_run_folder, utc_stamp, write_report
    from ..report.summary import one_screen
    from .run import merge_junit

    if extra:
        print(f"zooconform merge: unknown arguments {extra}", file=sys.stderr)
        return 4
    try:
        parts = [(str(d), load_results(d)) for d in args.dirs]
        for label, doc in parts:
            doc.setdefault("source", label)
        merged = merge_documents(parts, sequential=False)
        if args.out:
            out = Path(args.out)
            if out.exists() and any(out.iterdir()):
                print(f"zooconform merge: {out} exists and is not empty; pick a new --out", file=sys.stderr)
                return 4
            out.mkdir(parents=True, exist_ok=True)
        else:
            tier = (merged.get("settings") or {}).get("tier")
            out = new_run_folder(Path(args.report_dir) / ("nightly" if tier == "full" else (tier or "merged")),
                                 utc_stamp() + "-merged")
        junits = [(f"part{i + 1}", Path(d) / "junit.xml") for i, d in enumerate(args.dirs)
                  if Path(d).is_dir() and (Path(d) / "junit.xml").exists()]
        if junits:
            merge_junit(junits, out / "junit.xml")
        history = Path(args.history) if args.history else default_history(args.report_dir)
        written = write_report(merged, out, history, append_history=not args.no_history)
    except ZooconformError as e:
        print(f"zooconform merge: {e}", file=sys.stderr)
        return 4
    for line in one_screen(merged):
        print(line)
    print(f"report: {written.index}")
    if written.history_error:
        print(f"zooconform merge: {written.history_error}", file=sys.stderr)
        return 6  # an input error (harness/commands/run.py INPUT_ERROR): the report is written
    if not args.no_history:
        print(f"history: {written.history} (+{written.appended} lines)")
    if not merged["complete"]:
        print("INCOMPLETE: " + "; ".join(merged["incomplete_reasons"]), file=sys.stderr)
        return 2
    return int(merged.get("exitstatus") or 0)
