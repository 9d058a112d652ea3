"""The pytest plugin: options, fixtures, parametrization over the registry, reports.

Loaded by the repository's ``conftest.py`` (``pytest_plugins = ["harness.plugin"]``).
"""
from __future__ import annotations

import fnmatch
import html
import os
import tomllib
from pathlib import Path

import pytest

from .compare import CheckFailure, Inconclusive
from .errors import ConfigError, ZooconformError
from .lab import Lab, Settings
from .report.results import FIGURE_PREFIX, ResultsCollector, jsonable, library_versions, machine_info
from .zoo import TIERS, UnknownModelError

ROOT = Path(__file__).resolve().parent.parent
EXPECTATIONS = ROOT / "fixtures" / "expectations.toml"

_lab_key = pytest.StashKey[Lab]()
_collector_key = pytest.StashKey[ResultsCollector]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("zooconform", "zooconform conformance suite")
    g.addoption("--models", default=None, help="comma-separated model ids (any tier); default: the tier's models")
    g.addoption("--tier", default="smoke", choices=TIERS, help="smoke (3 models, default) or full (all 24)")
    g.addoption("--artifacts", default=None, metavar="PATH", help="TOML manifest of your deployment artifacts")
    g.addoption("--weights-dir", default=None, metavar="DIR", help="reference weights <id>.pth / <id>.safetensors")
    g.addoption("--imagenet", default=None, metavar="DIR", help="ImageNet val folder (val/*.JPEG + val_label.txt)")
    g.addoption("--report-dir", default="reports", metavar="DIR", help="where results.json (and run's reports) go")
    g.addoption("--cache-dir", default=None, metavar="DIR", help="artifact cache (default .zooconform-cache)")
    g.addoption("--eval-images", type=int, default=None, metavar="N", help="evaluation images (default 200 embedded; all of ImageNet)")
    g.addoption("--calib-images", type=int, default=None, metavar="N", help="calibration images (default 200 embedded; 1000 ImageNet)")
    g.addoption("--threads", type=int, default=None, metavar="N", help="intra-op threads for torch and ONNX Runtime")
    g.addoption("--profile", default=None, metavar="NAME", help="latency budget profile (fixtures/budgets/NAME.toml)")
    g.addoption("--no-results", action="store_true", help="do not write results.json")


def settings_from(config: pytest.Config) -> Settings:
    opt = config.getoption
    models = opt("--models")
    return Settings(
        tier=opt("--tier"),
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
        artifacts=Path(opt("--artifacts")) if opt("--artifacts") else None,
        weights_dir=Path(opt("--weights-dir")) if opt("--weights-dir") else None,
        imagenet=Path(opt("--imagenet")) if opt("--imagenet") else None,
        report_dir=Path(opt("--report-dir")),
        cache_dir=Path(opt("--cache-dir")) if opt("--cache-dir") else None,
        eval_images=opt("--eval-images"),
        calib_images=opt("--calib-images"),
        threads=opt("--threads"),
        profile=opt("--profile"),
    )


def pytest_configure(config: pytest.Config) -> None:
    settings = settings_from(config)
    try:
        lab = Lab(settings)
    except UnknownModelError as e:
        raise pytest.UsageError(f"--models: {e}") from None
    except ConfigError as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[_lab_key] = lab
    if not hasattr(config, "workerinput"):  # the controller (or a plain run) writes reports
        config.stash[_collector_key] = ResultsCollector({
            "tier": settings.tier, "models": [c.id for c in lab.cards], "artifacts": settings.artifacts,
            "imagenet": settings.imagenet, "weights_dir": settings.weights_dir, "profile": settings.profile,
            "eval_images": settings.eval_images, "calib_images": settings.calib_images})
        config.pluginmanager.register(_ResultsListener(config.stash[_collector_key]), "zooconform-results")
    xml = getattr(config, "_xml", None)
    if xml is not None:  # JUnit: the test suite carries machine, versions and profile
        for k, v in {**{f"machine.{k}": v for k, v in machine_info().items()},
                     **{f"version.{k}": v for k, v in library_versions().items()},
                     "tier": settings.tier, "profile": settings.profile or "",
                     "data": str(settings.imagenet or "embedded")}.items():
            xml.add_global_property(k, str(v))


def lab_of(config: pytest.Config) -> Lab:
    return config.stash[_lab_key]


# --- parametrization over the registry ----------------------------------------------------

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``model_card``: one case per selected model; ``published_row``: one per (model, row).

    Every case of a model shares an xdist group, so its artifacts are built once per worker.
    """
    lab = lab_of(metafunc.config)
    fam = getattr(metafunc.function, "zoo_family", None)
    cards = [c for c in lab.cards if fam is None or c.family == fam]
    if "published_row" in metafunc.fixturenames:
        want = getattr(metafunc.function, "row_filter", None) or (lambda row: True)
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


def row_id(row) -> str:
    return f"{'+'.join(row.sources)}-{row.seed}-{row.name}"


def rows_with(predicate):
    """Decorator: parametrize a check only over published rows that satisfy ``predicate``."""
    def mark(fn):
        fn.row_filter = predicate
        return fn
    return mark


def family(name: str):
    """Decorator: restrict a check to one family (e.g. RepVGG re-parameterization)."""
    def mark(fn):
        fn.zoo_family = name
        return fn
    return mark


def _load_expectations() -> list[dict]:
    """``[[xfail]]`` entries: ``test`` (function name glob), ``params`` (case id glob), ``reason``."""
    if not EXPECTATIONS.is_file():
        return []
    try:
        data = tomllib.loads(EXPECTATIONS.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(EXPECTATIONS, "-", f"not valid TOML: {e}", fix="fix the TOML syntax") from None
    entries = data.get("xfail", [])
    for i, e in enumerate(entries):
        for key in ("test", "params", "reason"):
            if not isinstance(e.get(key), str):
                raise ConfigError(EXPECTATIONS, f"xfail[{i}].{key}", "expected a string", fix="see the file's header")
    return entries


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Known failures are data (fixtures/expectations.toml): strict, with a reason, and they
    only cover a *check* failing (CheckFailure), never a crash of the harness."""
    try:
        entries = _load_expectations()
    except ConfigError as e:
        raise pytest.UsageError(str(e)) from None
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        name = item.originalname if hasattr(item, "originalname") else item.name
        for e in entries:
            if fnmatch.fnmatchcase(name, e["test"]) and fnmatch.fnmatchcase(callspec.id, e["params"]):
                item.add_marker(pytest.mark.xfail(reason=e["reason"], strict=e.get("strict", True),
                                                  raises=CheckFailure))
                break


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
        for k, v in figures.items():
            v = jsonable(v)
            self.figures[k] = v
            self.node.user_properties.append((FIGURE_PREFIX + k, v))


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Recorder:
    rec = Recorder(request.node)
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and "model_card" in callspec.params:
        request.node.user_properties.append(("model", callspec.params["model_card"].id))
    request.node.user_properties.append(("suite", request.node.path.stem if request.node.path else ""))
    return rec


# --- reports ------------------------------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None:
        exc = call.excinfo.value
        if isinstance(exc, (CheckFailure, Inconclusive)):
            for k, v in exc.figures.items():
                report.user_properties.append((FIGURE_PREFIX + k, jsonable(v)))
        if isinstance(exc, Inconclusive):
            report.user_properties.append(("inconclusive", str(exc)))
            if not exc.failing and report.when == "call":
                # its own outcome: neither pass nor fail (shown as INCONCLUSIVE, exit code unaffected)
                report.outcome = "skipped"
                report.longrepr = (str(item.path), item.location[1] or 0, f"inconclusive: {exc}")
        if isinstance(exc, ZooconformError):
            # a user-input problem: short, actionable message instead of a traceback
            report.longrepr = f"{type(exc).__name__}: {exc}"
    if report.when == "call":
        figs = [(k[len(FIGURE_PREFIX):], v) for k, v in report.user_properties if k.startswith(FIGURE_PREFIX)]
        if figs:
            _attach_html(item, report, figs)


def _attach_html(item, report, figs) -> None:
    try:
        import pytest_html
    except ImportError:
        return
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in figs)
    extras = getattr(report, "extras", [])
    extras.append(pytest_html.extras.html(f"<table class='zc-figures'><tr><th>figure</th><th>value</th></tr>{rows}</table>"))
    report.extras = extras


def pytest_report_teststatus(report, config):
    if any(n == "inconclusive" for n, _ in getattr(report, "user_properties", [])):
        if report.when == "call" or (report.when == "setup" and report.skipped):
            return "inconclusive", "I", "INCONCLUSIVE"
    return None


class _ResultsListener:
    """Registered on the controller only: under xdist the workers' reports arrive here."""

    def __init__(self, collector: ResultsCollector):
        self.collector = collector

    def pytest_runtest_logreport(self, report) -> None:
        self.collector.add(report)


def results_path(config: pytest.Config) -> Path:
    return Path(config.getoption("--report-dir")) / "results.json"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _collector_key not in config.stash or config.getoption("--no-results"):
        return
    collector = config.stash[_collector_key]
    if not collector.tests:
        return
    lab = lab_of(config)
    collector.settings["data_problems"] = lab.data_problems[:50]
    if lab.manifest_error:
        collector.settings["manifest_error"] = str(lab.manifest_error)
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop
    doc = collector.write(results_path(config), complete=not interrupted, exitstatus=int(exitstatus))
    config.stash[_doc_key] = doc


_doc_key = pytest.StashKey[dict]()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    doc = config.stash.get(_doc_key, None)
    if not doc:
        return
    from .report.summary import one_screen

    terminalreporter.write_sep("=", "zooconform summary")
    for line in one_screen(doc):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"results: {results_path(config)}")
