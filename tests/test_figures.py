"""The figure-name contract (harness/figures.py): every name a check records is declared, the
report reads roles only, older names stay readable, and the record fixture refuses an
undeclared name in the self-tests and warns in production."""
from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest

from harness import figures as F

ROOT = Path(__file__).resolve().parent.parent
# the modules that record figures (record(...) calls, figures dicts, CheckFailure(..., figures))
CHECK_MODULES = sorted(p for p in (ROOT / "harness").rglob("*.py")
                       if "report" not in p.parts and p.name not in ("figures.py", "plugin.py", "cli.py", "testing.py")
                       and "commands" not in p.parts) + sorted((ROOT / "suites").glob("*.py"))
# dict keys in those modules that are not figures (nested rows of a list figure, internal maps)
NOT_FIGURES = {"depth", "tensors", "local_db_median", "local_db", "tensor", "node", "xmodel_db", "sqnr_db", "image",
               "fp32_top2_margin", "flops", "gmacs", "form", "params", "upsample_modes"}


def _literal_names(path: Path) -> set[str]:
    """Keyword names of record(...) calls, and string keys of dict literals assigned to
    ``figures``/``figs`` or returned by a ``figures()`` method."""
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            if (fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", "")) == "record":
                names.update(kw.arg for kw in node.keywords if kw.arg)
        scope = None
        if isinstance(node, ast.FunctionDef) and node.name == "figures":
            scope = node
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in ("figures", "figs")
                                                  for t in node.targets):
            scope = node
        if scope is None:
            continue
        for sub in ast.walk(scope):
            if isinstance(sub, ast.Dict):
                names.update(k.value for k in sub.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
    return names - NOT_FIGURES


def test_every_recorded_name_is_declared():
    missing = {}
    for path in CHECK_MODULES:
        for name in _literal_names(path):
            if not F.is_known(name) or name in F.ALIASES:
                missing.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"declare these in harness/figures.py (or rename to today's name): {missing}"


def test_the_contract_is_well_formed():
    assert len(F.FIGURES) > 250
    for name, fig in F.FIGURES.items():
        assert fig.meaning and fig.type in F.TYPES and fig.unit in F.UNITS, name
    for old, new in F.ALIASES.items():
        assert old not in F.FIGURES and new in F.FIGURES, (old, new)
    for role in F.ROLES:
        assert F.feeding(role), f"no figure feeds role {role}"
    with pytest.raises(KeyError):
        F.feeding("no-such-role")


def test_units_decide_proportions():
    """The report scales by the declared unit, never by a name suffix."""
    from harness.report.views import proportion

    assert proportion({"figures": {"int8_top1_pct": 71.5}}, "int8_top1") == pytest.approx(0.715)
    assert proportion({"figures": {"top1_agreement": 0.5}}, "agreement") == 0.5
    assert proportion({"figures": {"top1_drop_points": 1.5}}, "top1_drop") == pytest.approx(0.015)


def test_older_names_are_read_as_todays():
    old = {"fp64_noise_floor": 1e-6, "floor_top1_agreement": 0.7, "int8_top1": 70.1, "rel_max_error": 2e-6}
    new = F.canonical(old)
    assert new == {"noise_floor_fp64": 1e-6, "noise_floor_top1_agreement": 0.7, "int8_top1_pct": 70.1,
                   "rel_max_error": 2e-6}
    assert F.value(new, "error_floor") == ("noise_floor_fp64", 1e-6)
    # today's name wins over an old one in the same record
    assert F.canonical({"noise_floor_fp64": 1.0, "fp64_noise_floor": 2.0}) == {"noise_floor_fp64": 1.0}


def test_undeclared_names_fail_self_tests_and_warn_in_production(monkeypatch):
    from harness.plugin import Recorder

    node = types.SimpleNamespace(user_properties=[])
    monkeypatch.setenv("ZOOCONFORM_STRICT_FIGURES", "1")
    with pytest.raises(F.UnknownFigure, match="rel_max_eror"):
        Recorder(node)(rel_max_eror=1.0)
    with pytest.raises(F.UnknownFigure, match="fp64_noise_floor -> noise_floor_fp64"):
        Recorder(node)(fp64_noise_floor=1.0)
    Recorder(node)(rel_max_error=1.0, x_my_own=2, resize_crop_bicubic_max_grey_levels=3.0)
    monkeypatch.delenv("ZOOCONFORM_STRICT_FIGURES")
    with pytest.warns(UserWarning, match="not declared"):
        Recorder(node)(rel_max_eror=1.0)
    assert ("fig:rel_max_eror", 1.0) in node.user_properties  # production keeps the figure


def test_structured_fields_come_from_the_parametrization():
    card = types.SimpleNamespace(id="repvgg_a0", family="repvgg")
    row = types.SimpleNamespace(sources=("official", "mmcls"), seed="RepVGG-A0", name="RepVGG-A0")
    got = F.test_fields({"model_card": card, "published_row": row, "precision": "int8", "batch": 4},
                        suite="test_latency", check="test_latency_within_budget")
    assert got == {"suite": "test_latency", "check": "test_latency_within_budget", "model": "repvgg_a0",
                   "family": "repvgg", "row": "official+mmcls-RepVGG-A0-RepVGG-A0", "precision": "int8", "batch": 4}
    gpu = F.test_fields({"gpu_case": ("CUDAExecutionProvider", "fp16", 8)}, suite="s", check="c")
    assert (gpu["runtime"], gpu["precision"], gpu["batch"]) == ("CUDAExecutionProvider", "fp16", 8)
    assert set(got) <= set(F.TEST_FIELDS)


def test_the_report_reads_no_name_globs_nor_node_ids():
    src = (ROOT / "harness" / "report" / "views.py").read_text()
    for banned in ("fnmatch", "case_id(", "_family_guess", "_NAMES", "re.compile("):
        assert banned not in src, banned


def test_an_older_results_json_gets_its_fields_from_node_ids_once():
    """Records written before the structured fields existed (no ``check``) still render."""
    from harness.report.views import build_views

    old = {"nodeid": "suites/test_card.py::test_params_match_published[repvgg_a0-official+mmcls-004-RepVGG-A0]",
           "outcome": "passed", "duration_s": 0.1, "figures": {"params_m_measured": 8.3094, "params_m_published": 8.3}}
    assert F.legacy_fields(old, ["repvgg_a0", "repvgg_a"]) == {
        "suite": "test_card", "check": "test_params_match_published", "model": "repvgg_a0",
        "row": "official+mmcls-004-RepVGG-A0"}
    assert F.legacy_fields({**old, "check": "test_params_match_published"}, ["repvgg_a0"]) == {}
    views, orphans = build_views({"tests": [old], "settings": {"models": ["repvgg_a0"]}})
    assert not orphans and views[0].rows[0].cells["params"].lines() == ["8.3 / 8.3094"]
