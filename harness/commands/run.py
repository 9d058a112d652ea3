"""``zooconform run``: the suites on the chosen tier, with JUnit, HTML and results.json.

Unknown options are passed to pytest unchanged (e.g. ``-k export``, ``-x``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", choices=("smoke", "full"), default="smoke")
    p.add_argument("--models", default=None, help="comma-separated ids")
    p.add_argument("--artifacts", default=None, help="TOML manifest of your artifacts")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--imagenet", default=None)
    p.add_argument("--report-dir", default="reports")
    p.add_argument("-m", "--marker", dest="marker", default=None, help="pytest marker expression, e.g. 'card or export'")


def pytest_args(args: argparse.Namespace, extra: list[str]) -> list[str]:
    report = Path(args.report_dir)
    out = [str(ROOT / "suites"), f"--rootdir={ROOT}", "-p", "no:cacheprovider", f"--tier={args.tier}",
           f"--report-dir={report}", f"--junitxml={report / 'junit.xml'}",
           f"--html={report / 'report.html'}", "--self-contained-html", "-o", "junit_family=xunit1"]
    for opt in ("models", "artifacts", "weights_dir", "imagenet"):
        value = getattr(args, opt)
        if value:
            out.append(f"--{opt.replace('_', '-')}={value}")
    if args.marker:
        out += ["-m", args.marker]
    return out + list(extra)


def main(args: argparse.Namespace, extra: list[str]) -> int:
    import pytest

    Path(args.report_dir).mkdir(parents=True, exist_ok=True)
    return int(pytest.main(pytest_args(args, extra)))
