"""``zooconform run`` / ``merge`` end to end on the cheap card checks: the run folder, the
history, JUnit properties, sharded + merged == unsharded, and runs that do not finish
(Ctrl-C, a killed xdist worker) still leaving a report marked incomplete."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from _kit import DIES, suite_dir

from harness.report import history as hist

MODELS = "hrnet_w18_small_v1,repvgg_a0"
CHEAP = ["-m", "card", "-k", "params"]  # seconds per model: builds the architectures, no inference


def zooconform(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def run_folders(report_dir: Path) -> list[Path]:
    return sorted(p for p in (report_dir / "smoke").iterdir() if p.is_dir())


def figures_by_test(doc: dict) -> dict:
    return {t["nodeid"]: (t["outcome"], t["figures"], t.get("model")) for t in doc["tests"]}


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    """One run the scaled-out way: phase 1 on an xdist worker, phase 2 (latency) serially."""
    reports = tmp_path_factory.mktemp("reports")
    r = zooconform("run", "--models", MODELS, *CHEAP, "-j", "1", "--report-dir", reports)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [folder] = run_folders(reports)
    return reports, folder, json.loads((folder / "results.json").read_text())


def test_run_writes_a_new_folder_and_one_history_line_per_model(unsharded):
    reports, folder, doc = unsharded
    assert {p.name for p in folder.iterdir()} >= {"index.html", "summary.md", "results.json", "junit.xml",
                                                  "phase1-parallel", "phase2-latency"}
    assert (folder / "phase1-parallel" / "report.html").exists()
    assert doc["complete"] is True and doc["run_id"] == folder.name
    assert [p["label"] for p in doc["parts"]] == ["parallel"]  # the latency phase selected nothing here
    assert {t["model"] for t in doc["tests"]} == set(MODELS.split(","))
    h = hist.read_history(reports / "history.jsonl")
    assert sorted(r["model"] for r in h.records) == sorted(MODELS.split(","))
    assert {r["run_id"] for r in h.records} == {folder.name}
    page = (folder / "index.html").read_text()
    assert "13.187 / 13.1875" in page and "8.3 / 8.3094" in page  # published / measured params
    # the host fingerprint (whatever this host's class is), from its ISA flags: no latency check
    # ran, so no peaks were measured (two GEMMs, ~11 s; tests/test_host_reports.py has a run with)
    m = doc["machine"]
    assert isinstance(m["host_class"], str) and m["host_class"] and isinstance(m["isa"], list)
    assert m.get("fp32_peak_gflops") is None and m.get("int8_peak_gops") is None
    assert isinstance(m["u8s8_saturates"], bool)
    assert m["fingerprint"].startswith(m["host_class"]) and m["cpu"] is not None and m["cores"]
    assert m["fingerprint"] in page and f"host fingerprint: {m['host_class']}" in (folder / "summary.md").read_text()


def test_junit_carries_figures_per_case_and_machine_versions_profile_per_suite(unsharded):
    _, folder, _ = unsharded
    root = ET.parse(folder / "junit.xml").getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["version.torch"] and props["version.onnxruntime"] and props["machine.cpu"]
    assert props["machine.host_class"] and props["machine.fp32_peak_gflops"] == ""  # no latency check ran
    assert props["machine.int8_peak_gops"] == "" and props["machine.fingerprint"].startswith(props["machine.host_class"])
    assert "profile" in props and props["tier"] == "smoke" and props["data"] == "embedded"
    cases = suite.findall("testcase")
    assert cases
    for case in cases:
        cprops = {p.get("name"): p.get("value") for p in case.find("properties")}
        assert cprops["model"] in MODELS.split(",")
        assert float(cprops["fig:params_m_measured"]) > 0 and "fig:params_m_published" in cprops


# nightly, like tests/test_shards.py::test_simulated_ci_matrix_equals_the_unsharded_run (the same, with a durations plan)
@pytest.mark.slow
def test_sharded_and_merged_equals_unsharded(unsharded, tmp_path):
    reports, _, whole = unsharded
    for shard in ("1/2", "2/2"):
        r = zooconform("run", "--models", MODELS, *CHEAP, "--shard", shard, "--report-dir", tmp_path)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    shards = run_folders(tmp_path)
    assert [p.name.split("-", 1)[1] for p in shards] == ["shard1of2", "shard2of2"]
    parts = [json.loads((p / "results.json").read_text()) for p in shards]
    # each model ran in exactly one shard
    models = [{t["model"] for t in d["tests"]} for d in parts]
    assert models[0] and models[1] and not models[0] & models[1]
    assert not (tmp_path / "history.jsonl").exists()  # shards leave the history to the merge

    before = (reports / "history.jsonl").read_bytes()
    earlier_folders = {p: (p / "index.html").read_bytes() for p in run_folders(reports)}
    r = zooconform("merge", *shards, "--report-dir", reports)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    merged_folder = next(p for p in run_folders(reports) if p.name.endswith("-merged"))
    merged = json.loads((merged_folder / "results.json").read_text())
    assert merged["complete"] is True
    assert figures_by_test(merged) == figures_by_test(whole)
    assert merged["counts"] == whole["counts"]
    assert sorted(merged["settings"]["models"]) == sorted(whole["settings"]["models"])
    # the history grew by one line per model and kept every earlier byte; earlier runs untouched
    after = (reports / "history.jsonl").read_bytes()
    assert after.startswith(before) and len(after.splitlines()) == len(before.splitlines()) + 2
    assert all((p / "index.html").read_bytes() == b for p, b in earlier_folders.items())
    # the merged report compares with the previous run: same figures, so no regression
    assert "regression" in (merged_folder / "summary.md").read_text()
    assert "first run" not in (merged_folder / "index.html").read_text()
    # merging the same shards again never duplicates history lines
    r = zooconform("merge", *shards, "--report-dir", reports)
    assert r.returncode == 0 and (reports / "history.jsonl").read_bytes() == after

    # a missing shard is named, and the merged run is incomplete
    r = zooconform("merge", shards[0], "--report-dir", tmp_path / "partial")
    assert r.returncode == 2 and "shard(s) 2/2 missing" in r.stderr
    [partial] = run_folders(tmp_path / "partial")
    assert "shard(s) 2/2 missing" in (partial / "index.html").read_text()


# --- runs that do not finish ----------------------------------------------------------------

SUITE = '''
import os, signal, time
import pytest

def test_fast(model_card, record):
    record(answer=42)

def test_slow(model_card, record):
    record(started=1)
    open(os.environ["ZC_STARTED"], "w").close()
    time.sleep(120)

def test_after(model_card, record):
    record(never=1)
'''



def test_ctrl_c_leaves_a_report_marked_incomplete(tmp_path):
    suites = suite_dir(tmp_path, SUITE)
    started = tmp_path / "started"
    env = dict(os.environ, ZC_STARTED=str(started))
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--suites", suites, "--models",
                             "hrnet_w18_small_v1", "--report-dir", tmp_path / "reports"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 300
    while not started.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal does to `zooconform run`
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-3000:]
    [folder] = run_folders(tmp_path / "reports")
    doc = json.loads((folder / "results.json").read_text())
    assert doc["complete"] is False and any("interrupted" in r for r in doc["incomplete_reasons"])
    tests = {t["nodeid"].split("::")[-1]: t for t in doc["tests"]}
    assert tests["test_fast[hrnet_w18_small_v1]"]["figures"] == {"answer": 42}
    assert tests["test_slow[hrnet_w18_small_v1]"]["outcome"] is None  # started, never finished
    assert "test_after[hrnet_w18_small_v1]" not in tests
    page = (folder / "index.html").read_text()
    assert "INCOMPLETE: interrupted" in page and "unfinished" in page
    [rec] = hist.read_history(tmp_path / "reports" / "history.jsonl").records
    assert rec["complete"] is False and rec["verdict"] == "unfinished"


def test_a_killed_xdist_worker_leaves_a_report_marked_incomplete(tmp_path):
    suites = suite_dir(tmp_path, DIES)
    r = zooconform("run", "--suites", suites, "--models", "hrnet_w18_small_v1", "-j", "1",
                   "--report-dir", tmp_path / "reports")
    [folder] = run_folders(tmp_path / "reports")
    doc = json.loads((folder / "results.json").read_text())
    assert r.returncode != 0
    assert doc["complete"] is False
    assert any("crashed worker" in x for x in doc["incomplete_reasons"]), doc["incomplete_reasons"]
    tests = {t["nodeid"].split("::")[-1]: t for t in doc["tests"]}
    assert tests["test_fast[hrnet_w18_small_v1]"]["outcome"] == "passed"
    dead = tests["test_worker_dies[hrnet_w18_small_v1]"]
    assert dead["outcome"] == "error" and "crashed" in dead["message"]
    # no replacement worker (xdist's loadgroup hangs replacing one): the rest is named as never run
    assert "test_after[hrnet_w18_small_v1]" not in tests
    assert any("1 of 3 collected test(s) never reported" in x for x in doc["incomplete_reasons"])
    assert (folder / "phase1-parallel" / "junit.xml").exists() and (folder / "junit.xml").exists()
    page = (folder / "index.html").read_text()
    assert "INCOMPLETE" in page and "crashed" in page


def test_run_rejects_a_bad_shard_before_running(tmp_path):
    r = zooconform("run", "--shard", "3/2", "--report-dir", tmp_path)
    assert r.returncode != 0 and "--shard" in (r.stderr + r.stdout)
    assert not (tmp_path / "smoke").exists()


def test_a_killed_pytest_leaves_its_last_snapshot_marked_incomplete(tmp_path):
    suites = suite_dir(tmp_path, DIES)  # without -j the test kills pytest itself (an OOM kill, a lost runner)
    r = zooconform("run", "--suites", suites, "--models", "hrnet_w18_small_v1", "--report-dir", tmp_path / "reports")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    [folder] = run_folders(tmp_path / "reports")
    doc = json.loads((folder / "results.json").read_text())
    assert doc["complete"] is False
    assert any("killed by signal 9" in x for x in doc["incomplete_reasons"]), doc["incomplete_reasons"]
    tests = {t["nodeid"].split("::")[-1]: t for t in doc["tests"]}
    assert tests["test_fast[hrnet_w18_small_v1]"]["figures"] == {"answer": 42}
    assert "INCOMPLETE" in (folder / "index.html").read_text()


def test_the_smoke_tier_leaves_out_slow_cases_unless_the_user_selects():
    import argparse

    from harness.commands.run import phases

    def markers(**over):
        args = argparse.Namespace(**{"tier": "smoke", "marker": None, "jobs": None, **over})
        return [p.marker for p in phases(args, Path("/tmp/x"))]

    assert markers() == ["not slow"]
    assert markers(jobs="2") == ["(not slow) and (not latency)", "(not slow) and (latency)"]
    assert markers(tier="full") == [None]  # the nightly runs every case
    assert markers(marker="quant") == ["quant"]  # -m is the user's: `-m quant` runs every method
