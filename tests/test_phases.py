"""The phase log (harness/phases.py): self time per model and phase, the live progress line,
and the profile in results.json (issue 19: where a run's time goes; no silent 185 s step)."""
from __future__ import annotations

import json
import time

import pytest

from harness import phases
from harness.phases import PhaseLog, Progress, profile, read_events


def test_nested_phases_count_their_own_time_once(tmp_path):
    log = PhaseLog(tmp_path / "phases.jsonl")
    log.current_model = "repvgg_a0"
    with log("quantize", "hrnet_w18_small"):
        time.sleep(0.05)
        with log("calibration"):  # no model given: the enclosing phase's
            time.sleep(0.1)
    with log("evaluation"):  # no enclosing phase: the running test's model
        pass
    log.close()
    events, offset = read_events(tmp_path / "phases.jsonl")
    assert offset == (tmp_path / "phases.jsonl").stat().st_size
    ends = {e["phase"]: e for e in events if e["ev"] == "end"}
    assert ends["calibration"]["model"] == "hrnet_w18_small"
    assert ends["evaluation"]["model"] == "repvgg_a0"
    # the parent's self time excludes its child's: the profile adds up to the wall time, not more
    assert ends["quantize"]["s"] >= 0.15
    assert ends["quantize"]["self_s"] < ends["quantize"]["s"] - 0.09
    prof = profile(events, busy_s=1.0)
    assert set(prof["by_model"]) == {"hrnet_w18_small", "repvgg_a0"}
    assert prof["accounted_s"] == pytest.approx(ends["quantize"]["s"] + ends["evaluation"]["s"], abs=0.01)
    assert prof["essential_s"] == prof["accounted_s"]  # quantize, calibration, evaluation: all work under test
    assert prof["overhead_ratio"] == pytest.approx(1.0 / prof["essential_s"], rel=0.05)  # essential_s is rounded


def test_an_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="add it to harness.phases.PHASES"):
        with PhaseLog()("compile"):
            pass


def test_overhead_ratio_counts_references_and_floors_as_overhead():
    events = [{"ev": "end", "phase": "reference build", "model": "m", "self_s": 30.0},
              {"ev": "end", "phase": "fp64 floor", "model": "m", "self_s": 10.0},
              {"ev": "end", "phase": "export", "model": "m", "self_s": 20.0},
              {"ev": "end", "phase": "evaluation", "model": "m", "self_s": 20.0}]
    prof = profile(events, busy_s=100.0)
    assert prof["essential_s"] == 40.0
    assert prof["unattributed_s"] == 20.0
    assert prof["overhead_ratio"] == 2.5
    assert list(prof["totals"]) == ["reference build", "export", "evaluation", "fp64 floor"]  # largest first


def test_progress_announces_long_phases_only():
    prog = Progress(after=5.0, every=30.0)
    start = {"ev": "start", "id": "1-0", "phase": "bn recalibration", "model": "resnest50", "t": 100.0}
    quick = {"ev": "start", "id": "1-1", "phase": "images", "model": "resnest50", "t": 100.0}
    assert prog.feed([start, quick], now=101.0) == []
    assert prog.feed([{"ev": "end", "id": "1-1", "phase": "images", "model": "resnest50", "s": 1.0}], 102.0) == []
    assert prog.feed([], now=106.0) == ["zooconform: resnest50 · bn recalibration · 6 s ..."]
    assert prog.feed([], now=110.0) == []  # not again before `every`
    assert prog.feed([], now=137.0) == ["zooconform: resnest50 · bn recalibration · 37 s ..."]
    end = {"ev": "end", "id": "1-0", "phase": "bn recalibration", "model": "resnest50", "s": 185.2}
    assert prog.feed([end], now=285.0) == ["zooconform: resnest50 · bn recalibration · done in 185.2 s"]


def test_a_phase_nested_in_itself_is_announced_once():
    # the reference logits memo around its disk-cache entry: two start events, one step
    prog = Progress(after=5.0, every=30.0)
    outer = {"ev": "start", "id": "1-0", "phase": "reference logits", "model": "repvgg_a0", "t": 100.0}
    inner = {"ev": "start", "id": "1-1", "phase": "reference logits", "model": "repvgg_a0", "t": 100.0}
    other = {"ev": "start", "id": "1-2", "phase": "reference logits", "model": "hrnet_w18_small_v1", "t": 100.0}
    assert prog.feed([outer, inner, other], now=106.0) == [
        "zooconform: repvgg_a0 · reference logits · 6 s ...",
        "zooconform: hrnet_w18_small_v1 · reference logits · 6 s ..."]
    assert prog.feed([{"ev": "end", "id": "1-1", "phase": "reference logits", "model": "repvgg_a0", "s": 29.0}],
                     130.0) == []
    assert prog.feed([{"ev": "end", "id": "1-0", "phase": "reference logits", "model": "repvgg_a0", "s": 30.0}],
                     131.0) == ["zooconform: repvgg_a0 · reference logits · done in 30.0 s"]


def test_a_half_written_line_is_read_next_time(tmp_path):
    path = tmp_path / "phases.jsonl"
    path.write_bytes(b'{"ev": "start", "id": "1"}\n{"ev": "end", "id"')
    events, offset = read_events(path)
    assert [e["id"] for e in events] == ["1"]
    with open(path, "ab") as f:
        f.write(b': "1"}\n')
    more, _ = read_events(path, offset)
    assert [e["id"] for e in more] == ["1"]


def test_a_run_reports_its_phases_and_prints_progress(pytester, monkeypatch):
    """A plain pytest run: the phases of its checks land in results.json (per model, with the
    overhead ratio) and a phase over the progress threshold is announced on the terminal."""
    from harness import host
    from harness.latency import checks as lc

    monkeypatch.setattr(lc, "host_figures", lambda threads, measure_peaks=True, lab=None: host.fingerprint(threads))
    monkeypatch.setattr(phases, "PROGRESS_AFTER_S", 0.5)
    pytester.makepyfile(test_timed='''
        import time

        def test_slow_export(model_card, lab):
            with lab.phase("export"):
                time.sleep(2.6)
            with lab.phase("fp64 floor"):
                time.sleep(0.2)
    ''')
    run_dir = pytester.path / "run"
    result = pytester.runpytest("-p", "harness.plugin", "--models", "repvgg_a0", "--report-dir", str(run_dir))
    assert result.ret == 0, result.stdout.str()[-2000:]
    result.stdout.fnmatch_lines(["*zooconform: repvgg_a0 · export · *"])
    doc = json.loads((run_dir / "results.json").read_text())
    by_model = doc["phases"]["by_model"]["repvgg_a0"]
    assert by_model["export"] >= 2.5 and 0.15 <= by_model["fp64 floor"] < 1.0
    assert doc["phases"]["overhead_ratio"] >= 1.0
    from harness.report.schema import validate

    assert validate(doc) == []
    # in-process, this run's phases may not raise pytest's peak; the schema takes the entry they would write
    doc["phases"]["memory"] = {"repvgg_a0": {"peak_mb": 1234, "phase": "export", "phases": {"export": 1234}}}
    assert validate(doc) == []
    doc["phases"]["memory"] = {"repvgg_a0": {"peak_mb": 1234}}  # a peak without the phase that set it
    assert validate(doc) != []


def test_the_report_shows_where_the_time_went():
    from harness.report.html import phases_section
    from harness.report.summary import one_screen

    events = [{"ev": "end", "phase": "bn recalibration", "model": "resnest50", "self_s": 185.0},
              {"ev": "end", "phase": "export", "model": "resnest50", "self_s": 40.0},
              {"ev": "end", "phase": "export", "model": "<b>x</b>", "self_s": 4.0, "peak_mb": 19282}]
    doc = {"phases": profile(events, busy_s=300.0), "tests": [], "wall_s": 310.0, "complete": True,
           "settings": {}, "counts": {}}
    page = phases_section(doc)
    assert "Where the time went" in page and "bn recalibration *" in page  # overhead marked
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page  # escaped
    assert "overhead ratio 6.818" in page
    assert phases_section({"phases": {}}) == ""
    line = next(x for x in one_screen(doc) if x.startswith("time: "))
    assert line.startswith("time: bn recalibration 185 s, export 44 s; overhead ratio 6.818")
    assert '<td title="set in export">19282</td>' in page  # the model's peak memory, and its phase
    assert "memory: peak 19282 MB of one test process, set by <b>x</b> (export)" in one_screen(doc)


def test_shards_profiles_add_up_when_merged():
    from harness.phases import merge_profiles

    one = profile([{"ev": "end", "phase": "export", "model": "a", "self_s": 10.0}], busy_s=20.0)
    two = profile([{"ev": "end", "phase": "export", "model": "b", "self_s": 30.0},
                   {"ev": "end", "phase": "reference build", "model": "b", "self_s": 5.0}], busy_s=40.0)
    merged = merge_profiles([one, two, None])
    assert merged["by_model"] == {"a": {"export": 10.0}, "b": {"export": 30.0, "reference build": 5.0}}
    assert merged["tests_s"] == 60.0 and merged["essential_s"] == 40.0 and merged["overhead_ratio"] == 1.5


def test_runs_of_the_artifacts_under_test_are_evaluation_not_overhead(tmp_path):
    """The export and fp16 checks run the files under test: that time is work under test. Left
    outside every phase it counted as the suite's overhead (the "unattributed" rest)."""
    import numpy as np
    import torch
    import torch.nn as nn

    from harness.export import checks as ec
    from harness.export import fp16
    from harness.export.exporter import export_onnx
    from harness.testing import FakeLab, recorder

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    path = export_onnx(model, tmp_path / "m.onnx", input_size=16).path
    x = torch.randn(8, 3, 16, 16)

    def evaluated(check) -> list[dict]:
        lab = FakeLab(tmp_path)
        lab.phase.current_model = "tiny"
        check(lab)
        return [e for e in lab.phase.events if e["ev"] == "end" and e["phase"] == "evaluation"]

    assert evaluated(lambda lab: ec.check_matches_reference(path, model, x, recorder(), label="m", lab=lab))
    assert evaluated(lambda lab: ec.check_batch_consistency(path, x, recorder(), label="m", lab=lab))
    runs = evaluated(lambda lab: fp16.check_fp16_onnx_within_tolerance(
        path, fp16.convert(path, tmp_path / "m.fp16.onnx"), x.numpy(), recorder(), label="m", lab=lab))
    assert len(runs) == 2 and {e["model"] for e in runs} == {"tiny"}  # the fp32 and the fp16 file; not the floor
    assert np.isfinite(sum(e["s"] for e in runs))


def test_the_phase_that_raises_the_process_peak_is_named_with_its_model_and_merges_keep_the_highest(tmp_path):
    """A runner must hold a model's peak memory (resnest269's layer report once took a worker past
    19 GB): the profile names, per model, the highest process peak one of its phases set."""
    from harness.phases import merge_profiles

    peaks = iter([1000, 1000, 4200, 4200, 4200, 4200])  # before/after: quantize, calibration, evaluation
    log = PhaseLog(tmp_path / "phases.jsonl", peak_mb=lambda: next(peaks), rss_mb=lambda: None, sampled=False)
    with log("quantize", "big"):
        with log("calibration"):  # raises the peak from 1000 to 4200 MB
            pass
    with log("evaluation", "small"):  # never raises it
        pass
    log.close()
    events, _ = read_events(tmp_path / "phases.jsonl")
    prof = profile(events)
    # the inner phase that did it; the peak is both phases' high-water (no resident memory read here)
    assert prof["memory"] == {"big": {"peak_mb": 4200, "phase": "calibration",
                                      "phases": {"calibration": 4200, "quantize": 4200}}}
    other = {"by_model": {"small": {"evaluation": 1.0}}, "memory": {"small": {"peak_mb": 5000, "phase": "evaluation"}}}
    merged = merge_profiles([prof, other])
    assert merged["memory"] == {"big": {"peak_mb": 4200, "phase": "calibration",
                                        "phases": {"calibration": 4200, "quantize": 4200}},
                                "small": {"peak_mb": 5000, "phase": "evaluation"}}


def test_each_phase_keeps_its_own_high_water_nested_ones_included_and_merges_keep_the_highest(tmp_path):
    """resnest269 peaked in evaluation, but export and calibration held 7-8 GB too: which phase to
    make smaller needs each one's own high-water, not only the phase that set the process's peak."""
    from harness.phases import merge_profiles

    rss = iter([1000, 1200,  # starts: quantize, then calibration inside it
                5000,  # a sample while both run: the calibration pass's arrays
                1500,  # calibration ends (freed)
                1100,  # quantize ends
                2000, 2100])  # evaluation of another model: start, end
    log = PhaseLog(tmp_path / "phases.jsonl", peak_mb=lambda: 9000, rss_mb=lambda: next(rss), sampled=False)
    with log("quantize", "big"):
        with log("calibration"):
            log.sample()
    with log("evaluation", "small"):
        pass
    log.close()
    events, _ = read_events(tmp_path / "phases.jsonl")
    ends = {e["phase"]: e for e in events if e["ev"] == "end"}
    assert ends["calibration"]["high_mb"] == 5000 and ends["quantize"]["high_mb"] == 5000  # the child's, handed on
    assert ends["evaluation"]["high_mb"] == 2100
    assert "peak_mb" not in ends["evaluation"]  # the process's peak (9000 MB) was set before: not by it
    prof = profile(events)
    assert prof["memory"] == {"big": {"phases": {"quantize": 5000, "calibration": 5000}},
                              "small": {"phases": {"evaluation": 2100}}}
    from harness.report.html import phases_section

    page = phases_section({"phases": prof})
    assert 'title="high-water MB by phase: calibration 5000, quantize 5000"' in page
    later = {"by_model": {"big": {"calibration": 1.0}},
             "memory": {"big": {"peak_mb": 7000, "phase": "calibration", "phases": {"calibration": 7000}}}}
    merged = merge_profiles([prof, later])
    assert merged["memory"]["big"] == {"peak_mb": 7000, "phase": "calibration",
                                       "phases": {"calibration": 7000, "quantize": 5000}}


def test_the_sampler_sees_a_phase_that_holds_memory_below_the_process_peak(tmp_path):
    """The real sampler thread and /proc reader, in a fresh process: a second phase holding
    ~300 MB for half a second, after a first that took the process's peak ~800 MB higher, still
    has its own high-water (the process's peak could not tell it apart: it never rose)."""
    import subprocess
    import sys

    if phases.process_rss_mb() is None:
        pytest.skip("no /proc/self/statm (not Linux): phases record only the peaks they raise")
    # a child keeps its parent's peak across exec (Linux): the first phase goes 800 MB above it
    code = ("import json, time, numpy as np; from harness.phases import PhaseLog, process_peak_mb, process_rss_mb\n"
            "log = PhaseLog(); start = process_rss_mb(); over = process_peak_mb() - start + 800\n"
            "with log('export', 'big'):\n    a = np.ones(int(over * 2**20) // 8); del a\n"
            "with log('calibration', 'small'):\n    b = np.ones(300 * 2**20 // 8); time.sleep(0.5); del b\n"
            "print(json.dumps([start] + [e for e in log.events if e['ev'] == 'end']))")
    start, *events = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout)
    export, calibration = ({e["phase"]: e for e in events}[p] for p in ("export", "calibration"))
    assert "peak_mb" in export and "peak_mb" not in calibration
    held = calibration["high_mb"] - start  # over what the process held before both
    assert 250 <= held <= 400, (start, export, calibration)
    assert calibration["high_mb"] < export["peak_mb"]


def test_the_sampler_leaves_a_latency_measurement_alone():
    """Its reads would take a core from the timed threads: while a timing phase is open it sleeps."""
    log = PhaseLog(rss_mb=lambda: 100.0, sampled=False)
    with log("evaluation", "m"):
        assert not log.sampler_paused()
        with log("timing"):
            assert log.sampler_paused()
            with log("calibration"):  # the int8 file a latency check builds first: sampled
                assert not log.sampler_paused()
            assert log.sampler_paused()
    assert not log.sampler_paused()


def test_the_process_peak_reader_sees_an_allocation(tmp_path):
    """The real reader, in a fresh process (this one's peak may already be higher)."""
    import subprocess
    import sys

    code = ("import numpy as np; from harness.phases import process_peak_mb; a = process_peak_mb(); "
            "x = np.ones(int((a + 512) * 2**20 / 8)); b = process_peak_mb(); print(a, b)")
    before, after = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                              check=True).stdout.split())
    assert after - before >= 400  # more written than the imports' peak, +512 MB
