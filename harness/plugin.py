"""The pytest plugin: options, fixtures, parametrization over the registry, reports.

Loaded by the repository's ``conftest.py`` (``pytest_plugins = ["harness.plugin"]``).
"""
from __future__ import annotations

import fnmatch
import html
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import figures as figure_contract
from .compare import CheckFailure, Inconclusive
from .config import load_expectations
from .constants import START_GATE_ENV, parse_shard
from .errors import ConfigError, ZooconformError
from .host import cpu_facts, host_class
from .phases import PhaseLog, Progress, read_events
from .report.results import FIGURE_PREFIX, ResultsCollector, atomic_write_text, jsonable, library_versions, machine_info
from .zoo import SOURCES, TIERS, UnknownModelError

if TYPE_CHECKING:  # harness.lab imports torch (seconds): only when a run needs it, never for --help
    from .lab import Lab, Settings

ROOT = Path(__file__).resolve().parent.parent
EXPECTATIONS = ROOT / "fixtures" / "expectations.toml"

_lab_key = pytest.StashKey["Lab"]()
_run_folder_key = pytest.StashKey[Path]()
_collector_key = pytest.StashKey[ResultsCollector]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("zooconform", "zooconform conformance suite")
    g.addoption("--models", default=None, help="comma-separated model ids (any tier); default: the tier's models")
    g.addoption("--tier", default="smoke", choices=TIERS, help="smoke (3 models, default) or full (all 24)")
    g.addoption("--artifacts", default=None, metavar="PATH", help="TOML manifest of your deployment artifacts")
    g.addoption("--weights-dir", default=None, metavar="DIR", help="reference weights <id>.pth / <id>.safetensors")
    g.addoption("--imagenet", default=None, metavar="DIR", help="ImageNet val folder (val/*.JPEG + val_label.txt)")
    g.addoption("--report-dir", default=None, metavar="DIR",
                help="where results.json and the repro bundles go (zooconform run: the run folder); default for "
                     "plain pytest: a new folder reports/pytest/<UTC time>/, so a plain run never replaces the "
                     "latest reports that zooconform run published in reports/")
    g.addoption("--cache-dir", default=None, metavar="DIR", help="artifact cache (default .zooconform-cache)")
    g.addoption("--eval-images", type=int, default=None, metavar="N",
                help="evaluation images (default 200 embedded; all of ImageNet)")
    g.addoption("--calib-images", type=int, default=None, metavar="N",
                help="calibration images (default 200 embedded; 1000 ImageNet)")
    g.addoption("--threads", type=int, default=None, metavar="N", help="intra-op threads for torch and ONNX Runtime")
    g.addoption("--profile", default=None, metavar="NAME", help="latency budget profile (fixtures/budgets/NAME.toml)")
    g.addoption("--rescale-budgets", action="store_true",
                help="judge a latency profile recorded on another host class or at other peaks with each budget "
                     "scaled by recorded peak / this host's measured peak (default: such budgets are not applicable)")
    g.addoption("--weights-source", default=None, choices=SOURCES,
                help="where the reference weights come from: the card row accuracy is held to")
    g.addoption("--no-results", action="store_true", help="do not write results.json")
    g.addoption("--runtime", default="ort", metavar="NAME[,NAME...]",
                help="runtimes (harness/runtimes) the numeric, int8, accuracy and latency checks run on, each "
                     "its own test case: ort (default), openvino, torch, ort-cuda, ort-trt, torch-compile, files; "
                     "NAME:PRECISION asks another arithmetic (openvino:bf16, openvino:default)")
    g.addoption("--shard", default=None, metavar="I/N",
                help="run only shard I of N: the selected models balanced by the recorded seconds of their tests "
                     "(--durations-file), round-robin by id without figures (tests of no model run in shard 1); "
                     "merge with `zooconform merge`")
    g.addoption("--durations-file", default=None, metavar="FILE",
                help="test durations (pytest-split's format) --shard balances by (default "
                     "$ZOOCONFORM_DURATIONS_FILE, else fixtures/durations/test_durations.json)")


def settings_from(config: pytest.Config) -> Settings:
    from .host import xdist_share_of_cpus
    from .lab import Settings

    opt = config.getoption
    models = opt("--models")
    return Settings(
        tier=opt("--tier"),
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
        artifacts=Path(opt("--artifacts")) if opt("--artifacts") else None,
        weights_dir=Path(opt("--weights-dir")) if opt("--weights-dir") else None,
        imagenet=Path(opt("--imagenet")) if opt("--imagenet") else None,
        report_dir=Path(opt("--report-dir") or DEFAULT_REPORT_DIR),
        cache_dir=Path(opt("--cache-dir")) if opt("--cache-dir") else None,
        eval_images=opt("--eval-images"),
        calib_images=opt("--calib-images"),
        # --threads, else under xdist each worker's share of the CPUs (none oversubscribes them)
        threads=opt("--threads") or xdist_share_of_cpus(),
        profile=opt("--profile"),
        extra={**({"weights_source": opt("--weights-source")} if opt("--weights-source") else {}),
               **({"rescale_budgets": True} if opt("--rescale-budgets") else {})},
    )


DEFAULT_REPORT_DIR = "reports"


def run_folder(config: pytest.Config) -> Path:
    """Where this run's results.json and repro bundles go: ``--report-dir`` when given (what
    ``zooconform run`` passes: its run folder), else a new ``reports/pytest/<UTC time>/`` of its
    own (named by the controller and handed to xdist workers), created when first written."""
    folder = config.stash.get(_run_folder_key, None)
    if folder is None:
        given = config.getoption("--report-dir")
        wi = getattr(config, "workerinput", None)
        if given:
            folder = Path(given)
        elif wi and wi.get("zooconform_run_folder"):
            folder = Path(wi["zooconform_run_folder"])
        else:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            folder = Path(DEFAULT_REPORT_DIR) / "pytest" / f"{stamp}-{os.getpid()}"
        config.stash[_run_folder_key] = folder
    return folder


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """pytest-xdist: every worker writes its repro bundles into the controller's run folder."""
    node.workerinput["zooconform_run_folder"] = str(run_folder(node.config))
    sink = phases_path(node.config)
    if sink is not None:
        node.workerinput["zooconform_phases"] = str(sink)


def phases_path(config: pytest.Config) -> Path | None:
    """The run's phase log (harness/phases.py): on the controller, beside results.json when results
    are written; on an xdist worker, the controller's file."""
    wi = getattr(config, "workerinput", None)
    if wi is not None:
        return Path(wi["zooconform_phases"]) if wi.get("zooconform_phases") else None
    if config.getoption("--no-results") or config.getoption("collectonly"):
        return None
    return run_folder(config) / "phases.jsonl"


def pytest_configure(config: pytest.Config) -> None:
    if config.option.help:  # --help: options only; no Lab (torch) and no folders
        return
    from .lab import Lab

    # every model case carries xdist_group; declared here too so that a run without xdist
    # (-p no:xdist, the serial latency phase of `zooconform run -j`) passes --strict-markers
    config.addinivalue_line("markers", "xdist_group(name): the cases of one model run on one xdist worker")
    for line in ZOO_MARKERS:  # which models a check applies to (read in pytest_generate_tests)
        config.addinivalue_line("markers", line)
    settings = settings_from(config)
    try:
        lab = Lab(settings, check_folders=True)  # unusable options and folders: a usage error now
    except UnknownModelError as e:
        raise pytest.UsageError(f"--models: {e}") from None
    except ConfigError as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[_lab_key] = lab
    lab.phase = PhaseLog(phases_path(config))
    start_cpu_share(config)
    shard = shard_option(config)
    shard_plan = None
    if shard is not None:
        from .shards import plan_from_file

        every = lab.cards
        lab.cards = shard_cards(every, *shard)  # a bad durations file is a usage error here
        # each shard records its plan: `zooconform merge` tells shards planned from different files
        shard_plan = plan_from_file(every, shard.total, shard.durations_file).record(shard.number)
    if not hasattr(config, "workerinput"):  # the controller (or a plain run) writes reports
        config.stash[_collector_key] = ResultsCollector({
            "tier": settings.tier, "models": [c.id for c in lab.cards], "artifacts": settings.artifacts,
            "imagenet": settings.imagenet, "weights_dir": settings.weights_dir, "profile": settings.profile,
            "profile_option": settings.profile,
            "eval_images": settings.eval_images, "calib_images": settings.calib_images,
            "threads": settings.threads, "shard": f"{shard[0]}/{shard[1]}" if shard else None,
            "shard_plan": shard_plan,
            "rescale_budgets": bool(settings.extra.get("rescale_budgets"))})
        config.stash[_collector_key].phases_path = phases_path(config)
        config.pluginmanager.register(_ResultsListener(config, config.stash[_collector_key]), "zooconform-results")


def pytest_sessionstart(session: pytest.Session) -> None:
    # here, not in pytest_configure: junitxml creates config._xml in its own pytest_configure,
    # which may run after ours (measured: no global property landed in the XML from there)
    config = session.config
    if _collector_key in config.stash:  # the controller: the host facts that cost nothing, for snapshots
        fp = host_fingerprint(config, measure_peaks=False)
        config.stash[_collector_key].fingerprint = fp
        _add_html_environment(config, fp)
    xml = _junit_xml(config)
    if xml is not None:  # JUnit: the test suite carries machine, versions and profile
        settings = lab_of(config).settings
        shard = config.getoption("--shard")
        for k, v in {**{f"machine.{k}": v for k, v in machine_info().items()},
                     **{f"version.{k}": v for k, v in library_versions().items()},
                     "tier": settings.tier, "data": str(settings.imagenet or "embedded"), "shard": shard or ""}.items():
            xml.add_global_property(k, str(v))
    _start_watchdog(config)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """``zooconform run -j`` starts the latency phase with phase 1 (harness/commands/run.py): it
    imports and collects, then waits here until phase 1 has ended, so none of its tests runs
    beside phase 1's workers. Its wall time (results.json, JUnit) starts when the gate opens."""
    gate = os.environ.get(START_GATE_ENV)
    if not gate or hasattr(session.config, "workerinput") or session.config.option.collectonly:
        return
    wait_for_gate(Path(gate))
    collector = session.config.stash.get(_collector_key, None)
    if collector is not None:
        collector.started = time.time()
    # JUnit's suite time and the terminal's "in N s" start at the gate too (both pytest-private;
    # an older pytest counts the wait)
    try:
        from _pytest.timing import Instant
    except ImportError:
        return
    for owner, attr in ((_junit_xml(session.config), "suite_start"),
                        (session.config.pluginmanager.get_plugin("terminalreporter"), "_session_start")):
        if owner is not None and hasattr(owner, attr):
            setattr(owner, attr, Instant())


def wait_for_gate(gate: Path, poll_s: float = 0.05) -> None:
    """Until ``gate`` exists; ends the session if the process that started this one is gone
    (nobody is left to open it: the run was killed)."""
    parent = os.getppid()
    while not gate.exists():
        if os.getppid() != parent:
            pytest.exit(f"zooconform run (pid {parent}) ended before this phase's start gate {gate} opened",
                        returncode=pytest.ExitCode.INTERRUPTED)
        time.sleep(poll_s)


# --- the host fingerprint (harness/host.py) -------------------------------------------------

_fingerprint_key = pytest.StashKey[dict]()


def fingerprint_threads(config: pytest.Config) -> int:
    """--threads, else what the latency suite uses (every CPU this process may run on)."""
    from .host import usable_cpus

    return config.getoption("--threads") or usable_cpus()


def host_fingerprint(config: pytest.Config, measure_peaks: bool) -> dict:
    """This host's fingerprint as a dict (``one_line`` included). The peaks (fp32 and int8 ORT
    GEMMs, ~11 s) are measured once, at the run's --threads, only when asked: at the end of a
    run that ran a latency check (never for --help, --collect-only or a run without latency);
    the latency suite's own peaks are the same measurement (memoised in the session's lab)."""
    cached = config.stash.get(_fingerprint_key, None)
    if cached is not None and (cached.get("fp32_peak_gflops") or not measure_peaks):
        return cached
    if measure_peaks:
        from .latency import checks as latencychecks

        fp = latencychecks.host_figures(fingerprint_threads(config), lab=config.stash.get(_lab_key, None))
    else:  # CPU flags only: no onnxruntime, no measurement
        from . import host

        fp = host.fingerprint(fingerprint_threads(config))
    out = {**fp.as_dict(), "one_line": fp.one_line()}
    config.stash[_fingerprint_key] = out
    return out


JUNIT_FINGERPRINT = ("host_class", "isa", "arch", "u8s8_saturates", "fp32_peak_gflops", "int8_peak_gops",
                     "peak_threads", "peaks_quiet", "flags_source")


def _junit_fingerprint(config: pytest.Config, fp: dict) -> None:
    xml = _junit_xml(config)
    if xml is None:
        return
    for k in JUNIT_FINGERPRINT:
        v = fp.get(k)
        xml.add_global_property(f"machine.{k}", " ".join(v) if isinstance(v, list) else ("" if v is None else str(v)))
    xml.add_global_property("machine.fingerprint", fp.get("one_line", ""))


def _add_html_environment(config: pytest.Config, fp: dict) -> None:
    """pytest-html's Environment table (pytest-metadata) gets the host facts known at start."""
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    meta = config.stash.get(metadata_key, None)
    if meta is None:
        return
    meta["Host class"] = fp.get("host_class")
    meta["CPU"] = f"{fp.get('cpu')}, {fp.get('cores')} cores"
    meta["ISA"] = " ".join(fp.get("isa") or []) or "no flags read"
    meta["U8S8 kernels may saturate"] = str(fp.get("u8s8_saturates"))


_html_report_key = pytest.StashKey[object]()


@pytest.hookimpl(optionalhook=True)
def pytest_html_report_title(report) -> None:
    """Keep pytest-html's report object: its title becomes the verdict once the run knows it."""
    config = getattr(report, "_config", None)
    if config is not None:
        config.stash[_html_report_key] = report


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix, summary, postfix, session) -> None:
    """pytest-html's summary: the fingerprint with its peaks and the run's latency-budget line."""
    config = session.config
    fp = config.stash.get(_fingerprint_key, None)
    if fp is None:
        return
    doc = config.stash.get(_doc_key, None)
    if doc:
        from .report.verdict import level, settings_line, verdict_line

        colour = {"fail": ("#fde2e1", "#b00020"), "incomplete": ("#fde2e1", "#b00020"),
                  "known": ("#fff3d6", "#8a5a00")}.get(level(doc), ("#e4f4e8", "#11632b"))
        report = config.stash.get(_html_report_key, None)
        if report is not None:  # the page's title (its first line) is the verdict
            report.title = f"zooconform: {verdict_line(doc)}"
        prefix.insert(0, f'<p style="font-size:16px;font-weight:700;padding:.4em .7em;background:{colour[0]};'
                         f'color:{colour[1]};border:1px solid {colour[1]}">{html.escape(verdict_line(doc))}</p>'
                         f"<p>{html.escape(settings_line(doc))}</p>")
    prefix.append(f"<p><b>Machine:</b> {html.escape(fp.get('one_line', ''))}</p>")
    for note in (doc or {}).get("notes") or []:
        prefix.append(f"<p><b>Latency budgets:</b> {html.escape(note)}</p>")


def _junit_xml(config: pytest.Config):
    """pytest's JUnit writer on the controller (None without --junitxml and on xdist workers).

    pytest keeps it in ``config.stash[xml_key]`` (older pytest: ``config._xml``); the public
    ``record_testsuite_property`` fixture does not work under xdist (pytest#7767)."""
    try:
        from _pytest.junitxml import xml_key
    except ImportError:
        return getattr(config, "_xml", None)
    return config.stash.get(xml_key, None)


def shard_option(config: pytest.Config):
    """``--shard I/N`` as a :class:`harness.shards.Shard` (index, count, durations file), or None.

    The durations file is ``--durations-file`` where the option is registered and given, else
    ``$ZOOCONFORM_DURATIONS_FILE`` (what ``zooconform run --durations-file`` sets), else the
    shipped fixtures/durations/test_durations.json; a named file that does not exist is a usage
    error (a typo must not fall back to round-robin in silence)."""
    from .shards import Shard, durations_path

    value = config.getoption("--shard")
    if not value:
        return None
    try:
        index, count = parse_shard(value)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    given = config.getoption("--durations-file", default=None)
    try:
        return Shard(index, count, durations_path(given))
    except ConfigError as e:
        raise pytest.UsageError(str(e)) from None


def shard_cards(cards: list, index: int, count: int, durations_file: Path | None = None) -> list:
    """Shard ``index`` (1-based) of ``count`` (harness/shards.py): models balanced by the
    recorded seconds of their tests (longest first, to the least loaded shard), round-robin by
    id when the durations file has no figure for any selected model. Every shard computes the
    same plan, so the shards partition the models whatever order the ids were given in."""
    from . import shards

    try:
        return shards.select(cards, index, count, durations_file)
    except ConfigError as e:
        raise pytest.UsageError(f"--shard {index}/{count}: {e}") from None


def lab_of(config: pytest.Config) -> Lab:
    return config.stash[_lab_key]


# --- parametrization over the registry ----------------------------------------------------

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``model_card``: one case per selected model; ``published_row``: one per (model, row).

    Every case of a model shares an xdist group, so its artifacts are built once per worker.
    """
    lab = lab_of(metafunc.config)
    fam, tier, want = (_marker_arg(metafunc, name) for name in ("zoo_family", "zoo_tier", "zoo_rows"))
    cards = [c for c in lab.cards if (fam is None or c.family == fam) and (tier is None or tier in c.tiers)]
    if "published_row" in metafunc.fixturenames:
        want = want or (lambda row: True)
        metafunc.parametrize(
            ("model_card", "published_row"),
            [pytest.param(c, r, id=f"{c.id}-{row_id(r)}", marks=[pytest.mark.xdist_group(c.id)])
             for c in cards for r in c.published if want(r)],
        )
    elif "model_card" in metafunc.fixturenames:
        metafunc.parametrize(
            "model_card",
            [pytest.param(c, id=c.id, marks=[pytest.mark.xdist_group(c.id)]) for c in cards],
        )
    _parametrize_runtimes(metafunc)


def selected_runtimes(config: pytest.Config) -> list[str]:
    """The ``--runtime`` ids, validated (an unknown name is a usage error)."""
    from . import runtimes

    try:
        return [s.id for s in runtimes.parse(config.getoption("--runtime"))]
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


def _parametrize_runtimes(metafunc: pytest.Metafunc) -> None:
    """``runtime``: one case per ``--runtime`` entry; ``runtime_pair``: (first, other) per other
    entry, for the cross-runtime check. The fixtures skip a runtime this host cannot run."""
    ids = selected_runtimes(metafunc.config)
    if "runtime" in metafunc.fixturenames:
        metafunc.parametrize("runtime", ids, indirect=True, ids=ids)
    if "runtime_pair" in metafunc.fixturenames:
        pairs = [(ids[0], other) for other in ids[1:]]
        metafunc.parametrize("runtime_pair", pairs or [None], indirect=True,
                             ids=[f"{a}-vs-{b}" for a, b in pairs] or ["one-runtime"])


def row_id(row) -> str:
    return f"{'+'.join(row.sources)}-{row.seed}-{row.name}"


ZOO_MARKERS = (
    "zoo_family(name): the check applies to the models of one family (hrnet, resnest, repvgg)",
    "zoo_tier(name): the check runs only for the models of one tier (smoke, full)",
    "zoo_rows(predicate): parametrize over the published rows for which predicate(row) is true",
)


def _marker_arg(metafunc: pytest.Metafunc, name: str):
    """The first argument of the closest ``name`` marker (function, then class, then module
    ``pytestmark``), or None."""
    marker = next(metafunc.definition.iter_markers(name), None)
    return marker.args[0] if marker is not None and marker.args else None


def rows_with(predicate) -> pytest.MarkDecorator:
    """``pytest.mark.zoo_rows(predicate)``: parametrize a check only over published rows that
    satisfy ``predicate``."""
    return pytest.mark.zoo_rows(predicate)


def family(name: str) -> pytest.MarkDecorator:
    """``pytest.mark.zoo_family(name)``: restrict a check to one family (e.g. RepVGG
    re-parameterization); as ``pytestmark`` it applies to a whole suite file."""
    return pytest.mark.zoo_family(name)


def only_tier(name: str) -> pytest.MarkDecorator:
    """``pytest.mark.zoo_tier(name)``: run a check only for models of a tier (e.g. costly checks
    on "smoke" models)."""
    return pytest.mark.zoo_tier(name)


def _load_expectations() -> list[dict]:
    """``[[xfail]]`` entries: ``test`` (function name glob), ``params`` (case id glob), ``reason``;
    optional ``host_class`` (glob or list of globs: the entry holds only on those host classes,
    ``harness/host.py``) and ``suite_artifacts_only`` (true: not when the manifest names files
    of that model, whose findings are the user's to see). Validated by harness/config.py's model."""
    return load_expectations(EXPECTATIONS)


def _expectation_applies(e: dict, this_host_class: str, lab: Lab, card) -> bool:
    hc = e.get("host_class")
    if hc is not None and not any(fnmatch.fnmatchcase(this_host_class, h) for h in ([hc] if isinstance(hc, str) else hc)):
        return False
    if e.get("suite_artifacts_only") and card is not None and lab.manifest_error is None \
            and lab.manifest.for_model(card.id).paths:
        return False
    return True


class ExpectationWarning(pytest.PytestWarning):
    """An ``[[xfail]]`` entry of fixtures/expectations.toml that covers no test: stale."""


def suite_test_names(folder: Path = ROOT / "suites") -> set[str]:
    """Names of the test functions defined in the harness's suite files (read, not imported)."""
    import ast

    names: set[str] = set()
    for path in sorted(folder.glob("test_*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            continue
        names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    return names


def unmatched_expectations(entries: list[dict], cases: list[tuple[str, str]], defined: set[str],
                           every_model: bool) -> list[str]:
    """The ``[[xfail]]`` entries that match no test, one line each: an entry whose ``test`` names
    no test function of the suites (always), and, when the run collected every model of the
    zoo, an entry that matches no collected (function, case id) of a collected function."""
    collected = {name for name, _ in cases}
    out = []
    for e in entries:
        what = f"[[xfail]] test = {e['test']!r}, params = {e['params']!r}"
        if not any(fnmatch.fnmatchcase(n, e["test"]) for n in defined):
            out.append(f"{what}: no test function of suites/ has that name")
        elif every_model and any(fnmatch.fnmatchcase(n, e["test"]) for n in collected) and not any(
                fnmatch.fnmatchcase(n, e["test"]) and fnmatch.fnmatchcase(cid, e["params"]) for n, cid in cases):
            out.append(f"{what}: matches none of the collected cases")
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Known failures are data (fixtures/expectations.toml): strict, with a reason, and they
    only cover a *check* failing (CheckFailure), never a crash of the harness."""
    # a family-only (or tier-only) check when no selected model is of that family: pytest made
    # one empty-parameter case ([NOTSET], skipped); it is deselected instead, not reported
    empty = [it for it in items if "model_card" in getattr(it, "fixturenames", ())
             and not hasattr(getattr(getattr(it, "callspec", None), "params", {}).get("model_card"), "id")]
    if empty:
        config.hook.pytest_deselected(items=empty)
        items[:] = [it for it in items if it not in empty]
    shard = shard_option(config)
    if shard is not None and shard[0] != 1:  # tests of no model run once, in shard 1
        other = [it for it in items if "model_card" not in getattr(getattr(it, "callspec", None), "params", {})]
        if other:
            config.hook.pytest_deselected(items=other)
            items[:] = [it for it in items if it not in other]
    try:
        entries = _load_expectations()
    except ConfigError as err:
        raise pytest.UsageError(str(err)) from None
    this_host_class = host_class(cpu_facts()) if any("host_class" in e for e in entries) else ""
    lab = lab_of(config)
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        name = item.originalname if hasattr(item, "originalname") else item.name
        card = callspec.params.get("model_card")
        for e in entries:
            if (fnmatch.fnmatchcase(name, e["test"]) and fnmatch.fnmatchcase(callspec.id, e["params"])
                    and _expectation_applies(e, this_host_class, lab, card)):
                item.add_marker(pytest.mark.xfail(reason=e["reason"], strict=e.get("strict", True),
                                                  raises=CheckFailure))
                break
    items[:] = in_model_order(items)
    cases = [(getattr(it, "originalname", it.name), it.callspec.id) for it in items if hasattr(it, "callspec")]
    every_model = {c.id for c in lab.cards} == set(lab.zoo)
    for line in unmatched_expectations(entries, cases, suite_test_names(), every_model):
        warnings.warn(ExpectationWarning(f"{EXPECTATIONS}: {line} (a stale known failure: fix or remove it)"),
                      stacklevel=2)


def in_model_order(items: list[pytest.Item]) -> list[pytest.Item]:
    """Each model's tests one after another (the suites' order within a model), the models in the
    order they first appear; tests of no model first. A serial run (a nightly shard) then holds
    one model's references, logits and sessions at a time and lets them go at the next model
    (pytest_runtest_setup): file by file it held every model of the shard, 5.8-7 GB in each of
    shard 4's phases (2026-12-03), even hrnet_w18's. Measured (2026-12-04, card, export, quant,
    preprocess and reparam of hrnet_w18_small_v1, repvgg_a0, resnest50, full tier, cold): their
    peaks 3328 / 3306 / 4246 MB file by file, 2742 / 2939 / 4219 MB model by model; the run's
    maximum stays its largest model's own evaluation."""
    order: dict[str | None, list[pytest.Item]] = {None: []}
    for it in items:
        order.setdefault(model_of(it), []).append(it)
    return [it for group in order.values() for it in group]


def model_of(item: pytest.Item) -> str | None:
    """The model a test is about: its structured field ``model`` (pytest_itemcollected), None
    for a test of no model."""
    model = dict(item.user_properties).get("model")
    return model if isinstance(model, str) else None


def pytest_collection_finish(session: pytest.Session) -> None:
    """One shared calibration pass (harness/quant/quantize.py) computes only the methods this
    session runs. Read here, after every plugin's deselection: in pytest_collection_modifyitems
    this plugin's hook runs before `-m "not slow"` drops the MinMax and Entropy cases, and the
    smoke tier paid for Entropy's histograms without running it (resnest50: 84 s vs 47 s)."""
    asked = {it.callspec.params.get("method") for it in session.items if hasattr(it, "callspec")} - {None}
    if asked:
        from .quant.quantize import DEFAULT_METHOD, METHODS

        lab_of(session.config).settings.extra["calibration_methods"] = [
            m for m in METHODS if m in asked or m == DEFAULT_METHOD]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup by model, read from the node id: pytest 9's structured node ids drop the
    @group suffix xdist 3.8 appends, so loadgroup silently became plain load (pytest-xdist#1386)
    and every worker rebuilt every model's artifacts."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    from .shards import model_of

    lab = lab_of(config)
    ids = set(lab.zoo)
    rank = model_rank(lab.cards, config.getoption("--durations-file"), list(lab.zoo.values()))

    class ModelScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return model_of(nodeid, ids) or nodeid

        def _assign_work_unit(self, node) -> None:
            # the most expensive model waiting goes next (longest-processing-time first): handed
            # out in collection order, resnest50 started last on the smoke tier and one worker
            # ran it alone at the end (phase 1 709 s; 607 s with this order)
            if self.workqueue:
                first = min(enumerate(self.workqueue), key=lambda iv: (rank.get(iv[1], len(rank)), iv[0]))[1]
                self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

    return ModelScheduling(config, log)


def model_rank(cards, durations_file: str | None, every_card=()) -> dict[str, int]:
    """Model id -> 0 for the most expensive of ``cards`` (recorded seconds, else the FLOPs
    estimate of harness/shards.py), 1 for the next; {} when no durations file is readable."""
    from .shards import durations_path, load_durations, model_costs

    try:
        costs, _ = model_costs(cards, load_durations(durations_path(durations_file)), every_card)
    except (OSError, ValueError, ZooconformError):
        return {}
    return {m: i for i, m in enumerate(sorted(costs, key=lambda m: (-costs[m].seconds, m)))}


# --- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Lab:
    return lab_of(request.config)


class Recorder:
    """``record(name=value, ...)``: figures into JUnit properties, results.json and HTML."""

    def __init__(self, node: pytest.Item):
        self.node = node
        self.figures: dict[str, object] = {}

    def __call__(self, **figures) -> None:
        # names are a contract (harness/figures.py): an undeclared one is an error in the self-tests
        # (ZOOCONFORM_STRICT_FIGURES=1), a warning in a production run
        figure_contract.validate(figures, strict=os.environ.get("ZOOCONFORM_STRICT_FIGURES") == "1")
        for k, v in figures.items():
            v = jsonable(v)
            self.figures[k] = v
            self.node.user_properties.append((FIGURE_PREFIX + k, v))


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Recorder:
    return Recorder(request.node)


def _available_spec(name: str):
    from . import runtimes

    spec = runtimes.spec(name)
    ok, why = spec.available()
    if not ok:
        pytest.skip(f"runtime {spec.id} is not available here: {why}")
    return spec


@pytest.fixture
def runtime(request: pytest.FixtureRequest):
    """The ``--runtime`` entry of this case (a :class:`harness.runtimes.Spec`); skips, with the
    reason, when this host cannot run it (package or device missing)."""
    return _available_spec(getattr(request, "param", None) or "ort")


@pytest.fixture
def runtime_pair(request: pytest.FixtureRequest):
    """(runtime A, runtime B) for the cross-runtime check: the first ``--runtime`` and another."""
    pair = getattr(request, "param", None)
    if pair is None:
        pytest.skip("one runtime selected: nothing to compare it with (--runtime ort,openvino,torch)")
    return _available_spec(pair[0]), _available_spec(pair[1])


def pytest_itemcollected(item: pytest.Item) -> None:
    """results.json's structured fields of each test (model, family, check, precision, batch,
    runtime, ...: harness/figures.py TEST_FIELDS), so that no reader parses node ids."""
    callspec = getattr(item, "callspec", None)
    fields = figure_contract.test_fields(callspec.params if callspec is not None else {},
                                         suite=item.path.stem if item.path else "",
                                         check=getattr(item, "originalname", None) or item.name)
    item.user_properties.extend(fields.items())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The test's model is the default model of the phases it runs (harness/phases.py), and the
    lab lets the memos of the model before it go; an xdist worker takes its current share of the
    CPUs (harness/host.py WorkerCpuShare)."""
    lab = item.config.stash.get(_lab_key, None)
    if lab is not None:
        model = lab.phase.current_model = model_of(item)
        if model is not None:
            lab.keep_only_model(model)
        share = item.config.stash.get(_cpu_share_key, None)
        if share is not None:
            _take_cpu_share(lab, share)


def _take_cpu_share(lab: Lab, share: Any) -> None:
    """The worker's current share of the CPUs, for torch and the sessions made from now on."""
    threads = share.threads()
    if threads != lab.settings.threads:
        lab.take_threads(threads)


_cpu_share_key = pytest.StashKey[Any]()


def start_cpu_share(config: pytest.Config) -> None:
    """On an xdist worker without --threads: mark it running for :class:`WorkerCpuShare`."""
    wi = getattr(config, "workerinput", None)
    if wi is None or config.getoption("--threads") or not wi.get("testrunuid"):
        return
    import tempfile

    from .host import WorkerCpuShare

    share = WorkerCpuShare(Path(tempfile.gettempdir()) / f"zooconform-xdist-{wi['testrunuid']}",
                           str(wi.get("workerid", os.getpid())), int(wi.get("workercount", 1)))
    share.enter()
    config.stash[_cpu_share_key] = share
    # at each phase too, not only at each test's setup: resnest50's int8 check (calibration,
    # then 76 s of evaluation) started while the other worker was busy and ran on 1 thread
    # after it had finished
    lab = lab_of(config)
    lab.phase.on_start = lambda: _take_cpu_share(lab, share)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A latency check's call is the timing of the artifacts under test (its builds inside are
    their own phases: self time, harness/phases.py)."""
    lab = item.config.stash.get(_lab_key, None)
    if lab is None or item.get_closest_marker("latency") is None:
        return (yield)
    with lab.phase("timing"):
        return (yield)


# --- reports ------------------------------------------------------------------------------

def _wants_traceback(config: pytest.Config) -> bool:
    """A check's failure is its message (one line, like an input error); the traceback only
    with ``-v`` or ``--tb=long``/``--tb=native`` (``--full-trace`` too)."""
    return (config.getoption("verbose", 0) > 0 or config.getoption("tbstyle", "auto") in ("long", "native")
            or bool(config.getoption("fulltrace", False)))


def _check_location(item: pytest.Item, excinfo) -> str:
    """``suites/test_quant.py:123``: the line of the test file the failure passed through."""
    try:
        for entry in reversed(excinfo.traceback):
            if Path(str(entry.path)) == Path(str(item.path)):
                return f"{item.location[0]}:{entry.lineno + 1}"
    except Exception:  # a traceback without paths: the test's own line
        pass
    return f"{item.location[0]}:{(item.location[1] or 0) + 1}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None:
        exc = call.excinfo.value
        if isinstance(exc, (CheckFailure, Inconclusive)):
            for k, v in exc.figures.items():
                report.user_properties.append((FIGURE_PREFIX + k, jsonable(v)))
            # results.json's message: the check's own (an inconclusive one says so first, as its skip does)
            report.user_properties.append(("message", f"inconclusive: {exc}" if isinstance(exc, Inconclusive)
                                           else str(exc)))
        if isinstance(exc, Inconclusive):
            report.user_properties.append(("inconclusive", str(exc)))
            if ("outcome", "inconclusive") not in item.user_properties:  # JUnit writes the item's properties
                item.user_properties.append(("outcome", "inconclusive"))
            if not exc.failing and report.when == "call":
                # its own outcome: neither pass nor fail (shown as INCONCLUSIVE, exit code unaffected)
                report.outcome = "skipped"
                report.longrepr = (str(item.path), item.location[1] or 0, f"inconclusive: {exc}")
            elif report.failed and not _wants_traceback(item.config):
                report.longrepr = f"{_check_location(item, call.excinfo)}: Inconclusive: {exc}"
        if isinstance(exc, ZooconformError):
            # a user-input problem: short, actionable message instead of a traceback
            report.longrepr = f"{type(exc).__name__}: {exc}"
            if report.failed and ("outcome", INPUT_ERROR_OUTCOME) not in item.user_properties:
                item.user_properties.append(("outcome", INPUT_ERROR_OUTCOME))  # JUnit: type zooconform.input_error
        elif (isinstance(exc, CheckFailure) and (report.failed or hasattr(report, "wasxfail"))
              and not _wants_traceback(item.config)):
            # a check that failed: what was measured, what was expected, where to look; the
            # traceback (lab objects, array reprs) says nothing more (-v or --tb=long shows it)
            report.longrepr = f"{_check_location(item, call.excinfo)}: CheckFailure: {exc}"
        if report.failed or (isinstance(exc, Inconclusive) and report.when == "call"):
            _write_repro(item, report, exc)
        if (report.when == "call" and report.skipped and isinstance(exc, pytest.skip.Exception)
                and str(exc.msg).startswith(NOT_APPLICABLE_PREFIX)):
            # a budget that does not hold on this host: its own outcome, "not applicable"
            report.user_properties.append(("not_applicable", str(exc.msg)))
            report.longrepr = (str(item.path), item.location[1] or 0, str(exc.msg))
    if report.when == "call":
        figs = [(k[len(FIGURE_PREFIX):], v) for k, v in report.user_properties if k.startswith(FIGURE_PREFIX)]
        if figs:
            _attach_html(item, report, figs)


def _write_repro(item: pytest.Item, report, exc: BaseException) -> None:
    """``<run folder>/repro/<test>/`` for a failing or inconclusive test (harness/report/repro.py)."""
    config = item.config
    if config.getoption("--no-results") or not isinstance(exc, Exception):
        return
    if not {"model_card", "lab"} & set(getattr(item, "fixturenames", ())):
        return  # not a conformance check (the harness's own tests): no bundle
    try:
        from .report import repro

        figures = dict(getattr(exc, "figures", None) or {})
        for k, v in report.user_properties:
            if k.startswith(FIGURE_PREFIX):
                figures.setdefault(k[len(FIGURE_PREFIX):], v)
        outcome = "inconclusive" if isinstance(exc, Inconclusive) else ("error" if report.when != "call" else "failed")
        folder = repro.write_bundle(
            run_folder(config) / "repro", report.nodeid, outcome=outcome, exc_type=type(exc).__name__,
            message=str(exc), figures=figures, command=repro_command(item, run_folder(config) / "repro"),
            inputs=_repro_inputs(item, exc))
        try:  # relative to the folder of results.json (the report links it from there)
            where = str(folder.relative_to(run_folder(config)))
        except ValueError:
            where = str(folder)
        report.user_properties.append(("repro", where))
    except Exception as e:  # a bundle that cannot be written must not hide the failure itself
        report.user_properties.append(("repro_error", f"{type(e).__name__}: {e}"))


def _repro_inputs(item: pytest.Item, exc: BaseException) -> dict:
    """What the check exposed as arrays (``inputs`` on the exception), plus the file names of the
    image splits the run had read by then (never loads images for it)."""
    out = {k: v for k, v in (getattr(exc, "inputs", None) or {}).items()}
    lab = item.config.stash.get(_lab_key, None)
    for split, images in (getattr(lab, "_images", None) or {}).items():
        samples = getattr(images, "samples", None) or []
        out[f"{split}_names"] = [str(s.name) for s in samples]
        if samples and all(getattr(s, "label", None) is not None for s in samples):
            out[f"{split}_labels"] = [int(s.label) for s in samples]
    return out


# the options that decide what a test measures: passed on by each repro command as given
_REPRO_OPTIONS = ("--tier", "--artifacts", "--weights-dir", "--imagenet", "--cache-dir", "--eval-images",
                  "--calib-images", "--threads", "--profile", "--weights-source")


def repro_command(item: pytest.Item, repro_root: Path) -> str:
    """One shell command that re-runs exactly this test with the run's options; its results go to
    ``<bundle>/rerun/`` (never over the run's own results.json)."""
    from .report.repro import command_line, sanitize

    config = item.config
    inv = config.invocation_params.dir
    path, _, rest = item.nodeid.partition("::")
    node = f"{Path(str(item.path)).resolve()}::{rest}" if rest else str(Path(str(item.path)).resolve())
    argv = [sys.executable, "-m", "pytest", node, "-p", "harness.plugin"]
    if config.inipath:
        argv += ["-c", str(config.inipath)]
    argv.append(f"--rootdir={config.rootpath}")
    callspec = getattr(item, "callspec", None)
    card = callspec.params.get("model_card") if callspec is not None else None
    models = getattr(card, "id", None) or config.getoption("--models")
    if models:
        argv.append(f"--models={models}")
    for opt in _REPRO_OPTIONS:
        value = config.getoption(opt)
        if value is not None:
            v = Path(value).resolve() if opt in ("--artifacts", "--weights-dir", "--imagenet", "--cache-dir") else value
            argv.append(f"{opt}={v}")
    if config.getoption("--rescale-budgets"):
        argv.append("--rescale-budgets")
    argv += [f"--report-dir={(repro_root / sanitize(item.nodeid) / 'rerun').resolve()}", "-p", "no:cacheprovider"]
    return command_line(inv, argv)


def _attach_html(item, report, figs) -> None:
    try:
        import pytest_html
    except ImportError:
        return
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in figs)
    extras = getattr(report, "extras", [])
    extras.append(pytest_html.extras.html(f"<table class='zc-figures'><tr><th>figure</th><th>value</th></tr>{rows}</table>"))
    report.extras = extras


NOT_APPLICABLE_PREFIX = "not applicable:"  # harness/latency/checks.py NOT_APPLICABLE


def pytest_report_teststatus(report, config):
    if any(n == "inconclusive" for n, _ in getattr(report, "user_properties", [])):
        if report.when == "call" or (report.when == "setup" and report.skipped):
            return "inconclusive", "I", "INCONCLUSIVE"
    if report.when == "call" and report.skipped and any(n == "not_applicable" for n, _ in
                                                        getattr(report, "user_properties", [])):
        return "not applicable", "n", "NOT APPLICABLE"
    return None


class _ResultsListener:
    """Registered on the controller only: under xdist the workers' reports arrive here.

    It also keeps results.json current while the run goes (a snapshot marked incomplete at
    most every SNAPSHOT_S seconds, after a test's teardown), so a run killed outright (SIGKILL, OOM, a lost CI
    runner) still leaves what it had measured; and it knows which tests were collected and
    which ran on a crashed xdist worker, so an unfinished run is never mistaken for a
    complete one.
    """

    # a kill loses at most this many seconds of reports; a snapshot of a 600-test run takes
    # a few ms (one JSON write), so every 2 s costs nothing measurable
    SNAPSHOT_S = 2.0

    def __init__(self, config: pytest.Config, collector: ResultsCollector):
        self.config = config
        self.collector = collector
        self.collected: set[str] = set()
        self.crashed: list[str] = []
        self._last_snapshot = 0.0
        self.latency_ran = False  # a latency check's body ran (here or on an xdist worker)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected.update(item.nodeid for item in session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        self.collected.update(ids)

    def pytest_runtest_logreport(self, report) -> None:
        self.collector.add(report)
        if report.when == "call" and "latency" in report.keywords:  # keywords travel with xdist's reports
            self.latency_ran = True
        if report.when == "???":  # pytest-xdist's report for the test a worker died in
            self.crashed.append(report.nodeid)
        if report.when in ("teardown", "???") and time.monotonic() - self._last_snapshot > self.SNAPSHOT_S:
            self._last_snapshot = time.monotonic()
            self.write(complete=False, exitstatus=None,
                       reasons=["snapshot taken while the run was going: it did not finish (killed?)"])

    def incomplete_reasons(self, interrupted: bool) -> list[str]:
        reasons = []
        if interrupted:
            reasons.append("interrupted (Ctrl-C, -x/--maxfail or a stop request)")
        if self.crashed:
            reasons.append(f"{len(self.crashed)} test(s) ran on a crashed worker: {', '.join(self.crashed[:5])}")
        missing = self.collected - set(self.collector.tests)
        if missing:
            reasons.append(f"{len(missing)} of {len(self.collected)} collected test(s) never reported")
        return reasons

    def write(self, complete: bool, exitstatus: int | None, reasons: list[str]) -> dict | None:
        if self.config.getoption("--no-results"):
            return None
        if not any("model" in t for t in self.collector.tests.values()):
            return None  # no conformance check ran (e.g. only the harness's own tests)
        lab = lab_of(self.config)
        self.collector.settings["data_problems"] = lab.data_problems[:50]
        if lab.manifest_error:
            self.collector.settings["manifest_error"] = str(lab.manifest_error)
        doc = self.collector.document(complete and not reasons, exitstatus)
        doc["incomplete_reasons"] = reasons
        doc["collected"] = len(self.collected)
        atomic_write_text(results_path(self.config), json.dumps(doc, indent=1))
        return doc


def results_path(config: pytest.Config) -> Path:
    return run_folder(config) / "results.json"


@pytest.hookimpl(tryfirst=True)  # before junitxml and pytest-html write their files
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _collector_key not in config.stash:
        return
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED or bool(session.shouldstop)
    ran = bool(session.testscollected) and not config.getoption("collectonly")
    collector = config.stash[_collector_key]
    reported = (any("model" in t for t in collector.tests.values()) or _junit_xml(config) is not None
                or bool(config.getoption("htmlpath", None)))
    # the peaks (~11 s: two GEMMs, rounds apart) only for a run that ran a latency check (they
    # scale its budgets, and its own measurement is reused here), ran to its end and reports
    # them: a run without latency (phase 1 of `zooconform run -j`, CI's suites step) names
    # the host by its ISA flags, which is what its verdicts depend on
    listener = config.pluginmanager.get_plugin("zooconform-results")
    latency_ran = bool(getattr(listener, "latency_ran", False))
    fp = host_fingerprint(config, measure_peaks=ran and reported and not interrupted and latency_ran)
    collector.fingerprint = fp
    _junit_fingerprint(config, fp)
    if config.getoption("--no-results"):
        if exitstatus == pytest.ExitCode.TESTS_FAILED and _input_errors(session, None):
            session.exitstatus = INPUT_ERROR_EXIT
        return
    assert listener is not None  # registered in pytest_configure with the collector this hook reads
    doc = listener.write(True, int(exitstatus), listener.incomplete_reasons(interrupted))
    lab_of(config).phase.close()
    if doc is None:  # no conformance check ran (the harness's own tests): leave no folder behind
        _drop_phase_log(phases_path(config))
    if doc is not None:
        config.stash[_doc_key] = doc
        _junit_run_properties(config, doc)
    if exitstatus == pytest.ExitCode.TESTS_FAILED and not hasattr(config, "workerinput") and _input_errors(session, doc):
        # the same code as `zooconform run`: a CI tells a bad input from a failing check
        session.exitstatus = INPUT_ERROR_EXIT


def _drop_phase_log(path: Path | None) -> None:
    if path is None:
        return
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()  # only when empty: a folder that holds anything else stays
    except OSError:
        pass


def _input_errors(session: pytest.Session, doc: dict | None) -> bool:
    """Whether a test ended on an input or configuration error (InputError / ConfigError):
    from the results (under xdist the controller has no items), else from the items."""
    if doc is not None:
        return any(t.get("outcome") in ("failed", "error")
                   and str(t.get("message") or "").startswith(("InputError:", "ConfigError:", "OptionError:"))
                   for t in doc.get("tests") or [])
    return any(("outcome", INPUT_ERROR_OUTCOME) in getattr(item, "user_properties", ()) for item in session.items)


def _junit_run_properties(config: pytest.Config, doc: dict) -> None:
    """The applied profile and how it was chosen, and the verdict, once the run knows them
    (a profile is auto-detected by the latency suite, after the session started)."""
    xml = _junit_xml(config)
    if xml is None:
        return
    from .report.verdict import verdict_line

    s = doc.get("settings") or {}
    for k, v in (("profile", s.get("profile") or "none"), ("profile_how", s.get("profile_how") or ""),
                 ("profile_reason", s.get("profile_reason") or ""), ("verdict", verdict_line(doc))):
        xml.add_global_property(k, str(v))


INCONCLUSIVE_TYPE = "zooconform.inconclusive"
INPUT_ERROR_OUTCOME = "input_error"
INPUT_ERROR_TYPE = "zooconform.input_error"
INPUT_ERROR_EXIT = 6  # = harness/commands/run.py INPUT_ERROR: your input is wrong, not your model


def mark_inconclusive_in_junit(path: Path) -> int:
    """Give every JUnit testcase whose property ``outcome`` is ``inconclusive`` a ``<skipped>``
    (or ``<failure>``) of type ``zooconform.inconclusive``, so a CI tells it from a skip, and one
    whose ``outcome`` is ``input_error`` a ``<failure>``/``<error>`` of type
    ``zooconform.input_error``, so a CI tells "your manifest is wrong" from "your model is wrong";
    returns how many were marked. pytest's junitxml writes every skip as ``pytest.skip``."""
    import xml.etree.ElementTree as ET

    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return 0
    n = 0
    for case in tree.getroot().iter("testcase"):
        props = case.find("properties")
        outcomes = {p.get("value") for p in props.iter("property") if p.get("name") == "outcome"} if props is not None else set()
        if INPUT_ERROR_OUTCOME in outcomes:
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None:
                    el.set("type", INPUT_ERROR_TYPE)
                    n += 1
        if "inconclusive" not in outcomes:
            continue
        for tag in ("skipped", "failure"):
            el = case.find(tag)
            if el is not None:
                el.set("type", INCONCLUSIVE_TYPE)
                msg = el.get("message") or ""
                if not msg.startswith("inconclusive"):
                    el.set("message", f"inconclusive: {msg}")
                n += 1
    if n:
        atomic_write_text(path, ET.tostring(tree.getroot(), encoding="unicode"))
    return n


def pytest_unconfigure(config: pytest.Config) -> None:
    share = config.stash.get(_cpu_share_key, None)
    if share is not None:
        share.leave()
    watchdog = config.stash.get(_watchdog_key, None)
    if watchdog is not None:
        watchdog.stop()
    xmlpath = getattr(config.option, "xmlpath", None)
    if xmlpath and not hasattr(config, "workerinput") and _collector_key in config.stash:
        mark_inconclusive_in_junit(Path(xmlpath))


_doc_key = pytest.StashKey[dict]()


# --- progress: no test is silent for minutes ------------------------------------------------

class _Watchdog:
    """A line when a test has run for ``first`` seconds, then every ``every`` seconds, naming the
    test and its phase (setup: building the model's artifacts, e.g. the reference model and its
    cache entries; call: the check), so a reader knows the run is alive and where the time goes.
    On the controller: under xdist the workers' test starts arrive here too."""

    def __init__(self, terminal, first: float = 30.0, every: float = 60.0, phases: Path | None = None,
                 say: Callable[[str], None] | None = None):
        self.terminal = terminal
        self.say = say or _TerminalLines(terminal, None)
        self.first, self.every = first, every
        # the phase log (harness/phases.py), written by this process and the xdist workers:
        # model · phase · elapsed for every step over ~5 s
        self.phases, self.phases_offset, self.progress = phases, 0, Progress()
        self.running: dict[str, list] = {}  # nodeid -> [started, phase, next announcement]
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="zooconform-progress", daemon=True)
        self.thread.start()

    def start(self, nodeid: str, phase: str = "setup") -> None:
        now = time.monotonic()
        with self.lock:
            self.running[nodeid] = [now, phase, now + self.first]

    def phase(self, nodeid: str, phase: str) -> None:
        with self.lock:
            if nodeid in self.running:
                self.running[nodeid][1] = phase

    def finish(self, nodeid: str) -> None:
        with self.lock:
            self.running.pop(nodeid, None)

    def due(self, now: float) -> list[str]:
        out = []
        with self.lock:
            for nodeid, rec in self.running.items():
                if now >= rec[2]:
                    what = {"setup": "setup: building the model's artifacts (reference, ONNX, int8; cached after)",
                            "call": "the check", "teardown": "teardown"}.get(rec[1], rec[1])
                    out.append(f"zooconform: {nodeid} running for {now - rec[0]:.0f} s ({what})")
                    rec[2] = now + self.every
        return out

    def phase_lines(self) -> list[str]:
        if self.phases is None:
            return []
        events, self.phases_offset = read_events(self.phases, self.phases_offset)
        return self.progress.feed(events, time.time())

    def _loop(self) -> None:
        while not self._stop.wait(2.0):
            for line in self.phase_lines() + self.due(time.monotonic()):
                try:
                    self.say(line)
                except Exception:  # the terminal went away (end of run): stop talking
                    return

    def stop(self) -> None:
        """Quiet from now on (idempotent), after the 'done in' lines of the steps that ended since
        the last look (the run's last step ends just before this); the thread ends before the
        descriptor it writes to closes."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=5.0)
        if self.thread.is_alive():
            return
        try:
            for line in self.phase_lines():
                self.say(line)
        except Exception:  # the terminal went away: nothing more to say
            pass
        close = getattr(self.say, "close", None)
        if close is not None:
            close()


class _TerminalLines:
    """The watchdog's lines, written past pytest's output capture. While a test runs, pytest
    points file descriptor 1 at a temporary file (``--capture=fd``, the default) and keeps what
    the test printed: a line written through the terminal reporter then went to that file, never
    to the screen, so a serial run was silent through a 489 s BatchNorm recalibration. The lines
    go to ``fd``, a duplicate of the terminal's descriptor taken while capture was off; pytest
    flushes its own output before each test, so nothing of it is pending behind them. A terminal
    stream without a descriptor (io.StringIO) gets them through the terminal reporter. One
    process writes them: a serial run's, or the xdist controller (which runs no test, so
    captures nothing)."""

    def __init__(self, terminal, fd: int | None):
        self.terminal, self.fd = terminal, fd
        self.width_after_mine: int | None = None  # pytest's idea of its open line when we last wrote

    def __call__(self, line: str) -> None:
        if self.fd is None:
            self.terminal.ensure_newline()
            self.terminal.write_line(line, yellow=True)
            return
        # a line of its own: after pytest's open line ("suites/test_quant.py .."), not after one
        # of ours (pytest has written nothing since: its width is what it was then); what pytest
        # writes next starts on the following line
        tw = self.terminal._tw
        width = tw.width_of_current_line
        lead = "\n" if width and width != self.width_after_mine else ""
        os.write(self.fd, (lead + tw.markup(line, yellow=True) + "\n").encode(errors="replace"))
        self.width_after_mine = width

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _terminal_descriptor(config: pytest.Config, terminal) -> int | None:
    """A duplicate of the terminal reporter's file descriptor, taken with pytest's capture
    suspended (it is, between tests; the context makes sure), or None where it has none."""
    capture = config.pluginmanager.getplugin("capturemanager")
    try:
        fileno = terminal._tw._file.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor (io.StringIO)
        return None
    if capture is None:
        return os.dup(fileno)
    with capture.global_and_fixture_disabled():
        return os.dup(fileno)


_watchdog_key = pytest.StashKey[_Watchdog]()


def _wrap_short_summary(terminal) -> None:
    """pytest's "short test summary info" cuts each message at the terminal's width, before the
    measured value and the budget; here each line is whole, wrapped at the width instead."""
    import textwrap

    original = terminal.short_test_summary

    def short_test_summary() -> None:
        config = terminal.config
        lines: list[tuple[str, dict]] = []
        verbose = config.option.verbose
        terminal.write_line = lambda line, **kw: lines.append((line, kw))  # the instance's, for this call
        config.option.verbose = max(verbose, 2)  # pytest trims below -vv
        try:
            original()
        finally:
            config.option.verbose = verbose
            del terminal.write_line
        width = max(60, terminal._tw.fullwidth)
        for line, kw in lines:
            if verbose < 2:  # one line per test, as pytest's own (an assertion's explanation stays above)
                line = line.split("\n", 1)[0]
            head, sep, msg = line.partition(" - ")
            if len(line) <= width or not sep:
                terminal.write_line(line, **kw)
                continue
            terminal.write_line(head, **kw)  # the outcome and the node id, never split
            for part in textwrap.wrap(msg, width, initial_indent="    ", subsequent_indent="    ",
                                      break_long_words=False, break_on_hyphens=False) or [msg]:
                terminal.write_line(part, **kw)

    terminal.short_test_summary = short_test_summary


def _start_watchdog(config: pytest.Config) -> None:
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None and not hasattr(config, "workerinput") and hasattr(terminal, "short_test_summary"):
        _wrap_short_summary(terminal)
    if (terminal is None or hasattr(config, "workerinput") or config.getoption("collectonly")
            or _collector_key not in config.stash or _watchdog_key in config.stash):
        return
    watchdog = _Watchdog(terminal, phases=phases_path(config),
                         say=_TerminalLines(terminal, _terminal_descriptor(config, terminal)))
    config.stash[_watchdog_key] = watchdog
    config.pluginmanager.register(_ProgressHooks(watchdog), "zooconform-progress")


class _ProgressHooks:
    """Registered with the watchdog: test starts (from workers too) and phases (same process)."""

    def __init__(self, watchdog: _Watchdog):
        self.watchdog = watchdog

    def pytest_runtest_logstart(self, nodeid, location) -> None:
        self.watchdog.start(nodeid)

    def pytest_runtest_logfinish(self, nodeid, location) -> None:
        self.watchdog.finish(nodeid)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item) -> None:
        self.watchdog.phase(item.nodeid, "call")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item) -> None:
        self.watchdog.phase(item.nodeid, "teardown")

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self.watchdog.stop()  # every test has ended: a line now would land inside the summary

    def pytest_runtest_logreport(self, report) -> None:
        # under xdist the controller learns the phases from the worker's reports: setup is over
        # once it reports (the check runs), the call once it reports
        if report.when == "setup":
            self.watchdog.phase(report.nodeid, "call")
        elif report.when == "call":
            self.watchdog.phase(report.nodeid, "teardown")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    doc = config.stash.get(_doc_key, None)
    if not doc:
        return
    from .report.summary import one_screen
    from .report.verdict import level

    lines = one_screen(doc, width=max(60, terminalreporter._tw.fullwidth - 4))
    red = level(doc) in ("fail", "incomplete")
    terminalreporter.write_sep("=", "zooconform: " + lines[0], red=red, green=not red, bold=True)
    for line in lines[1:]:
        terminalreporter.write_line(line)
    from .report.results import fingerprint_line

    terminalreporter.write_line(f"machine: {fingerprint_line(doc.get('machine') or {})}")
    lab = config.stash.get(_lab_key, None)
    for note in (lab.cache.notes if lab is not None else []):  # entries found corrupt and rebuilt
        terminalreporter.write_line(f"cache: {note}")
    terminalreporter.write_line(f"results: {results_path(config)}")
    if any(t.get("repro") for t in doc.get("tests") or []):
        terminalreporter.write_line(f"repro bundles: {run_folder(config) / 'repro'}")
