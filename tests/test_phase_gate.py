"""``zooconform run -j``: the latency phase's pytest starts with phase 1 and waits at a gate, so
its imports and collection (7-10 s on 2 cores) overlap phase 1, but none of its tests runs
beside phase 1's workers; an interrupted phase 1 leaves no latency process and no phase folder."""
from __future__ import annotations

import calendar
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from _kit import suite_dir

from harness import plugin
from harness.constants import START_GATE_ENV

# each process that imports the suite logs itself; the phase-1 test waits (up to 120 s) until
# the latency phase's process has collected, which it only can if it was started early
GATED_SUITE = '''
import os, pathlib, time
import pytest

LOG = pathlib.Path(os.environ["ZC_GATE_LOG"])
if os.environ.get("''' + START_GATE_ENV + '''"):
    with LOG.open("a") as f:
        f.write(f"latency-collected {os.getpid()} {time.time()}\\n")


def _latency_collected():
    return [line.split() for line in LOG.read_text().splitlines() if line.startswith("latency-collected")] \\
        if LOG.exists() else []


def test_phase1(model_card):
    deadline = time.time() + 120
    while not _latency_collected():
        assert time.time() < deadline, "the latency phase's pytest was not started during phase 1"
        time.sleep(0.1)
    if os.environ.get("ZC_STARTED"):
        open(os.environ["ZC_STARTED"], "w").close()
        time.sleep(120)
    time.sleep(1.0)
    with LOG.open("a") as f:
        f.write(f"phase1-end {time.time()}\\n")


@pytest.fixture
def logged_start():
    with LOG.open("a") as f:
        f.write(f"latency-test {time.time()}\\n")
    # skipped in setup: no latency check's body ran, so the session measures no host peaks (~11 s)
    pytest.skip("the gate's probe: it times nothing")


@pytest.mark.latency
def test_timed(model_card, logged_start):
    pass
'''


def _events(log) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in log.read_text().splitlines()}


def test_the_latency_phase_collects_during_phase_1_and_its_tests_start_after_it(tmp_path, monkeypatch):
    log = tmp_path / "gate.log"
    monkeypatch.setenv("ZC_GATE_LOG", str(log))
    reports = tmp_path / "reports"
    r = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--suites", suite_dir(tmp_path, GATED_SUITE),
                        "--models", "repvgg_a0", "-j", "1", "--report-dir", reports, "--no-history"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ev = _events(log)
    collected, phase1_end, latency_test = float(ev["latency-collected"][1]), float(ev["phase1-end"][0]), \
        float(ev["latency-test"][0])
    assert collected < phase1_end < latency_test
    [folder] = [p for p in (reports / "smoke").iterdir() if p.is_dir()]
    doc = json.loads((folder / "results.json").read_text())
    parts = {p["label"]: p for p in doc["parts"]}
    assert set(parts) == {"parallel", "latency"}
    # the latency part's clock starts at the gate (its process started >= 1 s before phase 1 ended)
    started = calendar.timegm(time.strptime(parts["latency"]["started_utc"], "%Y-%m-%dT%H:%M:%SZ"))
    assert started >= math.floor(phase1_end)
    assert {t["nodeid"].split("::")[-1]: t["outcome"] for t in doc["tests"]} == {
        "test_phase1[repvgg_a0]": "passed", "test_timed[repvgg_a0]": "skipped"}
    assert not (folder / ".latency-phase-gate").exists()
    # its output comes after phase 1's, in order
    assert r.stdout.index("phase latency:") < r.stdout.rindex("test_mine.py")
    # and its pytest's "in N s" counts from the gate, not the wait (phase 1 ran >= 1 s after it collected)
    latency_out = r.stdout[r.stdout.index("phase latency:"):]
    [session_s] = [float(s) for s in re.findall(r"=+ .* in ([0-9.]+)s", latency_out)]
    assert session_s < phase1_end - collected, latency_out[-1500:]


def test_ctrl_c_in_phase_1_kills_the_waiting_latency_phase_and_leaves_no_folder_of_it(tmp_path):
    log, started = tmp_path / "gate.log", tmp_path / "started"
    env = dict(os.environ, ZC_GATE_LOG=str(log), ZC_STARTED=str(started))
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--suites", suite_dir(tmp_path, GATED_SUITE),
                             "--models", "repvgg_a0", "-j", "1", "--report-dir", tmp_path / "reports", "--no-history"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 300
    while not started.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-3000:]
    pid = int(_events(log)["latency-collected"][0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    [folder] = [p for p in (tmp_path / "reports" / "smoke").iterdir() if p.is_dir()]
    assert not (folder / "phase2-latency").exists() and not (folder / ".latency-phase-gate").exists()
    doc = json.loads((folder / "results.json").read_text())
    assert "interrupted before the latency phase" in doc["incomplete_reasons"]
    assert "latency-test" not in _events(log)


def test_a_waiting_phase_whose_run_is_gone_ends_instead_of_waiting_for_ever(tmp_path, monkeypatch):
    parents = itertools.chain([100, 100], itertools.repeat(1))  # zooconform run killed: re-parented
    monkeypatch.setattr(plugin.os, "getppid", lambda: next(parents))
    with pytest.raises(pytest.exit.Exception, match="ended before this phase's start gate"):
        plugin.wait_for_gate(tmp_path / "never", poll_s=0.001)
    gate = tmp_path / "open"
    gate.write_text("1")
    plugin.wait_for_gate(gate)  # an open gate: returns at once
