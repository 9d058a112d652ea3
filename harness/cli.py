"""``zooconform <verb>``: run the suites and handle their artifacts.

Each verb is one module in ``harness/commands/`` exposing ``add_arguments(parser)`` and
``main(args, extra) -> int``; adding a verb is adding a module and a line below.
"""
from __future__ import annotations

import argparse
import importlib
import sys

VERBS = {
    "run": ("harness.commands.run", "run the conformance suites and write the reports"),
    "report": ("harness.commands.report", "render the nightly report from results.json"),
    "merge": ("harness.commands.merge", "merge shard results into one report"),
    "durations": ("harness.commands.durations", "store runs' test durations for --shard (pytest-split format); show the split"),
    "prepare": ("harness.commands.prepare", "write preprocessed inputs (.npz) + reference outputs for an external runtime"),
    "budgets": ("harness.commands.budgets", "latency budget profiles: record from a run, check, summary, t4 table"),
    "eval": ("harness.commands.evaluate", "score an external runtime's outputs against references and labels"),
    "sensitivity": ("harness.commands.sensitivity", "measure the smallest planted defect each check family detects"),
}


def version() -> str:
    """The installed distribution's version (pyproject.toml), else "unknown" (a source tree)."""
    from importlib import metadata

    try:
        return metadata.version("zooconform")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zooconform", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"zooconform {version()}")
    sub = parser.add_subparsers(dest="verb", required=True)
    modules = {}
    for verb, (module, help_text) in VERBS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # verb not built yet
        modules[verb] = mod
        p = sub.add_parser(verb, help=help_text, description=help_text)
        mod.add_arguments(p)
    args, extra = parser.parse_known_args(argv)
    return int(modules[args.verb].main(args, extra) or 0)


if __name__ == "__main__":
    sys.exit(main())
