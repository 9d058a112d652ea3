"""``zooconform budgets``: latency budget profiles: record one from quiet runs, check the
shipped ones, summarize runs (flake check), regenerate the seeds' T4 TensorRT table."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..latency.budgets import BUDGETS, load_profile, profile_files
from ..latency.recording import profile_text, runs_summary, t4_tensorrt_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="budgets_verb", required=True)
    rec = sub.add_parser("record", help="write a profile from results.json / --benchmark-json files of quiet runs")
    rec.add_argument("files", nargs="+", type=Path)
    rec.add_argument("--profile", required=True, help="profile name (fixtures/budgets/NAME.toml)")
    rec.add_argument("--headroom", required=True, type=float,
                     help="budget = slowest quiet median x this (>= 1; choose from the printed run-to-run spread)")
    rec.add_argument("--description", default="")
    rec.add_argument("--out", type=Path, default=None)
    chk = sub.add_parser("check", help="validate profiles (default: all in fixtures/budgets)")
    chk.add_argument("names", nargs="*")
    summ = sub.add_parser("summary", help="outcomes and figures of the latency tests across runs (flake check)")
    summ.add_argument("files", nargs="+", type=Path)
    t4 = sub.add_parser("t4", help="regenerate the t4-tensorrt profile from the registry")
    t4.add_argument("--out", type=Path, default=BUDGETS / "t4-tensorrt.toml")


def main(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    try:
        if args.budgets_verb == "record":
            docs = [json.loads(f.read_text(encoding="utf-8")) for f in args.files]
            text, report = profile_text(docs, args.profile, args.headroom, args.description, [str(f) for f in args.files])
            out = args.out or BUDGETS / f"{args.profile}.toml"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            load_profile(out)
            print("\n".join(report))
            print(f"wrote {out}")
        elif args.budgets_verb == "check":
            paths = [BUDGETS / f"{n}.toml" if not n.endswith(".toml") else Path(n) for n in args.names] or profile_files()
            for path in paths:
                prof = load_profile(path)
                cells = sum(len(b) for m in prof.latency.values() for b in m.values())
                print(f"{path}: ok ({prof.runtime}, {cells} latency budgets{', provisional' if prof.provisional else ''})")
        elif args.budgets_verb == "summary":
            docs = [json.loads(f.read_text(encoding="utf-8")) for f in args.files]
            print("\n".join(runs_summary(docs, [str(f) for f in args.files])))
        else:
            args.out.write_text(t4_tensorrt_text(), encoding="utf-8")
            load_profile(args.out)
            print(f"wrote {args.out}")
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="zooconform budgets", description="latency budget profiles")
    add_arguments(p)
    return main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
