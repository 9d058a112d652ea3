"""The host fingerprint in every report (results.json, JUnit, pytest-html, summary.md,
index.html, the terminal) and absolute budgets that do not hold on this host as the outcome
"not applicable", with the run's one line. The host is faked (fake CpuFacts-derived
fingerprints and peaks): nothing here depends on the machine the tests run on."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.host import CpuFacts, fingerprint
from harness.latency import checks as lc
from harness.report.merge import merge_documents
from harness.report.nightly import write_report
from harness.report.regress import same_machine

TESTS = Path(__file__).resolve().parent
AVX2 = CpuFacts("AMD EPYC", 2, "x86_64", frozenset({"avx2", "fma", "sse4_2"}), "/proc/cpuinfo")
PROFILE = """
[profile]
provider = "CPUExecutionProvider"
threads = 2
peak_gflops = 198.0
[profile.match]
host_class = "x86-avx512-vnni"
[models.repvgg_a0]
fp32 = { b1 = 9.0 }
"""


@pytest.fixture
def fake_host(monkeypatch):
    """This host is an AVX2-only EPYC at fp32 126 GFLOP/s, int8 400 GOP/s; counts peak requests."""
    calls = []

    def host_figures(threads, measure_peaks=True, lab=None):
        calls.append(measure_peaks)
        fp = fingerprint(threads, versions={}, cpu=AVX2)
        if measure_peaks:
            from dataclasses import replace

            fp = replace(fp, fp32_peak_gflops=126.0, int8_peak_gops=400.0, peak_threads=threads, peaks_quiet=True)
        return fp

    monkeypatch.setattr(lc, "host_figures", host_figures)
    return calls


SUITE = '''
import pytest
from harness.latency import budgets
from harness.latency import checks as lc

@pytest.mark.latency
def test_latency(model_card, record):
    host = lc.host_figures(2)
    choice = budgets.choose("{profile}", host=host, valid_models=["repvgg_a0"])
    record(latency_kind="absolute", precision="fp32", batch=1, median_ms=12.5, quiet=True, **choice.figures())
    why = lc.budget_for(choice, model_card, "fp32", 1, lc.CPU, 2)
    pytest.skip(why)

def test_card(model_card, record):
    record(params_m_measured=8.3)
'''


def test_not_applicable_budgets_and_the_fingerprint_reach_every_report(pytester, fake_host, tmp_path):
    profile = tmp_path / "cpu-vnni.toml"
    profile.write_text(PROFILE)
    pytester.makepyfile(test_sim=SUITE.replace("{profile}", str(profile)))
    rep = pytester.path / "rep"
    result = pytester.runpytest("-p", "harness.plugin", "--models", "repvgg_a0", "--threads", "2",
                                f"--report-dir={rep}", f"--junitxml={rep / 'junit.xml'}",
                                f"--html={rep / 'report.html'}", "--self-contained-html")
    line = ("absolute budgets not applicable: profile cpu-vnni is x86-avx512-vnni at fp32 198 GFLOP/s; "
            "this host is x86-avx2 at 126 GFLOP/s (another host class: other kernels)")
    result.stdout.fnmatch_lines(["test_sim.py n.*",
                                 "*zooconform: PASS: 0 failed \u00b7 0 known failures \u00b7 0 inconclusive \u00b7 1 passed "
                                 "\u00b7 1 not applicable*",
                                 "budget profile: cpu-vnni (--profile) \u00b7 host class: x86-avx2 (ISA flags from *",
                                 f"  {line}*",
                                 "machine: x86-avx2 * AMD EPYC, 2 cores *", "*= 1 passed, 1 not applicable in *"])
    assert result.ret == 0  # neither a fail nor a pass

    doc = json.loads((rep / "results.json").read_text())
    test = next(t for t in doc["tests"] if "test_latency" in t["nodeid"])
    assert test["outcome"] == "not applicable" and test["message"].startswith(f"not applicable: {line}")
    assert test["figures"]["budgets_applicable"] is False and test["figures"]["median_ms"] == 12.5  # still recorded
    assert doc["counts"] == {"passed": 1, "not applicable": 1}
    assert doc["notes"] == [f"{line}; --profile {profile}"]
    m = doc["machine"]
    assert m["hostname"] and m["cores"] and "cpu" in m  # the keys older readers use stay
    assert (m["host_class"], m["isa"], m["u8s8_saturates"]) == ("x86-avx2", ["avx2", "fma"], True)
    assert (m["fp32_peak_gflops"], m["int8_peak_gops"], m["peak_threads"], m["peaks_quiet"]) == (126.0, 400.0, 2, True)
    assert m["fingerprint"].startswith("x86-avx2 \u00b7 AMD EPYC, 2 cores \u00b7 avx2 fma \u00b7 fp32 peak 126 GFLOP/s")
    assert fake_host.count(True) == 2  # the suite's own request, and the report's at the end: one measurement each call

    props = {p.get("name"): p.get("value") for p in ET.parse(rep / "junit.xml").getroot().iter("property")}
    assert props["machine.host_class"] == "x86-avx2" and props["machine.isa"] == "avx2 fma"
    assert props["machine.fp32_peak_gflops"] == "126.0" and props["machine.int8_peak_gops"] == "400.0"
    assert props["machine.u8s8_saturates"] == "True" and props["machine.fingerprint"] == m["fingerprint"]
    assert props["machine.cpu"]  # machine_info's properties stay
    assert props["profile"] == "cpu-vnni" and props["profile_how"] == "--profile"
    assert doc["settings"]["profile"] == "cpu-vnni" and doc["settings"]["profile_how"] == "--profile"

    page = (rep / "report.html").read_text()
    assert "Machine:</b> x86-avx2" in page and "fp32 peak 126 GFLOP/s" in page and line in page
    assert "Host class" in page  # pytest-html's Environment table

    written = write_report(doc, tmp_path / "run")
    md, index = written.summary.read_text(), written.index.read_text()
    assert f"- host fingerprint: {m['fingerprint']}" in md and line in md and "1 not applicable" in md
    assert "host fingerprint" in index and "fp32 peak 126 GFLOP/s" in index
    assert "latency budgets" in index and "this host is x86-avx2 at 126 GFLOP/s" in index


def test_a_run_without_a_latency_check_measures_no_peak(pytester, fake_host):
    # the peaks scale latency budgets and nothing else: two GEMMs (~11 s) a run without latency
    # (phase 1 of `zooconform run -j`, CI's suites step) does not pay for
    pytester.makepyfile(test_sim=SUITE.replace("{profile}", "none"))
    rep = pytester.path / "rep"
    result = pytester.runpytest("-p", "harness.plugin", "--models", "repvgg_a0", "-k", "card",
                                f"--report-dir={rep}", f"--junitxml={rep / 'junit.xml'}")
    assert result.ret == 0 and True not in fake_host
    m = json.loads((rep / "results.json").read_text())["machine"]
    assert m["host_class"] and m.get("fp32_peak_gflops") is None  # this host's flags (not faked)
    assert "GFLOP/s" not in m["fingerprint"]


def test_collect_only_and_help_measure_no_peak(pytester, fake_host, monkeypatch):
    from harness.latency import timing

    def no(*a, **k):
        raise AssertionError("a peak was measured")

    monkeypatch.setattr(timing, "machine_peak", no)
    monkeypatch.setattr(timing, "int8_peak", no)
    pytester.makepyfile(test_sim=SUITE.replace("{profile}", "none"))
    result = pytester.runpytest("-p", "harness.plugin", "--models", "repvgg_a0", "--collect-only",
                                f"--report-dir={pytester.path / 'rep'}")
    assert result.ret == 0 and True not in fake_host  # the cheap facts only
    assert pytester.runpytest("-p", "harness.plugin", "--help").ret == 0
    assert True not in fake_host


def test_rescaled_budgets_are_judged_with_both_peaks_in_the_message(pytester, fake_host, tmp_path):
    profile = tmp_path / "cpu-vnni.toml"
    profile.write_text(PROFILE)
    suite = SUITE.replace("{profile}", str(profile)).replace(
        'valid_models=["repvgg_a0"])', 'valid_models=["repvgg_a0"], rescale=True)').replace(
        "    pytest.skip(why)", "    from harness.latency import timing\n    raise AssertionError(why.expected)")
    pytester.makepyfile(test_sim=suite)
    result = pytester.runpytest("-p", "harness.plugin", "--models", "repvgg_a0", "-k", "latency",
                                f"--report-dir={pytester.path / 'rep'}")
    result.stdout.fnmatch_lines(["*<= 14.14 ms (9 ms x 1.571: fp32 peak recorded 198 / measured 126 GFLOP/s "
                                 "(x86-avx512-vnni -> x86-avx2), --rescale-budgets)*"])
    doc = json.loads((pytester.path / "rep" / "results.json").read_text())
    assert doc["notes"][0].endswith("--rescale-budgets: judged with budgets scaled by the peak ratio where the "
                                    "profile records it")


def test_the_plugin_option_reaches_the_settings(pytester):
    from harness.plugin import settings_from

    config = pytester.parseconfig("-p", "harness.plugin", "--rescale-budgets")
    assert settings_from(config).extra == {"rescale_budgets": True}
    assert settings_from(pytester.parseconfig("-p", "harness.plugin")).extra == {}


# --- merged reports and history keep each part's host -----------------------------------------------

def _doc(host_class, fp32, shard, model):
    return {"complete": True, "exitstatus": 0, "started_utc": "2026-12-01T01:00:00Z", "wall_s": 5.0,
            "machine": {"hostname": "vm", "cpu": "AMD EPYC", "cores": 2, "host_class": host_class, "isa": ["avx2"],
                        "fp32_peak_gflops": fp32, "fingerprint": f"{host_class} \u00b7 fp32 peak {fp32:.0f} GFLOP/s"},
            "versions": {}, "settings": {"models": [model], "shard": shard}, "counts": {},
            "tests": [{"nodeid": f"s::x[{model}]", "outcome": "passed", "figures": {}, "model": model}]}


def test_merged_shards_keep_each_fingerprint_and_say_when_host_classes_differ(tmp_path):
    a, b = _doc("x86-avx512-vnni", 190.0, "1/2", "m1"), _doc("x86-avx2", 126.0, "2/2", "m2")
    m = merge_documents([("shard 1/2", a), ("shard 2/2", b)])
    assert [p["machine"]["host_class"] for p in m["parts"]] == ["x86-avx512-vnni", "x86-avx2"]
    assert m["host_classes_differ"] is True and len(m["machines"]) == 2
    assert m["notes"] == ["parts ran on different host classes (shard 1/2: x86-avx512-vnni, shard 2/2: x86-avx2): "
                          "latency figures and int8 kernel results differ by host class; compare each part with runs "
                          "of its own class"]
    written = write_report(m, tmp_path / "merged")
    assert "parts ran on different host classes" in written.summary.read_text()
    index = written.index.read_text()
    assert "host x86-avx512-vnni \u00b7 fp32 peak 190 GFLOP/s" in index and "host x86-avx2 \u00b7 fp32 peak 126" in index
    # one host measures its peaks a little differently each run: still one machine, no note
    same = merge_documents([("shard 1/2", a), ("shard 2/2", _doc("x86-avx512-vnni", 195.0, "2/2", "m2"))])
    assert "machines" not in same and "host_classes_differ" not in same and same["notes"] == []


def test_latency_is_not_compared_across_host_classes():
    rec = {"machine": {"hostname": "vm", "cpu": "AMD EPYC", "cores": 2, "host_class": "x86-avx2"}, "threads": 2}
    assert same_machine(rec, json.loads(json.dumps(rec)))
    other = json.loads(json.dumps(rec))
    other["machine"]["host_class"] = "x86-avx512-vnni"
    assert not same_machine(rec, other)  # same VM name, another CPU under it
    old = json.loads(json.dumps(rec))
    del old["machine"]["host_class"]  # a history line from before the fingerprint
    assert same_machine(rec, old)

