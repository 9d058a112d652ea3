"""``zooconform durations [REPORT...] [--out FILE] [--plan N]``: (re)write the durations file that
``--shard I/N`` balances by, from runs' results, and show the split it gives.

Each REPORT is a run folder (its results.json, else its junit.xml; a ``-j`` run's folder holds
both phases' results), a merged report's folder, a results.json or a junit.xml. Each test's seconds (setup + call + teardown, as
pytest-split's ``--store-durations`` adds them) replace that test's entry in the file; the
other entries stay (``--replace``: start from an empty file), as pytest-split updates its
``.test_durations``. A run that did not complete still gives the seconds of the tests it
finished. ``--plan N`` prints the split into N shards that the file gives for the tier or
models, next to round-robin's.
"""
from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

USAGE = 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..shards import DURATIONS_FILE

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1] if __doc__ else None
    p.add_argument("reports", nargs="*", metavar="REPORT",
                   help="run folders, results.json or junit.xml files whose test durations to store")
    p.add_argument("--out", "--durations-file", dest="out", default=str(DURATIONS_FILE), metavar="FILE",
                   help="the durations file to update and plan from (default: the shipped fixtures file)")
    p.add_argument("--replace", action="store_true", help="drop the file's other entries (pytest-split's --clean-durations)")
    p.add_argument("--plan", type=int, default=None, metavar="N", help="print the split into N shards the file gives")
    p.add_argument("--tier", choices=("smoke", "full"), default="full", help="the models --plan splits (default full)")
    p.add_argument("--models", default=None, help="comma-separated ids for --plan instead of the tier")


def durations_of(report: Path) -> dict[str, float]:
    """{node id: seconds} of one run folder, results.json or junit.xml."""
    from ..errors import InputError
    from ..report.merge import load_results

    if report.is_dir():
        if (report / "results.json").is_file():
            report = report / "results.json"
        elif (report / "junit.xml").is_file():
            report = report / "junit.xml"
        else:
            raise InputError(report, "neither results.json nor junit.xml here",
                             fix="pass a run folder of zooconform run (reports/<tier>/<timestamp>) or its files")
    if report.suffix == ".xml":
        return _junit_durations(report)
    doc = load_results(report)
    return {t["nodeid"]: float(t.get("duration_s") or 0.0) for t in doc["tests"]}


def _junit_durations(file: Path) -> dict[str, float]:
    """JUnit (pytest's xunit1/xunit2): classname ``suites.test_card`` + name -> the node id
    ``suites/test_card.py::name`` (a class in between: ``suites/test_x.py::Class::name``)."""
    from ..errors import InputError

    try:
        root = ET.parse(file).getroot()
    except (OSError, ET.ParseError) as e:
        raise InputError(file, f"not readable JUnit XML ({e})", fix="pass the junit.xml pytest wrote") from None
    out: dict[str, float] = {}
    for case in root.iter("testcase"):
        parts = (case.get("classname") or "").split(".")
        name = case.get("name") or ""
        # the module is the longest prefix of the dotted class name that is a file
        for cut in range(len(parts), 0, -1):
            module = Path(*parts[:cut]).with_suffix(".py")
            if module.is_file() or cut == 1:
                nodeid = "::".join([module.as_posix(), *parts[cut:], name])
                break
        else:
            continue
        try:
            out[nodeid] = out.get(nodeid, 0.0) + float(case.get("time") or 0.0)
        except ValueError:
            raise InputError(file, f"testcase {nodeid}: time={case.get('time')!r} is no number",
                             fix="pass the junit.xml pytest wrote") from None
    return out


def main(args: argparse.Namespace, extra: list[str]) -> int:
    from .. import shards
    from ..errors import ZooconformError
    from ..zoo import UnknownModelError, load_zoo, select

    if extra:
        print(f"zooconform durations: unknown arguments {extra}", file=sys.stderr)
        return USAGE
    if not args.reports and args.plan is None:
        print("zooconform durations: nothing to do: give REPORT folders to store, --plan N to show a split, or both",
              file=sys.stderr)
        return USAGE
    if args.plan is not None and args.plan < 1:
        print(f"zooconform durations: --plan {args.plan}: expected a number of shards >= 1", file=sys.stderr)
        return USAGE
    out = Path(args.out)
    try:
        if args.reports:
            current = {} if args.replace else shards.load_durations(out)
            new: dict[str, float] = {}
            for r in args.reports:
                got = durations_of(Path(r))
                if not got:
                    print(f"zooconform durations: {r}: no test recorded (nothing stored from it)", file=sys.stderr)
                new.update(got)
            every = set(load_zoo())
            models = sorted({m for n in new if (m := shards.model_of(n, every))})
            shards.write_durations(out, {**current, **new})
            print(f"durations: {out}: {len(new)} test(s) stored ({len(models)} model(s): {', '.join(models) or 'none'}); "
                  f"{len({**current, **new})} entries in all")
        if args.plan is not None:
            zoo = load_zoo()
            chosen = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
            cards = select(zoo, chosen, args.tier)
            p = shards.plan_from_file(cards, args.plan, out)
            for line in p.lines():
                print(line)
            for m in sorted(p.costs, key=lambda m: -p.costs[m].seconds):
                print(f"    {m}: {p.costs[m].seconds:.0f} s, {p.costs[m].how}")
            if p.method == "durations":
                rr = shards.round_robin([c.id for c in cards], args.plan)
                rr_load = [sum(p.costs[m].seconds for m in s) + (p.other_s if i == 0 else 0.0)
                           for i, s in enumerate(rr.shards)]
                print(f"longest shard: ~{max(p.load_s):.0f} s balanced vs ~{max(rr_load):.0f} s round-robin "
                      f"(the whole run ~{sum(p.load_s):.0f} s; ideal ~{sum(p.load_s) / args.plan:.0f} s per shard)")
    except UnknownModelError as e:
        print(f"zooconform durations: --models: {e}", file=sys.stderr)
        return USAGE
    except ZooconformError as e:
        print(f"zooconform durations: {e}", file=sys.stderr)
        return USAGE
    return 0
