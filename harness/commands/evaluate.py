"""``zooconform eval``: score an external runtime's output files, as the seeds' vamp_eval.py does.

Reads ``--results DIR`` (one output per datalist line: ``<stem>.npz`` with ``output_0``, or
raw float32 ``<stem>.bin``/``.raw``; see harness/bridge.py) against the ``--prepared`` folder
(default: the results folder's parent when it holds prepare.json). Checks: agreement with
the torch reference always; top-1/top-5 when the images have labels, held to the card with
real weights on ImageNet. Writes ``results.json`` (the project's format) to ``--report-dir``
(default reports/bridge/<model>). Exit status: 0 pass, 1 a check failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..zoo import SOURCES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model id, e.g. repvgg_a0")
    p.add_argument("--results", required=True, metavar="DIR", help="the runtime's output files")
    p.add_argument("--prepared", default=None, metavar="DIR",
                   help="the folder zooconform prepare wrote (default: the results folder's parent)")
    p.add_argument("--report-dir", default=None, metavar="DIR", help="where results.json goes (default reports/bridge/<model>)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"),
                   help="what the runtime declares: fp32 (default), or fp16 for fp16-stored weights (an OpenVINO IR "
                        "saved with compress_to_fp16=True): judged against the fp16-weights floor prepare measured")
    p.add_argument("--source", default=None, choices=SOURCES,
                   help="where the weights come from: the card row to hold accuracy to (default: the closest row)")


class _Recorder(dict):
    def __call__(self, **figures) -> None:
        self.update(figures)


def _prepared_dir(args) -> Path:
    from ..bridge import META
    from ..errors import InputError

    if args.prepared:
        return Path(args.prepared)
    results = Path(args.results)
    for candidate in (results.parent, results):
        if (candidate / META).is_file():
            return candidate
    raise InputError(results, "no prepared folder given and none found beside the results",
                     fix="pass --prepared DIR, the folder given to zooconform prepare --out")


def main(args: argparse.Namespace, extra: list[str]) -> int:
    from .. import bridge
    from ..compare import CheckFailure
    from ..errors import ZooconformError
    from ..zoo import UnknownModelError, load_zoo, select

    if extra:
        print(f"zooconform eval: unknown arguments {extra}", file=sys.stderr)
        return 2
    try:
        card = select(load_zoo(), [args.model])[0]
    except UnknownModelError as e:
        print(f"zooconform eval: error: {e}", file=sys.stderr)
        return 2
    report = Path(args.report_dir) if args.report_dir else Path("reports") / "bridge" / card.id
    settings = {"model": card.id, "results": args.results, "prepared": args.prepared, "source": args.source,
                "precision": args.precision}
    records: list[dict] = []
    status = 0
    started = time.time()

    def run(check: str, fn) -> None:
        nonlocal status
        rec, t0 = _Recorder(), time.perf_counter()
        entry: dict[str, Any] = {"nodeid": f"bridge/{card.id}::{check}", "outcome": "passed", "figures": rec}
        try:
            fn(rec)
        except CheckFailure as e:
            rec.update(e.figures)
            entry.update(outcome="failed", message=str(e))
            status = max(status, 1)
        except ZooconformError as e:
            entry.update(outcome="error", message=f"{type(e).__name__}: {e}")
            status = 2
        entry["duration_s"] = round(time.perf_counter() - t0, 4)
        records.append(entry)

    loaded: dict = {}

    def load(rec) -> None:
        prepared = bridge.load_prepared(_prepared_dir(args), card.id)
        outputs, files, how = bridge.read_outputs(args.results, prepared)
        loaded.update(prepared=prepared, outputs=outputs, files=files)
        settings["prepared"] = str(prepared.folder)
        rec(images=len(files), matched=how, prepared=str(prepared.folder), data=prepared.meta.get("data"),
            weights=prepared.meta.get("weights", {}).get("kind"))

    run("read_outputs", load)
    if loaded:
        p, out, files = loaded["prepared"], loaded["outputs"], loaded["files"]
        run("agreement_with_reference",
            lambda rec: bridge.check_agreement(card, p, out, files, rec, precision=args.precision))
        if p.labelled:
            run("accuracy", lambda rec: bridge.check_accuracy(card, p, out, rec, source=args.source))
    path = report / "results.json"
    bridge.write_results(path, card.id, records, settings, status, started=started)
    for r in records:
        figs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["figures"].items() if k in (
            "images", "matched", "worst_file", "worst_rel_error", "worst_allowed", "min_cosine", "top1_agreement",
            "top1_pct", "top5_pct", "reference_top1_pct", "judged", "declared_precision"))
        print(f"{r['outcome'].upper():7} {r['nodeid']}" + (f": {figs}" if figs else ""))
        if r.get("message"):
            print(f"        {r['message']}")
    print(f"results: {path}")
    return status
