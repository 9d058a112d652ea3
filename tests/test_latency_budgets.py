"""Budget profiles: strict validation (a typo fails clearly), choosing a profile, recording
one from runs, and the shipped files (t4-tensorrt is the registry's seed-002 table)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.commands import budgets as budgets_cmd
from harness.errors import ConfigError
from harness.latency import budgets, recording
from harness.latency import checks as lc
from harness.zoo import load_zoo

# harness.latency.checks is imported here, before pytester's in-process run, which drops the modules
# first imported inside it: checks would then hold another tolerances.Limit class than a later test

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
    (GOOD.replace("[models.repvgg_a0]", "[models.repvgg_ao]"), "models.repvgg_ao",
     "did you mean 'repvgg_a0', 'repvgg_a1' or 'repvgg_a2'?"),
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
    assert (budgets.BUDGETS / "t4-tensorrt.toml").read_text() == recording.t4_tensorrt_text(ZOO)


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
    text, report = recording.profile_text(docs, "cpu-rec", 1.25, sources=["r1.json", "r2.json"])
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
        recording.profile_text([run_doc({("repvgg_a0", "fp32", 1): (6.0, True)}),
                              run_doc({("repvgg_a0", "fp32", 1): (4.0, True)}, threads=4)], "x", 1.2)
    with pytest.raises(ValueError, match="no absolute latency"):
        recording.profile_text([{"tests": []}], "x", 1.2)


def test_record_command_writes_a_valid_profile(tmp_path, capsys):
    src = tmp_path / "results.json"
    src.write_text(json.dumps(run_doc({("resnest50", "fp32", 1): (32.0, True)})))
    out = tmp_path / "rec.toml"
    assert budgets_cmd.cli(["record", str(src), "--profile", "rec", "--headroom", "1.3", "--out", str(out)]) == 0
    assert budgets.load_profile(out, IDS).budget("resnest50", "fp32", 1).ms == pytest.approx(41.6)
    assert "wrote" in capsys.readouterr().out
    bench = tmp_path / "bench.json"  # pytest-benchmark's --benchmark-json: the figures are in extra_info
    bench.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "AMD EPYC 7763", "count": 2}},
                                 "benchmarks": [{"extra_info": t["figures"]} for t in run_doc(
                                     {("resnest50", "int8", 8): (90.0, True)})["tests"]]}))
    assert budgets_cmd.cli(["record", str(bench), "--profile", "rec2", "--headroom", "1.1", "--out", str(out)]) == 0
    assert budgets.load_profile(out, IDS).budget("resnest50", "int8", 8).ms == pytest.approx(99.0)
    assert budgets_cmd.cli(["check", str(out)]) == 0


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
    lines = recording.runs_summary([doc(10.0, 0.5), doc(11.0, 0.52, quiet=False)], ["a", "b"])
    assert lines[1] == "test_latency_within_budget[m-fp32-b1]: passed 10 / passed 11* ms; spread 10.0%"
    assert lines[2] == "test_int8_faster_than_fp32[m-b1]: passed 0.5 / passed 0.52 x; spread 4.0%"
    assert len(lines) == 3  # other suites are not listed


# --- host classes: a profile applies only on its host class and near its peaks -------------------

def fake_host(host_class="x86-avx512-vnni", fp32=190.0, int8=820.0, quiet=True, threads=2):
    """A fingerprint as harness.host.fingerprint gives it, without reading this machine."""
    from harness.host import Fingerprint

    vnni = host_class in ("x86-avx512-vnni", "x86-amx", "x86-avx-vnni")
    return Fingerprint("AMD EPYC", 2, "x86_64", ["avx2", "fma"] + (["avx512f", "avx512_vnni"] if vnni else []),
                       host_class, host_class.startswith("x86") and not vnni, fp32, int8, threads, quiet,
                       "/proc/cpuinfo", {})


BOUND = GOOD.replace("[profile.match]\n", '[profile.match]\nhost_class = "x86-avx512-vnni"\n').replace(
    'source = "unit test"', 'source = "unit test"\npeak_gflops = 198.0')
TOL = 0.15


def bound(tmp_path, extra="", name="cpu-test"):
    return budgets.load_profile(write(tmp_path, BOUND.replace('source = "unit test"', f'source = "unit test"{extra}'),
                                      name), IDS)


def test_a_profile_applies_on_its_host_class_within_the_peak_tolerance(tmp_path):
    prof = bound(tmp_path)
    app = budgets.applicability(prof, fake_host(fp32=190.0), TOL)
    assert app.applies and app.line.startswith("absolute budgets apply: profile cpu-test is x86-avx512-vnni at fp32 "
                                               "198 GFLOP/s; this host is x86-avx512-vnni at 190 GFLOP/s")
    assert "fp32 peak -4% within +-15%" in app.line
    choice = budgets.Choice(prof, "--profile", "--profile cpu-test", app, host=fake_host(fp32=190.0))
    card = ZOO["repvgg_a0"]
    from harness.latency import checks as lc

    assert lc.budget_for(choice, card, "fp32", 1, lc.CPU, 2).ms == 9.0  # judged as recorded
    figs = choice.figures()
    assert figs["budgets_applicable"] is True and figs["host_class"] == "x86-avx512-vnni"
    assert figs["profile_fp32_peak_gflops"] == 198.0 and figs["host_fp32_peak_gflops"] == 190.0


def test_on_another_host_class_absolute_budgets_are_not_applicable_with_both_figures(tmp_path):
    from harness.latency import checks as lc

    prof = bound(tmp_path)
    avx2 = fake_host("x86-avx2", fp32=126.0, int8=400.0)
    app = budgets.applicability(prof, avx2, TOL)
    assert not app.applies
    assert app.line == ("absolute budgets not applicable: profile cpu-test is x86-avx512-vnni at fp32 198 GFLOP/s; "
                        "this host is x86-avx2 at 126 GFLOP/s (another host class: other kernels)")
    choice = budgets.Choice(prof, "--profile", "--profile cpu-test", app, host=avx2)
    why = lc.budget_for(choice, ZOO["repvgg_a0"], "fp32", 1, lc.CPU, 2)
    assert isinstance(why, str) and why.startswith("not applicable: absolute budgets not applicable: profile cpu-test")
    assert lc.throughput_budget_for(choice, ZOO["repvgg_a0"], 2).startswith("not applicable:")
    # the same class at the same peaks would apply: the class alone decided
    assert budgets.applicability(prof, fake_host("x86-avx512-vnni", fp32=126.0 * 198 / 126), TOL).applies


@pytest.mark.parametrize("fp32, int8, applies, says", [
    (175.0, None, True, "fp32 peak -12%, int8 peak -1% within +-15%"),
    (160.0, None, False, "fp32 peak -19%, outside +-15%"),
    (230.0, None, False, "fp32 peak +16%, outside +-15%"),
    (545.0, None, False, "fp32 peak +175%, outside +-15%"),
    (195.0, 800.0, True, "fp32 peak -2%, int8 peak -5% within +-15%"),
    (195.0, 600.0, False, "int8 peak -29%, outside +-15%"),
])
def test_peaks_outside_the_tolerance_make_the_profile_not_applicable(tmp_path, fp32, int8, applies, says):
    prof = bound(tmp_path, "\nint8_peak_gops = 840.0")
    app = budgets.applicability(prof, fake_host(fp32=fp32, int8=int8 if int8 else 830.0), TOL)
    assert app.applies is applies and says in app.line, app.line
    assert "int8 840 GOP/s" in app.line  # recorded int8 peak shown when the profile has one


def test_a_profile_without_host_class_or_peak_applies_nowhere(tmp_path):
    no_class = budgets.load_profile(write(tmp_path, GOOD.replace('source = "unit test"',
                                                                 'source = "x"\npeak_gflops = 198.0')), IDS)
    app = budgets.applicability(no_class, fake_host(), TOL)
    assert not app.applies and "records no host class" in app.line and "host_class" in app.line
    no_peak = budgets.load_profile(write(tmp_path, GOOD.replace("[profile.match]\n",
                                                                '[profile.match]\nhost_class = "x86-avx512-vnni"\n'),
                                         "np"), IDS)
    assert "records no fp32 peak" in budgets.applicability(no_peak, fake_host(), TOL).line
    # GPU profiles match by GPU name: the CPU host class says nothing about them
    t4 = budgets.load_profile(budgets.BUDGETS / "t4-tensorrt.toml")
    assert budgets.applicability(t4, fake_host("x86-avx2"), TOL) is None


def test_rescale_budgets_scales_by_recorded_over_measured_peak(tmp_path):
    from harness.latency import checks as lc

    card = ZOO["repvgg_a0"]
    prof = bound(tmp_path, "\nint8_peak_gops = 840.0")
    avx2 = fake_host("x86-avx2", fp32=126.0, int8=420.0)
    choice = budgets.Choice(prof, "--profile", "--profile cpu-test", budgets.applicability(prof, avx2, TOL), True, avx2)
    fp32 = lc.budget_for(choice, card, "fp32", 4, lc.CPU, 2)
    assert fp32.recorded_ms == 30.0 and fp32.scale == pytest.approx(198 / 126)
    assert fp32.ms == pytest.approx(30.0 * 198 / 126)  # 47.14 ms: a host with a lower peak gets more time
    assert fp32.expected == ("<= 47.14 ms (30 ms x 1.571: fp32 peak recorded 198 / measured 126 GFLOP/s "
                             "(x86-avx512-vnni -> x86-avx2), --rescale-budgets)")
    int8 = lc.budget_for(choice, card, "int8", 1, lc.CPU, 2)
    assert int8.ms == pytest.approx(5.0 * 2.0) and "int8 peak recorded 840 / measured 420 GOP/s" in int8.scale_note
    ips, note = lc.throughput_budget_for(choice, card, 2)
    assert ips == pytest.approx(120.0 * 126 / 198) and "fp32 peak recorded 198 / measured 126" in note
    assert "--rescale-budgets: judged with budgets scaled" in choice.line
    # no int8 peak recorded: int8 cells cannot be rescaled across classes (int8 and fp32 kernels scale apart)
    old = bound(tmp_path, name="old")
    c2 = budgets.Choice(old, "--profile", "p", budgets.applicability(old, avx2, TOL), True, avx2)
    assert lc.budget_for(c2, card, "fp32", 1, lc.CPU, 2).ms == pytest.approx(9.0 * 198 / 126)
    why = lc.budget_for(c2, card, "int8", 1, lc.CPU, 2)
    assert why.startswith("not applicable:") and "records no int8 peak (int8_peak_gops)" in why
    # peaks measured under contention are too low: no rescaling by them
    busy = fake_host("x86-avx2", fp32=60.0, int8=200.0, quiet=False)
    c3 = budgets.Choice(prof, "--profile", "p", budgets.applicability(prof, busy, TOL), True, busy)
    assert "measured under contention" in lc.budget_for(c3, card, "fp32", 1, lc.CPU, 2)


def test_a_rescaled_budget_failure_shows_both_peaks_and_the_factor():
    from harness.compare import CheckFailure
    from harness.latency import checks as lc

    b = budgets.Budget("cpu-test", "repvgg_a0", "fp32", 1, 9.0, Path("cpu-test.toml"), False).rescaled(
        198 / 126, "fp32 peak recorded 198 / measured 126 GFLOP/s (x86-avx512-vnni -> x86-avx2), --rescale-budgets")
    m = type("M", (), {})()
    m.spread = type("S", (), {"median": 0.020, "ci_low": 0.0199, "ci_high": 0.0201, "cv": 0.01})()
    m.quiet, m.gflops, m.peak = True, None, None
    figs = {}
    with pytest.raises(CheckFailure) as e:
        lc.judge_absolute(m, b, lambda **k: figs.update(k), subject="repvgg_a0 fp32 batch 1")
    msg = str(e.value)
    assert "median latency of repvgg_a0 fp32 batch 1 = 20.000 ms, but should be <= 14.14 ms (9 ms x 1.571: " \
           "fp32 peak recorded 198 / measured 126 GFLOP/s" in msg, msg
    assert figs["budget_recorded_ms"] == 9.0 and figs["budget_scale"] == pytest.approx(1.5714, abs=1e-4)


def test_detection_picks_the_applying_profile_nearest_this_hosts_peak(tmp_path):
    write(tmp_path, BOUND, "fast")                                        # 198
    write(tmp_path, BOUND.replace("peak_gflops = 198.0", "peak_gflops = 180.0"), "slow")
    write(tmp_path, BOUND.replace('host_class = "x86-avx512-vnni"', 'host_class = "x86-avx2"')
          .replace("peak_gflops = 198.0", "peak_gflops = 185.0"), "avx2")  # nearest, but another class
    epyc = {"cpu": "AMD EPYC 7763", "cores": 2}
    c = budgets.choose(None, machine=epyc, env={}, folder=tmp_path, valid_models=IDS, host=fake_host(fp32=184.0),
                       tolerance=TOL)
    assert c.how == "detected" and c.profile.name == "slow" and c.applies
    assert "its recorded fp32 peak (180 GFLOP/s) is nearest this host's (184); also applying: fast (198)" in c.reason
    assert "nearest" in c.line
    # on the AVX2 host only the avx2 profile applies
    c = budgets.choose(None, machine=epyc, env={}, folder=tmp_path, valid_models=IDS,
                       host=fake_host("x86-avx2", fp32=180.0), tolerance=TOL)
    assert c.profile.name == "avx2" and c.applies


def test_detection_on_a_host_the_matching_profile_was_not_recorded_on_says_so(tmp_path):
    """Issue 15: cpu-2core matched an AVX2 host by CPU name and cores; now it is detected, not applicable."""
    write(tmp_path, BOUND, "cpu-2core")
    c = budgets.choose(None, machine={"cpu": "AMD EPYC 7763", "cores": 2}, env={}, folder=tmp_path, valid_models=IDS,
                       host=fake_host("x86-avx2", fp32=126.0), tolerance=TOL)
    assert c.profile.name == "cpu-2core" and not c.applies
    assert c.line.startswith("absolute budgets not applicable: profile cpu-2core is x86-avx512-vnni at fp32 198 "
                             "GFLOP/s; this host is x86-avx2 at 126 GFLOP/s")
    assert c.line.endswith("(another host class: other kernels); detected by its [profile.match] (cpu 'AMD EPYC 7763', "
                           "2 cores, host class x86-avx2)")
    assert c.figures()["budgets_line"] == c.line


def test_shipped_cpu_2core_is_bound_to_the_vnni_host_class():
    prof = budgets.load_profile(budgets.BUDGETS / "cpu-2core.toml")
    assert prof.host_class == "x86-avx512-vnni" and prof.peak_gflops == 198.1 and prof.int8_peak_gops is None
    assert "inferred" in (budgets.BUDGETS / "cpu-2core.toml").read_text()
    tol = budgets._peak_tolerance()
    assert budgets.applicability(prof, fake_host(fp32=184.1), tol).applies  # the A/A low end of a VNNI host
    app = budgets.applicability(prof, fake_host("x86-avx2", fp32=126.0), tol)
    assert not app.applies and "this host is x86-avx2 at 126 GFLOP/s" in app.line


def test_record_writes_the_host_class_and_both_peaks_of_the_runs(tmp_path):
    docs = []
    for fp32, int8 in ((190.0, 820.0), (197.5, 845.0)):
        d = run_doc({("repvgg_a0", "fp32", 1): (6.0, True)})
        d["machine"].update(host_class="x86-avx512-vnni", fp32_peak_gflops=fp32, int8_peak_gops=int8, peaks_quiet=True)
        docs.append(d)
    text, report = recording.profile_text(docs, "cpu-rec", 1.2)
    prof = budgets.load_profile(write(tmp_path, text, "cpu-rec"), IDS)
    assert prof.host_class == "x86-avx512-vnni" and prof.int8_peak_gops == 845.0
    assert prof.peak_gflops == 540.0  # the absolute tests' own quiet peak figures count too (run_doc: 540)
    assert any(line.startswith("int8 peak: 820.0, 845.0 GOP/s (quiet): 845.0 recorded") for line in report)
    docs[1]["machine"]["host_class"] = "x86-avx2"
    with pytest.raises(ValueError, match="different classes"):
        recording.profile_text(docs, "x", 1.2)
    old = run_doc({("repvgg_a0", "fp32", 1): (6.0, True)})  # a results.json from before the fingerprint
    text, report = recording.profile_text([old], "cpu-old", 1.2)
    assert "host_class" not in text and any("no host class in these runs" in line for line in report)


def test_record_reads_the_host_from_benchmark_json_figures(tmp_path):
    figs = run_doc({("resnest50", "int8", 8): (90.0, True)})["tests"][0]["figures"]
    figs.update(host_class="x86-avx2", host_int8_peak_gops=400.0, host_peaks_quiet=True)
    text, _ = recording.profile_text([{"machine_info": {"cpu": {"brand_raw": "AMD EPYC", "count": 2}},
                                     "benchmarks": [{"extra_info": figs}]}], "b", 1.1)
    prof = budgets.load_profile(write(tmp_path, text, "b"), IDS)
    assert prof.host_class == "x86-avx2" and prof.int8_peak_gops == 400.0


# --- ratio limits per host class ------------------------------------------------------------------

def test_ratio_limits_are_chosen_by_host_class():
    from harness.tolerances import host_classes, limit

    avx2 = limit("latency", "batch8_per_image_over_batch1_max", "x86-avx2")
    assert avx2.per_class and avx2.value >= 1.073 * 1.05 and "1.011 and 1.073" in avx2.why
    assert avx2.key == '[latency.by_host_class."x86-avx2"] batch8_per_image_over_batch1_max'
    vnni = limit("latency", "batch8_per_image_over_batch1_max", "x86-avx512-vnni")
    assert not vnni.per_class and vnni.value == 1.0 and vnni.key == "[latency] batch8_per_image_over_batch1_max"
    assert "no entry for host class x86-avx512-vnni" in vnni.names()
    # every class whose U8S8 kernels saturate has its own batching limit
    assert {"x86-avx2", "x86-avx512"} <= set(host_classes("latency"))
    for cls in host_classes("latency"):
        assert limit("latency", "int8_over_fp32_max", cls).value <= 1.0  # int8 must be faster on every class


def test_a_ratio_message_names_the_host_class_whose_limit_applied():
    from harness.compare import CheckFailure
    from harness.latency import checks as lc
    from harness.latency import timing

    r = timing.Ratio("num", "den", 1.10, 1.08, 1.12, 1.10, 1.08, 1.12, 6, 0.97, True, [], [1.1] * 6, [1.1] * 6)
    figs = {}
    lc.judge_ratio(r, lc.ratio_limit("batch8_per_image_over_batch1_max", "x86-avx2"),
                   "batch8_per_image_over_batch1_max", lambda **k: figs.update(k), what="w", where="f.onnx", cause="c")
    assert figs["ratio_limit"] == 1.15 and figs["ratio_limit_host_class"] == "x86-avx2" and figs["ratio_limit_per_class"]
    with pytest.raises(CheckFailure) as e:
        lc.judge_ratio(r, lc.ratio_limit("batch8_per_image_over_batch1_max", "x86-avx512-vnni"),
                       "batch8_per_image_over_batch1_max", lambda **k: None, what="w", where="f.onnx", cause="c")
    assert ("w = 1.100, but should be <= 1 [f.onnx; fixtures/tolerances.toml [latency] batch8_per_image_over_batch1_max, "
            "default limit (no entry for host class x86-avx512-vnni)]") in str(e.value)


def test_a_host_class_override_of_an_unknown_tolerance_is_a_config_error(tmp_path):
    from harness.tolerances import limit

    p = tmp_path / "t.toml"
    p.write_text('[latency]\nx_max = { value = 1.0, why = "w" }\n[latency.by_host_class."x86-avx2"]\n'
                 'y_max = { value = 1.2, why = "w" }\n')
    with pytest.raises(ConfigError, match="overrides no \\[latency\\] tolerance 'y_max'"):
        limit("latency", "x_max", "x86-avx2", path=p)
    p.write_text('[latency]\nx_max = { value = 1.0, why = "w" }\n[latency.by_host_class."x86-avx2"]\nx_max = 1.2\n')
    with pytest.raises(ConfigError, match="expected \\{ value"):
        limit("latency", "x_max", "x86-avx2", path=p)


def test_peaks_measured_under_contention_say_so_instead_of_blaming_the_host(tmp_path):
    app = budgets.applicability(bound(tmp_path), fake_host(fp32=95.0, quiet=False), TOL)
    assert not app.applies and app.line.endswith(
        "(fp32 peak -52%, outside +-15% [fixtures/tolerances.toml [latency] profile_peak_rel]; its peaks were measured "
        "under contention (too low: re-run on a quiet machine))")


def _measurement(median_s: float, quiet: bool = True):
    m = type("M", (), {})()
    m.spread = type("S", (), {"median": median_s, "ci_low": median_s * 0.99, "ci_high": median_s * 1.01, "cv": 0.01})()
    m.quiet, m.gflops, m.peak = quiet, None, None
    return m


def test_an_over_budget_median_that_does_not_reproduce_is_judged_on_the_re_measurement():
    from harness.latency import checks as lc

    b = budgets.Budget("cpu-test", "hrnet_w18_small_v1", "fp32", 1, 27.45, Path("cpu-test.toml"), False)
    figs = {}
    lc.judge_absolute(_measurement(0.0308), b, lambda **k: figs.update(k), subject="hrnet fp32 b1",
                      remeasure=lambda: _measurement(0.0187))
    assert figs["first_median_ms"] == pytest.approx(30.8) and figs["remeasured_median_ms"] == pytest.approx(18.7)
    assert "did not reproduce" in figs["remeasure_note"]


def test_a_slow_model_fails_even_after_the_re_measurement():
    from harness.compare import CheckFailure
    from harness.latency import checks as lc

    b = budgets.Budget("cpu-test", "hrnet_w18_small_v1", "fp32", 1, 27.45, Path("cpu-test.toml"), False)
    calls = []
    with pytest.raises(CheckFailure) as e:
        lc.judge_absolute(_measurement(0.0400), b, lambda **k: None, subject="hrnet fp32 b1",
                          remeasure=lambda: calls.append(1) or _measurement(0.0395))
    assert calls == [1] and "39.500 ms, but should be <= 27.45 ms" in str(e.value)


# --- a reproduced quiet failure is the model's only on the host the run started on ------------------

START = dict(fp32=190.0, int8=820.0)  # this host's peaks when the run began (the profile records fp32 198 only)


def _started_on(tmp_path, **start):
    prof = bound(tmp_path)
    host = fake_host(**{**START, **start})
    return budgets.Choice(prof, "--profile", "--profile cpu-test", budgets.applicability(prof, host, TOL), host=host)


def _simulated(scale: float, budget_ms: float, seed: int = 4):
    """The model measured on the simulated machine (10 ms of work a call, 3% noise): real
    measurement logic, deterministic clocks."""
    from _latency_sim import SimulatedMachine

    from harness.latency import timing

    machine = SimulatedMachine(work_s=0.010, noise=0.03, seed=seed)
    return timing.measure(machine.model(scale), timing.plan_from_tolerances(2), clocks=machine.clocks, name="sim",
                          target_s=budget_ms / 1e3)


def _judge_slowed_model(choice, precision, now, record):
    """The defect: the model made 30% slower than a budget with 10% headroom; it reproduces."""
    b = budgets.Budget("cpu-test", "repvgg_a0", precision, 1, 11.0, Path("cpu-test.toml"), False)
    lc.judge_absolute(_simulated(1.3, 11.0), b, record, subject=f"repvgg_a0 {precision} batch 1",
                      remeasure=lambda: _simulated(1.3, 11.0, seed=5),
                      recheck=lambda: lc.recheck_host(choice, precision, now, TOL))


def test_a_slowed_model_on_a_steady_host_fails_and_says_the_host_was_re_checked(tmp_path):
    from harness.compare import CheckFailure
    from harness.testing import Recorder

    rec = Recorder()
    with pytest.raises(CheckFailure) as e:
        _judge_slowed_model(_started_on(tmp_path), "int8", fake_host(fp32=187.0, int8=805.0), rec)
    msg = str(e.value)
    assert "but should be <= 11 ms" in msg and "over the budget on a quiet machine" in msg
    assert "host re-checked: int8 peak 820 GOP/s at the start of the run, 805 now" in msg
    assert rec["host_recheck"].endswith(": the same host") and rec["host_recheck_int8_peak_gops"] == 805.0


def test_a_host_whose_int8_gemm_slowed_since_the_start_makes_the_int8_verdict_inconclusive(tmp_path):
    """The planted cause: the VM's host slowed int8 GEMM by a third mid-run (invisible inside the
    VM). The profile records no int8 peak, so only the run's own start tells it."""
    from harness.compare import CheckFailure, Inconclusive
    from harness.testing import Recorder

    choice, slowed = _started_on(tmp_path), fake_host(fp32=187.0, int8=560.0)
    rec = Recorder()
    with pytest.raises(Inconclusive) as e:
        _judge_slowed_model(choice, "int8", slowed, rec)
    assert e.value.failing is False and e.value.figures["verdict"] == "inconclusive: host changed"
    msg = str(e.value)
    assert msg.startswith("host changed: median latency of repvgg_a0 int8 batch 1 = ") and "vs budget 11 ms" in msg
    assert "this host slowed during the run: int8 peak -32% since the start, beyond -15%" in msg
    assert "int8 peak 820 GOP/s at the start of the run, 560 now" in msg and "profile_peak_rel" in msg
    with pytest.raises(CheckFailure, match="host re-checked: fp32 peak 190 GFLOP/s at the start of the run, 187 now"):
        _judge_slowed_model(choice, "fp32", slowed, Recorder())  # fp32 runs on the fp32 GEMM, which held


def test_a_host_that_left_the_profiles_band_makes_the_verdict_inconclusive(tmp_path):
    from harness.compare import Inconclusive
    from harness.testing import Recorder

    choice = _started_on(tmp_path, fp32=172.0)  # -13% of the profile's 198: applies
    assert choice.applies
    with pytest.raises(Inconclusive, match=r"the profile no longer applies at this host's peaks now: fp32 peak -19%, "
                                           r"outside \+-15%.*fp32 peak 172 GFLOP/s at the start of the run, 160 now"):
        _judge_slowed_model(choice, "fp32", fake_host(fp32=160.0, int8=820.0), Recorder())


def test_a_host_re_check_under_contention_cannot_confirm_a_failure(tmp_path):
    from harness.compare import Inconclusive
    from harness.testing import Recorder

    with pytest.raises(Inconclusive, match="re-measured under contention"):
        _judge_slowed_model(_started_on(tmp_path), "fp32", fake_host(fp32=150.0, int8=700.0, quiet=False), Recorder())


def test_the_host_is_re_checked_only_for_a_quiet_figure_over_its_budget(tmp_path):
    from harness.testing import Recorder

    calls = []
    b = budgets.Budget("cpu-test", "repvgg_a0", "fp32", 1, 11.0, Path("cpu-test.toml"), False)
    lc.judge_absolute(_simulated(1.0, 11.0), b, Recorder(), subject="repvgg_a0 fp32 batch 1",
                      recheck=lambda: calls.append(1))
    assert calls == []  # within budget: no peak measured
    choice = _started_on(tmp_path)
    assert lc.host_rechecker(choice, "fp32", "ort", None) is None  # a GPU case: no CPU threads, no CPU peak
    assert lc.host_rechecker(budgets.Choice(None, "none", "--profile none", host=choice.host), "fp32", "ort", 2) is None
    assert callable(lc.host_rechecker(choice, "int8", "ort", 2))


def test_a_throughput_shortfall_is_re_checked_against_the_host_too(tmp_path):
    from types import SimpleNamespace

    from harness.compare import CheckFailure, Inconclusive
    from harness.testing import Recorder

    choice = _started_on(tmp_path)
    short = SimpleNamespace(items_per_s=90.0, quiet=True, instances=2, items_per_call=8, noise=[], remeasure=None)

    def judge(now):
        lc.judge_throughput(short, 120.0, Recorder(), subject="repvgg_a0", where="cpu-test.toml",
                            recheck=lambda: lc.recheck_host(choice, "fp32", now, TOL))

    with pytest.raises(CheckFailure, match=r"-25% below the budget on a quiet machine; host re-checked: fp32 peak 190"):
        judge(fake_host(fp32=189.0))
    with pytest.raises(Inconclusive, match="fp32 peak -26% since the start"):
        judge(fake_host(fp32=140.0))
