"""``zooconform sensitivity``: measure what a pass rules out (issue 20, item 5): per check family,
the smallest planted defect the suite's real check detects on one smoke model, written to
fixtures/sensitivity.json for the nightly report's "What a pass rules out" section."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..errors import ZooconformError
from ..sensitivity import DEFAULT_OUT, FAMILIES, measure


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="repvgg_a0",
                   help="the one smoke model the defects are planted in (default repvgg_a0, the cheapest)")
    p.add_argument("--families", default=",".join(FAMILIES),
                   help=f"comma-separated subset of {','.join(FAMILIES)} (default: all)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the document written (default {DEFAULT_OUT})")


def command_line(args: argparse.Namespace) -> str:
    parts = ["zooconform", "sensitivity", "--models", args.models]
    if args.families != ",".join(FAMILIES):
        parts += ["--families", args.families]
    if Path(args.out).resolve() != DEFAULT_OUT:
        parts += ["--out", str(args.out)]
    return shlex.join(parts)


def main(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    models = [m for m in args.models.split(",") if m]
    if len(models) != 1:
        print(f"zooconform sensitivity: --models takes one model, got {args.models!r}", file=sys.stderr)
        return 4
    families = [f for f in args.families.split(",") if f]
    try:
        doc = measure(models[0], families, command_line(args), progress=lambda line: print(line, flush=True))
    except ZooconformError as e:
        print(f"zooconform sensitivity: {e}", file=sys.stderr)
        return 4
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0
