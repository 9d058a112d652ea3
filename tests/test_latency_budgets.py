"""Budget profiles: strict validation (a typo fails clearly), choosing a profile, recording
one from runs, and the shipped files (t4-tensorrt is the registry's seed-002 table)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import budgets
from harness.errors import ConfigError
from harness.zoo import load_zoo

ZOO = load_zoo()
IDS = list(ZOO)
GOOD = """
[profile]
description = "test machine"
provider = "CPUExecutionProvider"
threads = 2
source = "unit test"

[profile.match]
cpu = "AMD EPYC*"
cores = 2

[models.repvgg_a0]
fp32 = { b1 = 9.0, b4 = 30.0, b8 = 60.0 }
int8 = { b1 = 5 }
throughput_ips = 120.0
"""


def write(tmp_path: Path, text: str, name: str = "cpu-test") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_good_profile_gives_budgets(tmp_path):
    prof = budgets.load_profile(write(tmp_path, GOOD), IDS)
    b = prof.budget("repvgg_a0", "fp32", 4)
    assert b.ms == 30.0 and b.key == "models.repvgg_a0.fp32.b4" and "cpu-test.toml" in b.where
    assert prof.budget("repvgg_a0", "int8", 8) is None and prof.throughput == {"repvgg_a0": 120.0}


@pytest.mark.parametrize("bad, key, says", [
    (GOOD.replace("fp32 =", "fp23 ="), "models.repvgg_a0.fp23", "unknown key 'fp23'"),
    (GOOD.replace("threads = 2", "thread = 2"), "profile.thread", "did you mean 'threads'?"),
    (GOOD.replace("b4 = 30.0", 'b4 = "30"'), "models.repvgg_a0.fp32.b4", "expected a number of milliseconds > 0, got '30'"),
    (GOOD.replace("b4 = 30.0", "bl = 30.0"), "models.repvgg_a0.fp32.bl", "unknown batch key 'bl'"),
    (GOOD.replace("b4 = 30.0", "b4 = -1"), "models.repvgg_a0.fp32.b4", "expected a number of milliseconds > 0"),
    (GOOD.replace("[models.repvgg_a0]", "[models.repvgg_ao]"), "models.repvgg_ao", "did you mean 'repvgg_a0', 'repvgg_a1' or 'repvgg_a2'?"),
    (GOOD.replace('provider = "CPUExecutionProvider"', 'provider = "CPUExecutionProvdier"'), "profile.provider",
     "did you mean 'CPUExecutionProvider'?"),
    (GOOD.replace("threads = 2\n", ""), "profile.threads", "a CPU profile needs the intra-op thread count"),
    (GOOD.replace("cores = 2", "cores = \"2\""), "profile.match.cores", "expected an integer"),
    (GOOD.replace("[profile]", "[profiel]"), "profiel", "unknown table 'profiel'"),
    (GOOD.replace("fp32 = {", "fp32 = {{"), "-", "not valid TOML"),
])
def test_a_typo_fails_clearly_naming_file_key_and_expectation(tmp_path, bad, key, says):
    path = write(tmp_path, bad)
    with pytest.raises(ConfigError) as e:
        budgets.load_profile(path, IDS)
    msg = str(e.value)
    assert str(path) in msg and f"[{key}]" in msg and says in msg, msg


def test_a_missing_profile_names_the_available_ones(tmp_path):
    write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"no budget profile 'nope'.*available profiles: cpu-test; --profile none"):
        budgets.choose("nope", folder=tmp_path, valid_models=IDS)


def test_choice_order_profile_option_detection_ratios_only(tmp_path):
    write(tmp_path, GOOD)
    epyc = {"cpu": "AMD EPYC 7763", "cores": 2, "gpu": None}
    named = budgets.choose("cpu-test", machine=epyc, env={}, folder=tmp_path, valid_models=IDS)
    assert named.how == "--profile" and named.profile.name == "cpu-test"
    assert budgets.choose(str(tmp_path / "cpu-test.toml"), env={}, folder=tmp_path, valid_models=IDS).profile
    detected = budgets.choose(None, machine=epyc, env={}, folder=tmp_path, valid_models=IDS)
    assert detected.how == "detected" and detected.profile.name == "cpu-test"
    other = budgets.choose(None, machine={"cpu": "Intel Xeon", "cores": 2}, env={}, folder=tmp_path, valid_models=IDS)
    assert other.ratios_only and "no budget profile matches this machine (cpu 'Intel Xeon', 2 cores)" in other.reason
    ci = budgets.choose(None, machine=epyc, env={"CI": "true"}, folder=tmp_path, valid_models=IDS)
    assert ci.ratios_only and "CI is set" in ci.reason
    assert budgets.choose("none", machine=epyc, env={}, folder=tmp_path, valid_models=IDS).ratios_only


def test_provisional_and_ambiguous_profiles_are_not_detected(tmp_path):
    write(tmp_path, GOOD.replace('source = "unit test"', 'source = "x"\nprovisional = true'))
    epyc = {"cpu": "AMD EPYC 7763", "cores": 2}
    assert budgets.choose(None, machine=epyc, env={}, folder=tmp_path, valid_models=IDS).ratios_only
    write(tmp_path, GOOD, "a")
    write(tmp_path, GOOD, "b")
    both = budgets.choose(None, machine=epyc, env={}, folder=tmp_path, valid_models=IDS)
    assert both.ratios_only and "profiles a, b all match" in both.reason


def test_shipped_profiles_are_valid():
    files = budgets.profile_files()
    assert {p.stem for p in files} >= {"t4-tensorrt", "cpu-2core"}
    for p in files:
        budgets.load_profile(p)
    cpu = budgets.load_profile(budgets.BUDGETS / "cpu-2core.toml")
    # recorded from quiet runs (not hand-written): every smoke model, both precisions, every batch
    assert not cpu.provisional and cpu.source.startswith("3 run(s)") and cpu.headroom >= 1.0
    smoke = [c.id for c in ZOO.values() if "smoke" in c.tiers]
    assert {(m, p, b) for m in smoke for p in ("fp32", "int8") for b in (1, 4, 8) if cpu.budget(m, p, b)} == \
        {(m, p, b) for m in smoke for p in ("fp32", "int8") for b in (1, 4, 8)}


def test_t4_tensorrt_profile_is_the_registrys_seed_002_table():
    prof = budgets.load_profile(budgets.BUDGETS / "t4-tensorrt.toml")
    assert prof.provider == "TensorrtExecutionProvider"
    rows = {c.id: r for c in ZOO.values() for r in c.published
            if r.seed == "002" and "ppcls" in r.sources and r.weights is None and r.latency_ms}
    assert set(prof.latency) == set(rows) == {"hrnet_w18", "hrnet_w30", "hrnet_w32", "hrnet_w40", "hrnet_w44",
                                              "hrnet_w48", "hrnet_w64"}
    for model, row in rows.items():
        for i, batch in enumerate(row.latency_batches):
            fp32 = max(row.latency_ms["t4_trt_fp32"][i], row.latency_ms["t4_trt_fp32_table_a"][i])
            assert prof.budget(model, "fp32", batch).ms == fp32
            assert prof.budget(model, "fp16", batch).ms == row.latency_ms["t4_trt_fp16"][i]
    # the seed's own figure, read independently of the registry: HRNet_W18_C FP32 bs=8 is 23.33445 ms
    assert prof.budget("hrnet_w18", "fp32", 8).ms == 23.33445
    assert (budgets.BUDGETS / "t4-tensorrt.toml").read_text() == budgets.t4_tensorrt_text(ZOO)


# --- recording ----------------------------------------------------------------------------

def run_doc(medians: dict[tuple[str, str, int], tuple[float, bool]], ips: float | None = None, threads: int = 2) -> dict:
    tests = []
    for (model, prec, batch), (ms, quiet) in medians.items():
        tests.append({"nodeid": f"suites/test_latency.py::test_latency_within_budget[{model}-{prec}-b{batch}]",
                      "model": model, "outcome": "skipped",
                      "figures": {"latency_kind": "absolute", "model": model, "precision": prec, "batch": batch,
                                  "provider": "CPUExecutionProvider", "threads": threads, "median_ms": ms,
                                  "quiet": quiet, "peak_gflops": 540.0, "peak_quiet": True}})
    if ips is not None:
        tests.append({"nodeid": "suites/test_latency.py::test_throughput_within_budget[repvgg_a0]", "model": "repvgg_a0",
                      "figures": {"latency_kind": "throughput", "model": "repvgg_a0", "provider": "CPUExecutionProvider",
                                  "threads": threads, "images_per_s": ips, "instances": 2, "quiet": True}})
    return {"machine": {"cpu": "AMD EPYC 7763", "cores": 2}, "tests": tests}


def test_record_takes_the_slowest_quiet_median_times_headroom(tmp_path):
    docs = [run_doc({("repvgg_a0", "fp32", 1): (6.0, True), ("repvgg_a0", "fp32", 8): (40.0, True),
                     ("repvgg_a0", "int8", 1): (3.0, False)}, ips=200.0),
            run_doc({("repvgg_a0", "fp32", 1): (6.6, True), ("repvgg_a0", "fp32", 8): (38.0, True),
                     ("repvgg_a0", "int8", 1): (3.5, False)}, ips=190.0)]
    text, report = budgets.profile_text(docs, "cpu-rec", 1.25, sources=["r1.json", "r2.json"])
    prof = budgets.load_profile(write(tmp_path, text, "cpu-rec"), IDS)
    assert prof.budget("repvgg_a0", "fp32", 1).ms == pytest.approx(6.6 * 1.25, rel=1e-3)
    assert prof.budget("repvgg_a0", "fp32", 8).ms == pytest.approx(40.0 * 1.25, rel=1e-3)
    assert prof.budget("repvgg_a0", "int8", 1) is None  # never measured quietly
    assert prof.throughput["repvgg_a0"] == pytest.approx(190.0 / 1.25, rel=1e-3)
    assert prof.threads == 2 and not prof.provisional and prof.match == {"cpu": "AMD EPYC 7763", "cores": 2}
    assert prof.instances == 2 and prof.peak_gflops == 540.0
    assert any("repvgg_a0 fp32 b1" in line and "run-to-run spread 10.0%" in line for line in report)
    assert any("repvgg_a0 int8 b1: no quiet measurement (2 contended): left out" in line for line in report)


def test_record_refuses_mixed_thread_counts_and_runs_without_latency():
    with pytest.raises(ValueError, match="mix"):
        budgets.profile_text([run_doc({("repvgg_a0", "fp32", 1): (6.0, True)}),
                              run_doc({("repvgg_a0", "fp32", 1): (4.0, True)}, threads=4)], "x", 1.2)
    with pytest.raises(ValueError, match="no absolute latency"):
        budgets.profile_text([{"tests": []}], "x", 1.2)


def test_record_command_writes_a_valid_profile(tmp_path, capsys):
    src = tmp_path / "results.json"
    src.write_text(json.dumps(run_doc({("resnest50", "fp32", 1): (32.0, True)})))
    out = tmp_path / "rec.toml"
    assert budgets.cli(["record", str(src), "--profile", "rec", "--headroom", "1.3", "--out", str(out)]) == 0
    assert budgets.load_profile(out, IDS).budget("resnest50", "fp32", 1).ms == pytest.approx(41.6)
    assert "wrote" in capsys.readouterr().out
    bench = tmp_path / "bench.json"  # pytest-benchmark's --benchmark-json: the figures are in extra_info
    bench.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "AMD EPYC 7763", "count": 2}},
                                 "benchmarks": [{"extra_info": t["figures"]} for t in run_doc(
                                     {("resnest50", "int8", 8): (90.0, True)})["tests"]]}))
    assert budgets.cli(["record", str(bench), "--profile", "rec2", "--headroom", "1.1", "--out", str(out)]) == 0
    assert budgets.load_profile(out, IDS).budget("resnest50", "int8", 8).ms == pytest.approx(99.0)
    assert budgets.cli(["check", str(out)]) == 0


def test_the_suite_reports_a_profile_typo_before_measuring(pytester, tmp_path):
    """--profile naming a file with a typo: the absolute-budget test errors with the file, key and
    expectation, without measuring (the ratio tests do not read the profile and go on)."""
    root = Path(__file__).resolve().parent.parent
    bad = tmp_path / "typo.toml"
    bad.write_text((root / "fixtures" / "budgets" / "cpu-2core.toml").read_text().replace(
        "[models.repvgg_a0]\nfp32 =", "[models.repvgg_a0]\nfp23 ="))
    assert "fp23" in bad.read_text()
    result = pytester.runpytest(str(root / "suites" / "test_latency.py"), "-m", "latency", "--models", "repvgg_a0",
                                "-k", "fp32-b1", "--profile", str(bad), "--no-results", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*ConfigError: {bad}: [[]models.repvgg_a0.fp23] unknown key 'fp23'*did you mean 'fp32'?*"])


def test_runs_summary_gives_outcomes_figures_and_spread_per_test():
    def doc(ms, ratio, quiet=True):
        return {"tests": [
            {"nodeid": "suites/test_latency.py::test_latency_within_budget[m-fp32-b1]", "outcome": "passed",
             "figures": {"median_ms": ms, "quiet": quiet}},
            {"nodeid": "suites/test_latency.py::test_int8_faster_than_fp32[m-b1]", "outcome": "passed",
             "figures": {"ratio": ratio, "quiet": True}},
            {"nodeid": "suites/test_card.py::test_params_match_published[m-x]", "outcome": "passed", "figures": {}}]}
    lines = budgets.runs_summary([doc(10.0, 0.5), doc(11.0, 0.52, quiet=False)], ["a", "b"])
    assert lines[1] == "test_latency_within_budget[m-fp32-b1]: passed 10 / passed 11* ms; spread 10.0%"
    assert lines[2] == "test_int8_faster_than_fp32[m-b1]: passed 0.5 / passed 0.52 x; spread 4.0%"
    assert len(lines) == 3  # other suites are not listed
