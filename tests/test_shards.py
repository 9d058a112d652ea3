"""Shards balanced by measured durations (harness/shards.py): the durations file (pytest-split's
format), each model's cost, the longest-first split, `zooconform durations`, and the CI matrix
simulated locally: N shard runs plus the merge give the unsharded run's report."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from _kit import suite_dir

from harness import shards
from harness.errors import ConfigError
from harness.zoo import load_zoo, select

ZOO = load_zoo()
FULL = select(ZOO, None, "full")


def ids(cards) -> list[str]:
    return [c.id for c in cards]


def cards(*names):
    return [ZOO[n] for n in names]


def durations(**seconds) -> dict[str, float]:
    """Two recorded tests per model, splitting its seconds."""
    return {f"suites/test_x.py::test_{k}[{m}-ort]": s / 2 for m, s in seconds.items() for k in ("a", "b")}


# --- the durations file -------------------------------------------------------------------------

def test_the_durations_file_reads_pytest_splits_formats_and_names_what_is_wrong(tmp_path):
    f = tmp_path / "d.json"
    assert shards.load_durations(f) == {}  # no file yet: nothing recorded
    f.write_text('{"suites/test_x.py::test_a[repvgg_a0]": 1.5}')
    assert shards.load_durations(f) == {"suites/test_x.py::test_a[repvgg_a0]": 1.5}
    f.write_text('[["suites/test_x.py::test_a[repvgg_a0]", 2]]')  # pytest-split < 0.4
    assert shards.load_durations(f) == {"suites/test_x.py::test_a[repvgg_a0]": 2.0}
    for text, says in (('{"t": -1}', "expected seconds as a number >= 0, got -1"),
                       ('{"t": "fast"}', "got 'fast'"),
                       ('{"t": 1', "not valid JSON"),
                       ("[1, 2]", "not [[node id, seconds], ...]"),
                       ('"t"', "expected a JSON object")):
        f.write_text(text)
        with pytest.raises(ConfigError) as e:
            shards.load_durations(f)
        assert str(f) in str(e.value) and says in str(e.value) and "fix:" in str(e.value)


def test_write_then_load_is_the_same_and_sorted_like_pytest_split(tmp_path):
    f = tmp_path / "sub" / "d.json"
    shards.write_durations(f, {"b[repvgg_a0]": 2.0, "a[repvgg_a0]": 1.23456})
    assert shards.load_durations(f) == {"a[repvgg_a0]": 1.2346, "b[repvgg_a0]": 2.0}
    assert f.read_text().index('"a[') < f.read_text().index('"b[') and f.read_text().endswith("}\n")


def test_a_test_belongs_to_the_model_its_parameter_id_starts_with():
    every = set(ZOO)
    assert shards.model_of("suites/test_export.py::test_x[repvgg_b1g2-ort-legacy-opset17]", every) == "repvgg_b1g2"
    assert shards.model_of("suites/test_export.py::test_x[repvgg_b1-ort]", every) == "repvgg_b1"
    assert shards.model_of("suites/test_card.py::test_p[hrnet_w18-official-001-hrnet_w18]", every) == "hrnet_w18"
    assert shards.model_of("suites/test_runtimes.py::test_det[ort]", every) is None
    assert shards.model_of("suites/test_host.py::test_peaks", every) is None


def test_every_full_tier_card_has_a_cost_proxy_and_resnest269_costs_most():
    proxy = {c.id: shards.cost_proxy(c) for c in FULL}
    assert all(v and v > 0 for v in proxy.values()), proxy
    assert max(proxy, key=lambda m: proxy[m] or 0) == "resnest269"
    assert proxy["resnest269"] > 20 * proxy["hrnet_w18_small_v1"]
    # the conventions agree where a card has several: HRNet's GiB MACs vs timm's 2-per-MAC FLOPs
    hr = ZOO["hrnet_w18_small_v1"]
    by = {r.flops_convention: r.flops_g for r in hr.published}
    assert abs(by["macs_gib"] * 2**30 / 1e9 - by["timm_card"] / 2) / proxy["hrnet_w18_small_v1"] < 0.15


# --- the split ----------------------------------------------------------------------------------

def test_longest_first_to_the_least_loaded_shard():
    c = cards("repvgg_a0", "repvgg_a1", "repvgg_a2", "repvgg_b0")
    p = shards.plan(c, 2, durations(repvgg_a0=100, repvgg_a1=60, repvgg_a2=50, repvgg_b0=10))
    assert p.method == "durations"
    assert p.shards == [["repvgg_a0", "repvgg_b0"], ["repvgg_a1", "repvgg_a2"]] and p.load_s == [110, 110]
    # round-robin by id would give 150 vs 70
    assert shards.round_robin(ids(c), 2).shards == [["repvgg_a0", "repvgg_a2"], ["repvgg_a1", "repvgg_b0"]]


def test_the_shards_partition_the_models_whatever_the_order_and_count():
    d = shards.load_durations(shards.DURATIONS_FILE)
    for n in range(1, 8):
        forward, backward = shards.plan(FULL, n, d), shards.plan(list(reversed(FULL)), n, d)
        assert forward.shards == backward.shards
        assigned = [m for s in forward.shards for m in s]
        assert sorted(assigned) == sorted(ids(FULL)) and len(assigned) == len(set(assigned))
        chosen = [shards.select(FULL, i, n) for i in range(1, n + 1)]
        assert sorted(m for s in chosen for m in ids(s)) == sorted(ids(FULL))


def test_unmeasured_models_are_estimated_from_flops_at_the_measured_rate():
    c = cards("repvgg_a0", "resnest269", "hrnet_w18_small_v1")
    costs, other = shards.model_costs(c, durations(repvgg_a0=70, hrnet_w18_small_v1=160))
    assert costs["repvgg_a0"].seconds == 70 and costs["repvgg_a0"].how == "measured (2 tests)"
    rates = sorted([70 / shards.cost_proxy(ZOO["repvgg_a0"]), 160 / shards.cost_proxy(ZOO["hrnet_w18_small_v1"])])
    assert costs["resnest269"].seconds == pytest.approx(shards.cost_proxy(ZOO["resnest269"]) * sum(rates) / 2)
    assert costs["resnest269"].how.startswith("estimated:") and other == 0
    # resnest269 alone outweighs the rest: it gets a shard of its own
    p = shards.plan(c, 2, durations(repvgg_a0=70, hrnet_w18_small_v1=160))
    assert ["resnest269"] in p.shards


def test_an_unmeasured_model_is_estimated_at_its_family_s_measured_rate():
    """Seconds per GMAC differ by family (HRNet's many activations make its calibration dear):
    resnest269 is estimated at resnest50's rate, not at the median of every measured model."""
    c = cards("repvgg_a0", "resnest50", "resnest269", "hrnet_w18_small_v1")
    costs, _ = shards.model_costs(c, durations(repvgg_a0=70, resnest50=300, hrnet_w18_small_v1=400))
    rate = 300 / shards.cost_proxy(ZOO["resnest50"])
    assert costs["resnest269"].seconds == pytest.approx(shards.cost_proxy(ZOO["resnest269"]) * rate)
    assert costs["resnest269"].how.endswith("(median of the measured resnest models)")


def test_a_selection_of_only_unmeasured_models_is_ranked_at_the_zoo_s_rates():
    """``--models resnest269,hrnet_w64,repvgg_b3,hrnet_w48`` (none measured): the rates come from
    the zoo's measured models, so the scheduler starts resnest269 first. Estimated from the
    selection alone, every cost was missing and the models went out by name, resnest269 last
    (one worker then ran it alone for over an hour)."""
    from harness.plugin import model_rank

    d = durations(resnest50=300, repvgg_a0=70, hrnet_w18_small_v1=200)
    chosen = cards("hrnet_w48", "hrnet_w64", "repvgg_b3", "resnest269")
    alone, _ = shards.model_costs(chosen, d)
    assert alone == {}  # what the scheduler had before: no cost at all
    costs, _ = shards.model_costs(chosen, d, list(ZOO.values()))
    assert set(costs) == set(ids(chosen)) and all(c.how.startswith("estimated:") for c in costs.values())
    assert costs["resnest269"].seconds == pytest.approx(shards.cost_proxy(ZOO["resnest269"]) * 300
                                                       / shards.cost_proxy(ZOO["resnest50"]))
    rank = {m: i for i, m in enumerate(sorted(costs, key=lambda m: (-costs[m].seconds, m)))}
    assert min(rank, key=rank.get) == "resnest269"
    assert model_rank(chosen, None, list(ZOO.values()))["resnest269"] == 0  # the shipped durations file


def test_tests_of_no_model_load_shard_one():
    d = {**durations(repvgg_a0=50, repvgg_a1=50), "suites/test_runtimes.py::test_det[ort]": 45.0}
    p = shards.plan(cards("repvgg_a0", "repvgg_a1"), 2, d)
    assert p.other_s == 45 and p.load_s == [95, 50] and p.shards == [["repvgg_a1"], ["repvgg_a0"]]
    d["suites/test_runtimes.py::test_det[ort]"] = 60.0  # shard 1 is busier than one model
    p = shards.plan(cards("repvgg_a0", "repvgg_a1", "repvgg_a2"), 2, {**d, **durations(repvgg_a2=40)})
    assert p.shards[0] == ["repvgg_a2"], p.lines()


def test_without_figures_for_the_selection_the_split_is_round_robin(tmp_path):
    c = cards("repvgg_a0", "repvgg_a1", "repvgg_a2")
    assert shards.plan(c, 2, {}).method == "round-robin"
    p = shards.plan(c, 2, durations(resnest50=100))  # figures, but of another model
    assert p.method == "round-robin" and p.shards == [["repvgg_a0", "repvgg_a2"], ["repvgg_a1"]]


def test_the_plugin_reads_the_durations_file_from_the_environment_and_refuses_a_missing_one(tmp_path, monkeypatch):
    from harness.plugin import shard_cards, shard_option

    class Config:
        def __init__(self, **opts):
            self.opts = opts

        def getoption(self, name, default=None):
            return self.opts.get(name, default)

    f = tmp_path / "d.json"
    shards.write_durations(f, durations(repvgg_a0=100, repvgg_a1=60, repvgg_a2=50, repvgg_b0=10))
    monkeypatch.setenv(shards.DURATIONS_ENV, str(f))
    c = cards("repvgg_b0", "repvgg_a2", "repvgg_a1", "repvgg_a0")  # any order
    s = shard_option(Config(**{"--shard": "1/2"}))
    assert (s.number, s.total, s.durations_file) == (1, 2, f)
    assert ids(shard_cards(c, *s)) == ["repvgg_b0", "repvgg_a0"]  # the order given, not sorted
    assert ids(shard_cards(c, 2, 2, f)) == ["repvgg_a2", "repvgg_a1"]
    assert shard_option(Config()) is None
    monkeypatch.setenv(shards.DURATIONS_ENV, str(tmp_path / "typo.json"))
    with pytest.raises(pytest.UsageError, match=r"typo\.json.*no such file"):
        shard_option(Config(**{"--shard": "1/2"}))
    f.write_text("{")
    with pytest.raises(pytest.UsageError, match=r"--shard 1/2: .*d\.json.*not valid JSON"):
        shard_cards(c, 1, 2, f)


def test_the_shipped_file_is_measured_and_balances_the_full_tier():
    d = shards.load_durations(shards.DURATIONS_FILE)
    costs, _ = shards.model_costs(FULL, d)
    measured = sorted(m for m, v in costs.items() if v.how.startswith("measured"))
    readme = (shards.DURATIONS_FILE.parent / "README.md").read_text()
    documented = sorted(re.findall(r"^\| ([a-z0-9_]+) \| [0-9.]+ \| \d+ \| \d+ \|", readme, re.M))
    assert measured == documented and "resnest50" in measured  # its provenance table names each measured model
    p = shards.plan(FULL, 4, d)
    rr = shards.round_robin(ids(FULL), 4)
    rr_load = [sum(costs[m].seconds for m in s) for s in rr.shards]
    assert p.method == "durations" and max(p.load_s) < 0.75 * max(rr_load), (p.lines(), rr_load)
    top3 = sorted(costs, key=lambda m: -costs[m].seconds)[:3]  # resnest269, resnest200, hrnet_w64
    assert len({i for i, s in enumerate(p.shards) for m in top3 if m in s}) == 3, p.lines()


# --- zooconform durations -----------------------------------------------------------------------

def zooconform(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_durations_from_results_and_junit_update_the_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"tests": [
        {"nodeid": "suites/test_card.py::test_p[repvgg_a0]", "duration_s": 3.0, "outcome": "passed"},
        {"nodeid": "suites/test_card.py::test_p[repvgg_a1]", "duration_s": 5.0, "outcome": "failed"}]}))
    junit = tmp_path / "junit.xml"
    suite = ET.Element("testsuite")
    ET.SubElement(suite, "testcase", classname="suites.test_card", name="test_q[repvgg_b0]", time="7.5")
    ET.SubElement(suite, "testcase", classname="suites.test_card.TestX", name="test_r[repvgg_b0]", time="1")
    ET.ElementTree(suite).write(junit)
    out = tmp_path / "d.json"
    shards.write_durations(out, {"suites/test_card.py::test_p[repvgg_a0]": 99.0, "kept[repvgg_b1]": 4.0})
    r = zooconform("durations", run, junit, "--out", out, "--plan", "2", "--models", "repvgg_a0,repvgg_a1,repvgg_b0")
    assert r.returncode == 0, r.stderr
    assert shards.load_durations(out) == {
        "suites/test_card.py::test_p[repvgg_a0]": 3.0, "suites/test_card.py::test_p[repvgg_a1]": 5.0,
        "suites/test_card.py::test_q[repvgg_b0]": 7.5, "suites/test_card.py::TestX::test_r[repvgg_b0]": 1.0,
        "kept[repvgg_b1]": 4.0}
    assert "4 test(s) stored (3 model(s): repvgg_a0, repvgg_a1, repvgg_b0)" in r.stdout
    assert "shard 1/2: ~8 s: repvgg_b0 (8 s)" in r.stdout and "shard 2/2: ~8 s: repvgg_a0 (3 s), repvgg_a1 (5 s)" in r.stdout
    assert "repvgg_b0: 8 s, measured (2 tests)" in r.stdout and "repvgg_a0: 3 s, measured (1 test)" in r.stdout
    r = zooconform("durations", run, "--out", out, "--replace")
    assert r.returncode == 0 and len(shards.load_durations(out)) == 2
    # bad input: named, usage error, the file untouched
    (tmp_path / "broken").mkdir()
    before = out.read_bytes()
    r = zooconform("durations", tmp_path / "broken", "--out", out)
    assert r.returncode == 4 and "broken: neither results.json nor junit.xml here" in r.stderr
    assert out.read_bytes() == before
    r = zooconform("durations", "--plan", "2", "--models", "nosuchnet", "--out", out)
    assert r.returncode == 4 and "nosuchnet" in r.stderr


def test_run_refuses_a_durations_file_that_is_not_there(tmp_path):
    r = zooconform("run", "--shard", "1/2", "--durations-file", tmp_path / "typo.json", "--report-dir", tmp_path / "r")
    assert r.returncode == 4 and "typo.json: no such file" in r.stderr and "zooconform durations" in r.stderr
    assert not (tmp_path / "r").exists()  # nothing ran, no run folder


# --- the CI matrix, simulated locally ------------------------------------------------------------

# each model's tests record figures that depend on the model, and one test is of no model
SUITE = '''
def test_size(model_card, record):
    record(answer=model_card.input_size)

def test_family(model_card, record):
    record(answer=len(model_card.family))
    assert model_card.family != "resnest", "planted: the resnest models fail here"

def test_no_model(record):
    record(answer=1)
'''


def run_folders(report_dir: Path) -> list[Path]:
    return sorted(p for p in (report_dir / "smoke").iterdir() if p.is_dir())


def rows(doc: dict) -> dict:
    return {t["nodeid"]: (t["outcome"], t.get("figures"), t.get("model")) for t in doc["tests"]}


def history_rows(file: Path) -> dict:
    keep = ("model", "counts", "failing", "metrics", "passed_digests", "verdict", "complete", "family")
    return {r["model"]: {k: r.get(k) for k in keep} for r in map(json.loads, file.read_text().splitlines())}


def simulate(tmp_path: Path, n: int, models: str, extra: list, timeout: int = 600):
    """The CI matrix here: the unsharded run, N shard runs, the merge. Returns (whole, merged, shard docs)."""
    whole_dir, shard_dir, merged_dir = tmp_path / "whole", tmp_path / "shards", tmp_path / "merged"
    common = ["--models", models, *extra, "--cache-dir", tmp_path / "cache"]
    r = zooconform("run", *common, "--report-dir", whole_dir, timeout=timeout)
    assert r.returncode in (0, 1), r.stdout[-3000:] + r.stderr[-3000:]
    [whole] = run_folders(whole_dir)
    for i in range(1, n + 1):
        r = zooconform("run", *common, "--shard", f"{i}/{n}", "--report-dir", shard_dir, timeout=timeout)
        assert r.returncode in (0, 1), r.stdout[-3000:] + r.stderr[-3000:]
        assert f"zooconform run: shard {i}/{n} (" in r.stdout  # the plan, printed before pytest starts
    parts = run_folders(shard_dir)
    assert len(parts) == n
    r = zooconform("merge", *parts, "--out", merged_dir / "report", "--history", merged_dir / "history.jsonl")
    assert r.returncode in (0, 1), r.stdout[-3000:] + r.stderr[-3000:]
    docs = [json.loads((p / "results.json").read_text()) for p in parts]
    return (whole_dir, json.loads((whole / "results.json").read_text()),
            json.loads((merged_dir / "report" / "results.json").read_text()), docs, r)


# nightly with the rest of the scale-out runs (~2 min of nested zooconform runs): CI stays under 30 min
@pytest.mark.slow
def test_simulated_ci_matrix_equals_the_unsharded_run(tmp_path):
    """Two shards split by a durations file in which repvgg_a0 outweighs the two others (round-
    robin by id would pair hrnet_w18_small_v1 with repvgg_a1), merged: the report of one run."""
    models = "hrnet_w18_small_v1,repvgg_a0,repvgg_a1,resnest50"
    file = tmp_path / "durations.json"
    shards.write_durations(file, {f"test_mine.py::test_size[{m}]": s for m, s in
                                  {"repvgg_a0": 300.0, "hrnet_w18_small_v1": 100.0, "repvgg_a1": 90.0,
                                   "resnest50": 80.0}.items()})
    plan = shards.plan(cards(*models.split(",")), 2, shards.load_durations(file))
    assert plan.shards == [["repvgg_a0"], ["hrnet_w18_small_v1", "repvgg_a1", "resnest50"]]
    assert plan.shards != shards.round_robin(models.split(","), 2).shards
    suites = suite_dir(tmp_path, SUITE)
    whole_dir, whole, merged, parts, merge = simulate(tmp_path, 2, models, ["--suites", suites, "--durations-file", file])
    # each shard ran the models of the plan, the tests of no model in shard 1 only
    assert [d["settings"]["models"] for d in parts] == [["repvgg_a0"], ["hrnet_w18_small_v1", "repvgg_a1", "resnest50"]]
    assert [sorted({t.get("model") or "-" for t in d["tests"]}) for d in parts] == \
        [["-", "repvgg_a0"], ["hrnet_w18_small_v1", "repvgg_a1", "resnest50"]]
    # the merged report is the unsharded one: same tests, outcomes, figures, models and counts
    assert merged["complete"] is True and merge.returncode == 1  # the planted resnest failure
    assert rows(merged) == rows(whole) and merged["counts"] == whole["counts"] == {"passed": 8, "failed": 1}
    assert sorted(merged["settings"]["models"]) == sorted(whole["settings"]["models"])
    assert history_rows(tmp_path / "merged" / "history.jsonl") == history_rows(whole_dir / "history.jsonl")


@pytest.mark.slow
def test_simulated_ci_matrix_on_the_real_card_checks(tmp_path):
    """The long version: the smoke tier's real card checks, 3 shards as the shipped durations
    file splits them, merged == unsharded."""
    _, whole, merged, parts, _ = simulate(tmp_path, 3, "hrnet_w18_small_v1,repvgg_a0,resnest50", ["-m", "card"],
                                          timeout=3600)
    assert merged["complete"] is True and rows(merged) == rows(whole) and merged["counts"] == whole["counts"]
    plan = shards.plan_from_file(cards("hrnet_w18_small_v1", "repvgg_a0", "resnest50"), 3)
    assert [d["settings"]["models"] for d in parts] == plan.shards
