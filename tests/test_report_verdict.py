"""Issue 20: the verdict first (terminal, index.html, summary.md, pytest-html, JUnit), known
failures in amber, the applied profile and host class everywhere, the flat CSV, latency
history by host class, flip attribution of int8, and the repro bundle's pieces. Pure functions
and rendered files; no pytest subprocess (tests/test_repro.py runs those)."""
from __future__ import annotations

import csv
import io
import json
import os
import stat

import numpy as np
from test_report import smoke_doc, t

from harness.report import repro
from harness.report.html import columns
from harness.report.nightly import write_report
from harness.report.regress import same_machine
from harness.report.results import ResultsCollector
from harness.report.summary import one_screen
from harness.report.verdict import applied_profile, level, profile_text, verdict_line
from harness.report.views import status_of


def counted(doc):
    counts = {}
    for x in doc["tests"]:
        counts[x["outcome"]] = counts.get(x["outcome"], 0) + 1
    doc["counts"] = counts
    return doc


def failing_doc():
    extra = [t("suites/test_export.py::test_onnx_declares_dynamic_batch[repvgg_a0]", "failed", "repvgg_a0",
               "test_export", message="dynamic batch = lost, but should be kept [export]; cause: " + "word " * 70 + "END")]
    return counted(smoke_doc(extra=extra))


# --- the verdict line ---------------------------------------------------------------------------

def test_verdict_line_reads_red_first_with_every_count():
    doc = failing_doc()
    line = verdict_line(doc)
    assert line == "FAIL: 1 failed \u00b7 1 known failures \u00b7 0 inconclusive \u00b7 10 passed"
    assert level(doc) == "fail"
    doc["counts"]["error"] = 2
    doc["counts"]["not applicable"] = 3
    assert verdict_line(doc) == ("FAIL: 1 failed \u00b7 2 errors \u00b7 1 known failures \u00b7 0 inconclusive "
                                 "\u00b7 10 passed \u00b7 3 not applicable")


def test_a_pass_with_known_failures_is_amber_and_a_clean_pass_green():
    doc = counted(smoke_doc())
    assert level(doc) == "known" and verdict_line(doc).startswith("PASS: 0 failed \u00b7 1 known failures")
    clean = counted(smoke_doc())
    clean["tests"] = [x for x in clean["tests"] if x["outcome"] == "passed"]
    assert level(counted(clean)) == "pass"
    incomplete = counted(smoke_doc(complete=False))
    assert level(incomplete) == "incomplete" and verdict_line(incomplete).startswith("INCOMPLETE:")


def test_a_failing_inconclusive_or_strict_xpass_makes_the_run_red():
    doc = counted(smoke_doc(extra=[t("suites/test_quant.py::test_x[repvgg_a0]", "inconclusive", "repvgg_a0",
                                     "test_quant")]))
    assert level(doc) == "known"  # not failing: amber
    doc["tests"][-1]["failing"] = True
    assert level(doc) == "fail"


def test_known_failures_are_never_green():
    assert status_of("xfailed") == "known" and status_of("passed") == "ok" and status_of("failed") == "bad"


def test_index_html_opens_with_a_red_banner_and_the_verdict_column_next_to_the_model(tmp_path):
    w = write_report(failing_doc(), tmp_path)
    page = w.index.read_text()
    first = page.index('class="banner verdict fail"')
    assert "complete run" not in page  # the old green banner above failures
    assert first < page.index("<table")
    assert "FAIL: 1 failed \u00b7 1 known failures" in page[first:first + 300]
    head = page[page.index('<table class="models">'):]
    head = head[:head.index("</tr>")]
    assert head.index("<th>model</th>") < head.index("<th>verdict</th>") < head.index("<th>source</th>")
    assert columns()[0][0] == "verdict"
    assert 'class="known"' in page  # the xfailed int8 cell / test outcome in amber
    summary = w.summary.read_text().splitlines()
    assert summary[1].startswith("# ") and "**FAIL**: 1 failed \u00b7 1 known failures" in summary[1]
    assert "END" in w.summary.read_text()  # messages are not cut at 300 characters


def test_amber_banner_for_a_pass_with_known_failures(tmp_path):
    page = write_report(counted(smoke_doc()), tmp_path).index.read_text()
    assert 'class="banner verdict known"' in page and "PASS: 0 failed \u00b7 1 known failures" in page


def test_report_files_are_world_readable(tmp_path):
    w = write_report(failing_doc(), tmp_path)
    for p in (w.index, w.summary, w.results, tmp_path / "results.csv"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p


# --- the applied profile and host class -------------------------------------------------------

def test_a_detected_profile_is_the_applied_profile_not_null(tmp_path):
    lat = t("suites/test_latency.py::test_latency_within_budget[repvgg_a0-fp32-b1]", model="repvgg_a0",
            suite="test_latency", profile="cpu-2core", profile_how="detected",
            budgets_line="absolute budgets of profile cpu-2core apply; profile cpu-2core detected (cpu 'AMD EPYC')")
    c = ResultsCollector({"tier": "smoke", "profile": None, "profile_option": None})
    doc = c.document(True, 0)
    assert doc["settings"]["profile"] is None and doc["settings"]["profile_how"] == "not used"
    c.tests[lat["nodeid"]] = lat
    doc = c.document(True, 0)
    assert doc["settings"]["profile"] == "cpu-2core" and doc["settings"]["profile_how"] == "detected"
    doc["machine"] = {"host_class": "x86-avx2", "flags_source": "/proc/cpuinfo", "cpu": "AMD EPYC", "cores": 2}
    assert profile_text(doc).startswith("cpu-2core (detected: ")
    w = write_report(doc, tmp_path)
    page, md = w.index.read_text(), w.summary.read_text()
    for text in (page, md):
        assert "cpu-2core (detected" in text and "x86-avx2 (ISA flags from /proc/cpuinfo)" in text
    assert applied_profile([], {"profile_option": "t4-tensorrt"})["how"] == "--profile"


def test_terminal_summary_starts_with_the_verdict_and_wraps_long_messages():
    doc = failing_doc()
    doc["wall_s"] = 1.0
    lines = one_screen(doc, width=80)
    assert lines[0].startswith("FAIL: 1 failed") and lines[1].startswith("budget profile: ")
    assert all(len(x) <= 80 for x in lines if x.startswith("      "))
    assert any(x.strip().endswith("END") for x in lines)  # the whole message, wrapped


# --- results.csv ------------------------------------------------------------------------------

def test_results_csv_has_one_flat_row_per_model(tmp_path):
    write_report(failing_doc(), tmp_path)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert [r["model"] for r in rows] == ["repvgg_a0"]
    r = rows[0]
    assert r["verdict"] == "failed" and r["run_verdict"] == "FAIL" and r["failed"] == "1" and r["xfailed"] == "1"
    assert float(r["latency.fp32.b1.ms"]) == 4.8 and "export.error" in r


# --- regressions by host class -----------------------------------------------------------------

def test_latency_history_is_compared_by_host_class_not_hostname():
    a = {"machine": {"hostname": "runner-1a2b", "cpu": "AMD EPYC", "cores": 2, "host_class": "x86-avx2"},
         "threads": 2, "profile": "cpu-2core"}
    b = json.loads(json.dumps(a))
    b["machine"]["hostname"] = "runner-9f8e"  # an ephemeral CI runner: a new name every run
    assert same_machine(a, b)
    b["machine"]["host_class"] = "x86-avx512-vnni"
    assert not same_machine(a, b)
    old = json.loads(json.dumps(a))
    del old["machine"]["host_class"]
    old["machine"]["hostname"] = "elsewhere"
    assert not same_machine(a, old)  # no class recorded: the hostname decides, as before


# --- the repro bundle's pieces ------------------------------------------------------------------

def test_message_fields_parse_with_brackets_inside_where():
    f = repro.parse_message("int8 top-1 agreement = 48.0%, but should be >= 86.5% (floor) "
                            "[fixtures/tolerances.toml [quant] agreement]; cause: near-ties; layer x")
    assert f == {"what": "int8 top-1 agreement", "measured": "48.0%", "expected": ">= 86.5% (floor)",
                 "where": "fixtures/tolerances.toml [quant] agreement", "cause": "near-ties; layer x"}
    assert repro.parse_message("InputError: no file")["what"] == "InputError: no file"


def test_sanitized_test_ids_are_folder_names():
    assert repro.sanitize("suites/test_quant.py::test_int8_matches_fp32[repvgg_a0-minmax]") == \
        "test_quant.test_int8_matches_fp32.repvgg_a0-minmax"
    long = repro.sanitize("suites/test_x.py::test_y[" + "a/b" * 100 + "]")
    assert len(long) <= repro.MAX_NAME and "/" not in long


def test_bundle_copies_small_artifacts_and_links_large_ones(tmp_path):
    small, big = tmp_path / "small.onnx", tmp_path / "big.onnx"
    small.write_bytes(b"x" * 10)
    big.write_bytes(b"x" * 100)
    folder = repro.write_bundle(tmp_path / "run" / "repro", "suites/test_q.py::test_a[m]", outcome="failed",
                                exc_type="CheckFailure", message=f"error = 1, but should be 0 [{small}]",
                                figures={"int8_file": str(big)}, command="cd / && true",
                                inputs={"eval_names": ["a.png", "b.png"], "bad": object()}, file_cap=50)
    listed = {e["source"]: e for e in json.loads((folder / "artifacts.json").read_text())}
    assert listed[str(small.resolve())]["how"] == "copied" and (folder / "artifacts" / "small.onnx").is_file()
    assert listed[str(big.resolve())]["how"] == "linked" and (folder / "artifacts" / "big.onnx").is_symlink()
    assert list(np.load(folder / "inputs.npz")["eval_names"]) == ["a.png", "b.png"]
    cause = json.loads((folder / "cause.json").read_text())
    assert cause["measured"] == "1" and cause["where"] == str(small)
    for p in ("cause.json", "command.txt", "inputs.npz"):
        assert stat.S_IMODE(os.stat(folder / p).st_mode) == 0o644


# --- flip attribution (int8) -------------------------------------------------------------------

def test_flips_of_int8_that_noise_does_not_make_are_listed_with_their_margins():
    from harness.quant.checks import flip_attribution

    fp = np.array([[5, 1, 0], [2, 1.9, 0], [0, 4, 1], [3, 0, 0], [0, 0, 9]], float)
    i8 = np.array([[0, 5, 0], [1.9, 2, 0], [0, 4, 1], [3, 0, 0], [9, 0, 0]], float)
    noisy = np.array([[5, 1, 0], [1.8, 2, 0], [0, 4, 1], [3, 0, 0], [0, 0, 9]], float)
    f = flip_attribution(fp, i8, noisy, ["a.png", "b.png", "c.png", "d.png", "e.png"])
    figs = f.figures()
    assert figs["int8_flips"] == 3 and figs["int8_only_flips"] == 2 and figs["int8_flips_also_under_noise"] == 1
    assert [r["image"] for r in figs["int8_only_flip_list"]] == ["e.png", "a.png"]  # largest margin first
    assert figs["int8_only_flip_list"][0]["fp32_top2_margin"] == 9.0
    text = f.text()
    assert "e.png (margin 9)" in text and "a.png (margin 4)" in text and "b.png" not in text.split("median")[0]
    arrays = f.arrays()
    assert list(arrays["int8_only_flip_index"]) == [4, 0]


def test_a_killed_runs_junit_keeps_inconclusive_distinct(tmp_path):
    import xml.etree.ElementTree as ET

    from harness.commands.run import write_junit_from_doc

    doc = smoke_doc(extra=[t("suites/test_latency.py::test_l[repvgg_a0]", "inconclusive", "repvgg_a0",
                             "test_latency", message="contended")])
    write_junit_from_doc(doc, "all", tmp_path / "junit.xml")
    case = next(c for c in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase") if c.get("name") == "test_l[repvgg_a0]")
    assert case.find("skipped").get("type") == "zooconform.inconclusive"
    assert {p.get("name"): p.get("value") for p in case.iter("property")} == {"outcome": "inconclusive"}


def test_a_merged_run_reports_the_profile_its_latency_phase_applied():
    from harness.report.merge import merge_documents

    phase1 = counted(smoke_doc())
    phase1["tests"] = [x for x in phase1["tests"] if "latency" not in x["nodeid"]]
    phase1["settings"].update(profile=None, profile_how="not used", profile_reason="none judged")
    phase2 = counted(smoke_doc(started="2026-11-20T01:05:00Z"))
    phase2["tests"] = [dict(x, figures={**x["figures"], "profile": "cpu-2core", "profile_how": "detected",
                                        "budgets_line": "profile cpu-2core detected"})
                       for x in phase2["tests"] if "latency" in x["nodeid"]]
    merged = merge_documents([("parallel", phase1), ("latency", phase2)], sequential=True)
    assert merged["settings"]["profile"] == "cpu-2core" and merged["settings"]["profile_how"] == "detected"
