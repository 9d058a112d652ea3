"""``zooconform run``: the suites on the chosen tier, then the nightly report.

Each run writes a new folder ``<report-dir>/<nightly|smoke>/<UTC timestamp>/`` holding
``index.html`` (self-contained), ``summary.md``, ``results.json``, ``junit.xml`` and
pytest-html's ``report.html``, and appends one line per model to
``<report-dir>/history.jsonl``. Nothing that exists is overwritten.

``-j N``: phase 1 runs everything but latency on N pytest-xdist workers (``--dist
loadgroup``: each model's tests share a worker, so its artifacts are built once); phase 2
runs the latency tests serially (pytest-benchmark disables itself under xdist, and timing
beside busy workers would measure them). Both phases are merged into one report. Phase 2's
pytest starts with phase 1 and waits, imported and collected, at a gate (``START_GATE_ENV``)
that opens when phase 1's process has exited: no test of it runs beside phase 1, and its
imports and collection are not added to the run's wall time (warm smoke tier: 9-10 s from
phase 1's last result to phase 2's first test before, 4 s after, which is phase 1's own
teardown: xdist's workers exiting, JUnit and pytest-html written).

``--shard I/N``: only shard I of the models, balanced by the recorded seconds of each model's
tests (``--durations-file``, default fixtures/durations/test_durations.json; harness/shards.py),
round-robin by id when the file has no figure for the selected models; the shard's folder is
merged with the others by ``zooconform merge``, which appends the history.

Ctrl-C (or SIGTERM) stops the run: the suite writes what it has, marked incomplete, and
the report is rendered from it. Unknown options are passed to pytest (``-k export``, ``-x``).

Exit codes (README "Exit codes"): 0 every check passed; 1 a check failed (your model); 2 the
run is incomplete (interrupted, killed, a crashed worker); 3 an internal error of pytest or
the harness; 4 a usage error (options, an unwritable report folder or history), nothing ran;
5 no test was selected; 6 an input or configuration error (your manifest, weights, ONNX,
images, label files or history): fix the input, the summary line says how many.

The latest run's ``junit.xml``, ``report.html`` and ``results.json`` are copied to
``<report-dir>/`` together or not at all: only after a run whose pytest started and wrote all
three, each through a temp file of its own (``tempfile`` in that folder) and a rename, so
concurrent runs never tear a file and never leave a mix of two runs' files.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import START_GATE_ENV, parse_shard

ROOT = Path(__file__).resolve().parents[2]
CHECKS_FAILED = 1
INTERRUPTED = 2  # pytest's exit code for an interrupted session; ours for any incomplete run
INTERNAL_ERROR = 3
USAGE = 4
NO_TESTS = 5
INPUT_ERROR = 6  # an input or configuration error (InputError / ConfigError), not a failing check
INPUT_ERROR_TYPES = ("InputError", "ConfigError")


# options of the suite itself (harness/plugin.py), passed on to pytest as given; pytest checks
# them (a bad value is a usage error naming the option, exit 4)
PASSED_ON = (
    ("--eval-images", "N", "evaluation images (default 200 embedded; all of ImageNet)"),
    ("--calib-images", "N", "calibration images (default 200 embedded; 1000 ImageNet)"),
    ("--threads", "N", "intra-op threads for torch and ONNX Runtime"),
    ("--profile", "NAME", "latency budget profile fixtures/budgets/NAME.toml (default: detected; 'none': ratios only)"),
    ("--cache-dir", "DIR", "artifact cache (default .zooconform-cache, or $ZOOCONFORM_CACHE)"),
    ("--weights-source", "SOURCE", "where the reference weights come from: the card row accuracy is held to"),
)
PASSED_ON_FLAGS = (
    ("--rescale-budgets", "judge a profile of another host class (or other peaks) with budgets scaled by the peak ratio"),
)

EPILOG = """\
Any other option goes to pytest as given, for example:
  -k EXPR            only tests matching EXPR (e.g. -k export)
  -x, --maxfail N    stop after the first (N) failure(s)
  --lf, --ff         re-run the last failures only / first (pytest's cache lives in <cache-dir>/pytest)
  --sw               stepwise: stop at the first failure, resume from it next time
  -v, --tb=long      show tracebacks of failing checks (by default a failing check is its one-line message)
  --timeout S        pytest-timeout per test
Exit codes: 0 pass, 1 a check failed, 2 incomplete, 3 internal error, 4 usage error, 5 no test selected,
6 input/configuration error (README "Exit codes")."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--tier", choices=("smoke", "full"), default="smoke")
    p.add_argument("--models", default=None, help="comma-separated ids")
    p.add_argument("--artifacts", default=None, help="TOML manifest of your artifacts")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--imagenet", default=None)
    p.add_argument("--report-dir", default="reports", help="run folders and history.jsonl go here (default reports)")
    p.add_argument("-m", "--marker", dest="marker", default=None, help="pytest marker expression, e.g. 'card or export'")
    p.add_argument("-j", "--jobs", type=_jobs, default=None, metavar="N",
                   help="N xdist workers for everything but latency (N or 'auto'), then latency serially")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run shard I of N, split by model and balanced by the recorded seconds of each model's "
                        "tests (--durations-file; round-robin by id when it has no figure for the selected "
                        "models); merge the shards' folders with `zooconform merge`")
    p.add_argument("--durations-file", default=None, metavar="FILE",
                   help="test durations (pytest-split's format) that --shard balances by (default "
                        "fixtures/durations/test_durations.json; write one with `zooconform durations`)")
    p.add_argument("--history", default=None, metavar="FILE", help="history file (default <report-dir>/history.jsonl)")
    p.add_argument("--no-history", action="store_true", help="do not append this run to the history")
    p.add_argument("--suites", default=str(ROOT / "suites"), metavar="PATH", help="suite folder or file (default: suites/)")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 when the regression column flags a regression against the previous run of a model "
                        "(a run that otherwise passed)")
    g = p.add_argument_group("suite options (passed on to pytest)")
    for opt, metavar, text in PASSED_ON:
        g.add_argument(opt, default=None, metavar=metavar, help=text)
    for opt, text in PASSED_ON_FLAGS:
        g.add_argument(opt, action="store_true", help=text)


def _jobs(value: str) -> str:
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return value
    raise argparse.ArgumentTypeError(f"expected a number of workers >= 1 or 'auto', got {value!r}")


def _shard(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        return parse_shard(value)
    except ValueError as e:
        raise SystemExit(f"zooconform run: {e}") from None


def _print_plan(args: argparse.Namespace, index: int, count: int) -> None:
    """Which models this shard runs and why, before pytest starts (the plugin applies the same
    plan; a problem with the options or the file is its to report, as a usage error)."""
    from .. import shards
    from ..errors import ZooconformError
    from ..zoo import load_zoo, select

    try:
        ids = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        plan = shards.plan_from_file(select(load_zoo(), ids, args.tier), count, args.durations_file)
    except (ZooconformError, ValueError):
        return
    where = f" from {plan.source}" if plan.method == "durations" else ""
    load = f", ~{plan.load_s[index - 1]:.0f} s planned" if plan.method == "durations" else ""
    print(f"zooconform run: shard {index}/{count} ({plan.method} split{where}{load}): "
          f"{', '.join(plan.models(index)) or 'no model'}", flush=True)


@dataclass
class Phase:
    label: str
    folder: Path
    marker: str | None
    options: list[str]


def _and(user: str | None, own: str | None) -> str | None:
    if user and own:
        return f"({user}) and ({own})"
    return user or own


def tier_marker(args: argparse.Namespace) -> str | None:
    """The marker expression the run selects by: the user's ``-m`` as given; else the smoke tier
    leaves out the ``slow`` cases (pyproject.toml: minutes per case, nightly rather than CI: the
    non-default calibration methods) and the full tier runs everything."""
    if args.marker:
        return args.marker
    return "not slow" if args.tier == "smoke" else None


def phases(args: argparse.Namespace, folder: Path) -> list[Phase]:
    marker = tier_marker(args)
    if not args.jobs:
        return [Phase("all", folder, marker, [])]
    # --max-worker-restart=0: pytest-xdist 3.8's loadgroup scheduler hangs for good when it
    # replaces a crashed worker (pytest-xdist#1323, #1327; measured here: a worker killed by
    # SIGKILL left the run waiting forever). A crash now ends the phase, and the report says
    # which test the worker died in and how many never ran.
    return [Phase("parallel", folder / "phase1-parallel", _and(marker, "not latency"),
                  ["-n", str(args.jobs), "--dist", "loadgroup", "--max-worker-restart=0"]),
            Phase("latency", folder / "phase2-latency", _and(marker, "latency"), ["-p", "no:xdist"])]


def pytest_cache_dir(args: argparse.Namespace) -> Path:
    """pytest's own cache (--lf, --ff, --sw) beside the artifact cache, not in the user's folder."""
    from ..cache import default_root

    return (Path(args.cache_dir) if getattr(args, "cache_dir", None) else default_root()) / "pytest"


def pytest_args(args: argparse.Namespace, extra: list[str], phase: Phase) -> list[str]:
    suites = Path(args.suites).resolve()
    inside = ROOT in suites.parents or suites == ROOT
    rootdir = ROOT if inside else (suites if suites.is_dir() else suites.parent)
    out = [str(suites), "-c", str(ROOT / "pyproject.toml"), f"--rootdir={rootdir}",
           "-p", "harness.plugin", "-o", f"cache_dir={pytest_cache_dir(args)}", f"--tier={args.tier}",
           f"--report-dir={phase.folder}", f"--junitxml={phase.folder / 'junit.xml'}",
           f"--html={phase.folder / 'report.html'}", "--self-contained-html", "-o", "junit_family=xunit1"]
    for opt in ("models", "artifacts", "weights_dir", "imagenet", "shard"):
        value = getattr(args, opt)
        if value:
            out.append(f"--{opt.replace('_', '-')}={value}")
    for opt, _, _ in PASSED_ON:
        value = getattr(args, opt[2:].replace("-", "_"), None)
        if value is not None:
            out.append(f"{opt}={value}")
    for opt, _ in PASSED_ON_FLAGS:
        if getattr(args, opt[2:].replace("-", "_"), False):
            out.append(opt)
    if phase.marker:
        out += ["-m", phase.marker]
    return out + phase.options + list(extra)


class _Forwarder:
    """While a phase runs, Ctrl-C / SIGTERM to us becomes one SIGINT to the phase's process
    group (pytest then finishes cleanly and writes what it has); a second one escalates to
    SIGTERM, a third to SIGKILL. The child runs in its own session, so a terminal Ctrl-C
    reaches it only through here, exactly once."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.waiting: subprocess.Popen | None = None  # a later phase's pytest, waiting at its gate
        self.count = 0

    def __call__(self, signum, frame) -> None:
        self.count += 1
        if self.waiting is not None:  # it ran nothing yet: no phase after an interrupted one
            stop_waiting(self)
        if self.proc is None or self.proc.poll() is not None:
            return
        sig = {1: signal.SIGINT, 2: signal.SIGTERM}.get(self.count, signal.SIGKILL)
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# what pytest-xdist prints when a worker dies ("[gw0] node down: Not properly terminated",
# "worker gw0 crashed and worker restarting disabled"); the controller's results do not say it
# when the worker died before it reported a test
_CRASH = re.compile(rb"(\[gw\d+\] node down: [^\r\n]*|worker gw\d+ crashed[^\r\n=]*)")


def start_phase(cmd: list[str], piped: bool, gate: Path | None = None) -> subprocess.Popen:
    """Start one pytest phase in a session of its own. ``piped``: its output comes through a pipe
    (read by :func:`finish_phase`; a phase started early writes into the pipe while it waits).
    ``gate``: its tests wait until that file exists (:func:`open_gate`)."""
    # a phase is a pytest session of its own, never a worker of an xdist session this command
    # runs inside (a CI job under pytest -n): its xdist identity is not inherited
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_") and k != START_GATE_ENV}
    if gate is not None:
        env[START_GATE_ENV] = str(gate)
    out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if piped else {}
    return subprocess.Popen(cmd, cwd=os.getcwd(), start_new_session=True, env=env, **out)  # type: ignore[call-overload]


def open_gate(gate: Path) -> None:
    tmp = gate.with_name(gate.name + ".tmp")
    tmp.write_text(str(time.time()), encoding="utf-8")
    os.replace(tmp, gate)  # the waiting process sees the whole file or none


def stop_waiting(forwarder: _Forwarder) -> None:
    """Kill the phase waiting at its gate (it has imported and collected, nothing more)."""
    proc, forwarder.waiting = forwarder.waiting, None
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def run_phase(cmd: list[str], forwarder: _Forwarder, crashes: list[str] | None = None) -> int:
    """Run one pytest phase; its output passes through unchanged. ``crashes`` (for -j) collects
    the lines in which xdist reports a dead worker."""
    return finish_phase(start_phase(cmd, piped=crashes is not None), forwarder, crashes)


def finish_phase(proc: subprocess.Popen, forwarder: _Forwarder, crashes: list[str] | None = None) -> int:
    """Pass a started phase's output through until it exits; its exit code."""
    forwarder.proc = proc
    try:
        if crashes is not None:
            out = getattr(sys.stdout, "buffer", None)
            assert forwarder.proc.stdout is not None  # stdout=PIPE above
            for line in iter(forwarder.proc.stdout.readline, b""):
                if out is not None:
                    out.write(line)
                    out.flush()
                else:
                    sys.stdout.write(line.decode("utf-8", "replace"))
                for m in _CRASH.finditer(line):
                    text = m.group(1).decode("utf-8", "replace").strip()
                    if text not in crashes:
                        crashes.append(text)
        return forwarder.proc.wait()  # PEP 475: resumes after our handler runs
    finally:
        forwarder.proc = None


def _reported_tests(phase: Phase) -> int:
    """How many tests a phase's results.json holds (0 when it wrote none or an unreadable one)."""
    try:
        return len(json.loads((phase.folder / "results.json").read_text(encoding="utf-8")).get("tests") or [])
    except (OSError, ValueError, AttributeError):
        return 0


def phase_doc(phase: Phase, code: int) -> dict | None:
    from ..errors import InputError
    from ..report.merge import load_results

    file = phase.folder / "results.json"
    if not file.exists():
        return None
    try:
        doc = load_results(file)
    except InputError as e:
        print(f"zooconform run: {e}", file=sys.stderr)
        return None
    if code < 0:  # killed by a signal: what it wrote is a snapshot at best
        doc["complete"] = False
        reasons = doc.setdefault("incomplete_reasons", [])
        reasons.append(f"pytest ({phase.label}) was killed by signal {-code}")
    return doc


def empty_doc(args: argparse.Namespace, reasons: list[str]) -> dict:
    from ..report.results import library_versions, machine_info

    return {"schema": "zooconform.results/1", "complete": False, "incomplete_reasons": reasons,
            "exitstatus": None, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": 0.0,
            "machine": machine_info(), "versions": library_versions(),
            "settings": {"tier": args.tier, "models": (args.models or "").split(",") if args.models else []},
            "counts": {}, "tests": []}


def merge_junit(files: list[tuple[str, Path]], out: Path) -> None:
    """One JUnit file with one <testsuite> per phase (CI systems read several suites)."""
    import xml.etree.ElementTree as ET

    from ..report.results import atomic_write_text

    root = ET.Element("testsuites", name="zooconform")
    for label, f in files:
        try:
            tree = ET.parse(f)
        except (OSError, ET.ParseError):
            continue
        suites = [tree.getroot()] if tree.getroot().tag == "testsuite" else list(tree.getroot())
        for s in suites:
            s.set("name", f"{s.get('name', 'pytest')}-{label}")
            root.append(s)
    atomic_write_text(out, ET.tostring(root, encoding="unicode"))


def write_junit_from_doc(doc: dict, label: str, out: Path) -> None:
    """A JUnit file from a results document (the snapshot a killed pytest left): one test case per
    test it reported, a test that never finished as an error, and the reasons the run is
    incomplete as a property and as one error case, so a CI reading JUnit sees the kill."""
    import xml.etree.ElementTree as ET

    from ..report.results import atomic_write_text

    tests = doc.get("tests") or []
    reasons = list(doc.get("incomplete_reasons") or []) or ["pytest was killed"]
    suite = ET.Element("testsuite", name=f"pytest-{label}")
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="incomplete", value="; ".join(reasons))
    ET.SubElement(props, "property", name="written_by", value="zooconform run from results.json (pytest was killed)")
    counts = {"failures": 0, "errors": 1, "skipped": 0}
    for t in tests:
        classname, _, name = str(t.get("nodeid", "")).rpartition("::")
        case = ET.SubElement(suite, "testcase", classname=classname.removesuffix(".py").replace("/", "."), name=name,
                             time=str(t.get("duration_s") or 0))
        outcome, msg = t.get("outcome"), str(t.get("message") or "")
        if outcome == "failed":
            ET.SubElement(case, "failure", message=msg[:2000]).text = msg
            counts["failures"] += 1
        elif outcome in ("error", None):
            text = msg or "unfinished: pytest was killed while this test ran"
            ET.SubElement(case, "error", message=text[:2000]).text = text
            counts["errors"] += 1
        elif outcome not in ("passed", "xpassed"):
            # plugin.INCONCLUSIVE_TYPE
            kind: dict[str, Any] = {"type": "zooconform.inconclusive"} if outcome == "inconclusive" else {}
            if kind:
                ET.SubElement(ET.SubElement(case, "properties"), "property", name="outcome", value="inconclusive")
            ET.SubElement(case, "skipped", message=f"{outcome}: {msg}"[:2000], **kind)
            counts["skipped"] += 1
    kill = ET.SubElement(suite, "testcase", classname="zooconform", name=f"run-{label}-incomplete", time="0")
    ET.SubElement(kill, "error", message="; ".join(reasons)[:2000]).text = "; ".join(reasons)
    suite.set("tests", str(len(tests) + 1))
    for k, v in counts.items():
        suite.set(k, str(v))
    atomic_write_text(out, ET.tostring(suite, encoding="unicode"))


LATEST = ("junit.xml", "report.html", "results.json")


def publish_latest(folder: Path, report_dir: Path, codes: list) -> tuple[list[Path], str]:
    """Copy the run's JUnit, pytest-html and results.json to ``<report-dir>/`` (the fixed paths
    CI and users point at); the timestamped folder stays the record, never overwritten.

    All three or none: a run that did not start (a usage error) or was killed before pytest
    wrote its JUnit and HTML leaves the previous run's three files as they were, and the reason
    is returned. Each file goes through its own temp file in ``report_dir`` (unique name, mode
    0644) and ``os.replace``, so concurrent runs never see a torn file."""
    import shutil
    import tempfile

    from filelock import FileLock, Timeout

    sources = {}
    for name in LATEST:
        src = folder / name
        if not src.exists():  # -j: per-phase folders hold pytest-html's report
            src = next((p.folder / name for p, _ in codes if (p.folder / name).exists()), src)
        sources[name] = src
    missing = [n for n, src in sources.items() if not src.is_file()]
    if not codes or any(c == USAGE for _, c in codes):
        return [], "the run did not start (usage error)"
    if missing:
        return [], f"this run wrote no {', '.join(missing)} (killed or stopped early?)"
    staged: list[tuple[str, Path]] = []
    try:
        for name, src in sources.items():
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=report_dir)
            staged.append((name, Path(tmp_name)))
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                shutil.copyfileobj(inp, out)
            os.chmod(tmp_name, 0o644)  # mkstemp's 0600 would hide the reports from a CI's other users
        out_paths = []
        # all three are complete on disk before the first replace; the lock keeps two runs'
        # replaces from interleaving (else junit.xml of one run beside results.json of another)
        with FileLock(str(report_dir / ".latest.lock"), timeout=120):
            for name, tmp in staged:
                os.replace(tmp, report_dir / name)
                out_paths.append(report_dir / name)
        return out_paths, ""
    except (OSError, Timeout) as e:
        return [], f"cannot write to {report_dir} ({getattr(e, 'strerror', None) or e})"
    finally:
        for _, tmp in staged:
            if tmp.exists():
                tmp.unlink()


def input_errors(doc: dict) -> list[dict]:
    """The tests that ended on an input or configuration error (not a failing check)."""
    return [t for t in doc.get("tests") or [] if t.get("outcome") in ("failed", "error")
            and str(t.get("message") or "").startswith(tuple(f"{n}:" for n in INPUT_ERROR_TYPES))]


def exit_code(codes: list[int], doc: dict, interrupted: bool, extra_input_error: bool = False,
              worker_died: bool = False) -> int:
    """One code per kind of outcome (module docstring), in this order of precedence: a usage
    error; a run stopped by a signal or killed; an internal error; input or configuration
    errors; else pytest's own (a failing check 1, nothing selected 5), with a run that passed
    but did not finish (a crashed worker) reported as incomplete (2)."""
    real = [c for c in codes if c != NO_TESTS]
    if USAGE in real:
        return USAGE
    if interrupted or worker_died or any(c < 0 for c in real):
        return INTERRUPTED
    if INTERNAL_ERROR in real:
        return INTERNAL_ERROR
    if input_errors(doc) or extra_input_error:
        return INPUT_ERROR
    if not real:
        return NO_TESTS
    code = max(real)
    return INTERRUPTED if code == 0 and not doc.get("complete") else code


def _writable_file(path: Path) -> str:
    """Why ``path`` cannot be appended to ("" when it can), trying it rather than trusting
    permission bits (root, read-only mounts, immutable files)."""
    import tempfile

    if path.is_dir():
        return "is a directory"
    try:
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        else:
            parent = path.parent if str(path.parent) else Path(".")
            if parent.exists() and not parent.is_dir():
                return f"{parent} is not a directory"
            parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=parent):
                pass
    except OSError as e:
        return e.strerror or str(e)
    return ""


def main(args: argparse.Namespace, extra: list[str]) -> int:
    from ..report.merge import merge_documents
    from ..report.nightly import default_history, new_run_folder, utc_stamp, write_report
    from ..report.summary import one_screen

    shard = _shard(args.shard)
    if args.durations_file and not Path(args.durations_file).is_file():
        print(f"zooconform run: --durations-file {args.durations_file}: no such file (fix: write one with "
              f"`zooconform durations REPORT_DIR... --out FILE`, or leave the option out)", file=sys.stderr)
        return USAGE
    if shard:
        _print_plan(args, *shard)
    if args.durations_file:  # to the plugin of every phase (harness/shards.py DURATIONS_ENV)
        from ..shards import DURATIONS_ENV

        os.environ[DURATIONS_ENV] = str(Path(args.durations_file).resolve())
    report_dir = Path(args.report_dir)
    name = utc_stamp() + (f"-shard{shard[0]}of{shard[1]}" if shard else "")
    history = Path(args.history) if args.history else default_history(report_dir)
    append = not args.no_history and shard is None
    # before anything runs: a report folder or history we cannot write would lose the run's results
    try:
        folder = new_run_folder(report_dir / ("nightly" if args.tier == "full" else args.tier), name)
    except OSError as e:
        print(f"zooconform run: --report-dir {report_dir}: cannot create a run folder there "
              f"({e.strerror or e}{': ' + str(e.filename) if getattr(e, 'filename', None) else ''}) "
              f"(fix: pass --report-dir DIR to a writable folder)", file=sys.stderr)
        return USAGE
    why = _writable_file(history) if append else ""
    if why:
        print(f"zooconform run: history {history}: cannot be appended to ({why}) "
              f"(fix: make it a writable file, pass --history FILE elsewhere, or --no-history)", file=sys.stderr)
        try:
            folder.rmdir()  # still empty: leave no trace of a run that did not start
        except OSError:
            pass
        return USAGE
    forwarder = _Forwarder()
    old = {s: signal.signal(s, forwarder) for s in (signal.SIGINT, signal.SIGTERM)}
    codes: list[tuple[Phase, int]] = []
    crashed: dict[str, list[str]] = {}  # phase label -> xdist's lines about dead workers
    recovered: dict[str, list[str]] = {}  # serial re-run's label -> the crash that made it
    planned = phases(args, folder)
    commands = [[sys.executable, "-m", "pytest", *pytest_args(args, extra, phase)] for phase in planned]
    gate = folder / ".latency-phase-gate"
    try:
        if len(planned) > 1:  # the latency phase imports and collects while phase 1 runs
            planned[1].folder.mkdir(parents=True, exist_ok=True)
            forwarder.waiting = start_phase(commands[1], piped=True, gate=gate)
        for phase, cmd in zip(planned, commands):
            phase.folder.mkdir(parents=True, exist_ok=True)
            print(f"zooconform run: phase {phase.label}: {' '.join(cmd[1:])}", flush=True)
            crashes: list[str] | None = [] if args.jobs else None
            if forwarder.waiting is not None and phase is not planned[0]:
                early, forwarder.waiting = forwarder.waiting, None
                open_gate(gate)
                code = finish_phase(early, forwarder, crashes)
            else:
                code = run_phase(cmd, forwarder, crashes)
            if crashes and not forwarder.count and not _reported_tests(phase):
                # a worker died before any test reported (killed while collecting: OOM, a lost
                # runner): xdist then stops the whole phase, the healthy workers' tests with it.
                # Run the phase once more, serially, so their results are not lost; the crash
                # stays in the report as a note.
                retry = Phase(f"{phase.label}-serial", phase.folder.with_name(phase.folder.name + "-serial"),
                              phase.marker, ["-p", "no:xdist"])
                retry.folder.mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, "-m", "pytest", *pytest_args(args, extra, retry)]
                print(f"zooconform run: an xdist worker died before any test reported ({crashes[0]}); "
                      f"re-running phase {phase.label} serially: {' '.join(cmd[1:])}", flush=True)
                recovered[retry.label] = crashes
                phase, code = retry, run_phase(cmd, forwarder, None)
            elif crashes:
                crashed[phase.label] = crashes
            codes.append((phase, code))
            if forwarder.count:  # interrupted: no further phase
                break
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if len(planned) > 1 and not any(p is planned[1] for p, _ in codes):  # interrupted: it never ran
            stop_waiting(forwarder)
            import shutil

            shutil.rmtree(planned[1].folder, ignore_errors=True)
        gate.unlink(missing_ok=True)

    if any(c == USAGE for _, c in codes) and not any((p.folder / "results.json").exists() for p, _ in codes):
        # pytest refused the options (its message is above): nothing ran, so no run folder, no
        # report, no history line and no "latest" files: leave no trace of a run that did not start
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        return USAGE

    docs, reasons = [], []
    for phase, code in codes:
        doc = phase_doc(phase, code)
        if doc is not None:
            if phase.folder != folder:  # -j: a repro bundle's path is relative to the run folder's report
                for t in doc.get("tests") or []:
                    if t.get("repro"):
                        t["repro"] = f"{phase.folder.name}/{t['repro']}"
            docs.append((phase.label, doc))
            if code < 0 and not (phase.folder / "junit.xml").exists():
                # killed outright: pytest never wrote its JUnit; CI still gets what was measured
                write_junit_from_doc(doc, phase.label, phase.folder / "junit.xml")
        elif code not in (0, NO_TESTS):
            reasons.append(f"pytest ({phase.label}) exited with {code} and wrote no results")
    if forwarder.count and len(codes) < len(planned):
        reasons.append("interrupted before the latency phase")
    for label, lines in crashed.items():
        # a worker that died before reporting any test appears nowhere else (xdist then ends the
        # phase with 'no tests ran': not a run with nothing selected)
        reasons.append(f"pytest ({label}): an xdist worker died: {'; '.join(lines[:3])}")
    if not docs:
        doc = empty_doc(args, reasons or ["no test ran (check -m / -k / --models)"])
    elif len(docs) == 1 and len(codes) == 1:
        doc = docs[0][1]
    else:
        doc = merge_documents(docs, sequential=True)
    if reasons:
        doc["complete"] = False
        doc["incomplete_reasons"] = list(doc.get("incomplete_reasons") or []) + reasons
    for label, lines in recovered.items():
        doc["notes"] = list(doc.get("notes") or []) + [
            f"an xdist worker died before any test reported ({'; '.join(lines[:2])}); "
            f"phase {label.removesuffix('-serial')} was re-run serially ({label})"]
    doc["run_id"] = folder.name

    links = {}
    if args.jobs:
        junits = [(p.label, p.folder / "junit.xml") for p, _ in codes if (p.folder / "junit.xml").exists()]
        if junits:
            merge_junit(junits, folder / "junit.xml")
        for p, _ in codes:
            if (p.folder / "report.html").exists():
                links[f"pytest-html ({p.label})"] = f"{p.folder.name}/report.html"
    written = write_report(doc, folder, history if (append or history.exists()) else None, append_history=append,
                           links=links)
    if len(codes) > 1:  # each phase printed its own summary; this is the whole run's
        for line in one_screen(doc):
            print(line)
    if doc.get("tests"):
        latest, not_published = publish_latest(folder, report_dir, codes)
    else:  # nothing ran (a usage error, a worker that died while collecting): keep the previous latest
        latest, not_published = [], "no test ran"
    n_reg = sum(len(v) for v in written.regressions.values())
    print(f"report: {written.index}" + (f" ({n_reg} regression(s) flagged)" if n_reg else ""))
    if latest:
        print(f"latest: {', '.join(str(p) for p in latest)}")
    elif doc.get("tests") or crashed:
        print(f"latest: {report_dir}/{{{','.join(LATEST)}}} not replaced: {not_published}")
    if written.history_error:
        print(f"zooconform run: {written.history_error}", file=sys.stderr)
    elif written.history and append:
        print(f"history: {written.history} (+{written.appended} lines)")
    elif shard:
        print(f"shard {shard[0]}/{shard[1]}: merge the shards' folders with `zooconform merge` to append the history")
    bad_inputs = input_errors(doc)
    if bad_inputs:
        print(f"input errors: {len(bad_inputs)} test(s) could not judge your files (InputError / ConfigError: "
              f"fix the input, exit code {INPUT_ERROR}); first: {bad_inputs[0]['nodeid']}: "
              f"{str(bad_inputs[0].get('message'))[:300]}")
    code = exit_code([c for _, c in codes], doc, bool(forwarder.count), bool(written.history_error),
                     worker_died=bool(crashed))
    from ..report.verdict import level, verdict_line

    red = level(doc) in ("fail", "incomplete")
    colour = ("\033[1;31m" if red else "\033[1;32m") if sys.stdout.isatty() else ""
    print(f"{colour}verdict: {verdict_line(doc)}{chr(27) + '[0m' if colour else ''}")
    if code == 0 and n_reg and args.fail_on_regression:
        print(f"--fail-on-regression: {n_reg} regression(s) against the previous run (see the regression column "
              f"of {written.index}): exit {CHECKS_FAILED}")
        return CHECKS_FAILED
    return code
