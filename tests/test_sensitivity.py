"""What a pass rules out (issue 20, item 5): the sweep finds the smallest planted defect the real
check detects (latency ratios on simulated clocks, the preprocessing mean), and the report shows
fixtures/sensitivity.json's measurement, escaped, or one line saying how to measure it."""
from __future__ import annotations

import json

from test_report import smoke_doc

from harness import sensitivity as sens
from harness.compare import CheckFailure, Inconclusive
from harness.report import sensitivity as report_sens
from harness.report.nightly import write_report
from harness.zoo import load_zoo


def test_latency_sweep_finds_the_ratio_limit_on_simulated_clocks():
    trials = sens.sweep(sens.SLOWDOWN, sens.latency_trial)
    # user_over_own_max = 1.2: a 1.2x slower file passes, 1.3x fails; the sweep stops there
    assert [t.magnitude for t in trials] == [1.05, 1.1, 1.2, 1.3]
    assert sens.thresholds(trials) == (1.3, 1.2)
    assert trials[-1].outcome == "failed" and "but should be <= 1.2" in trials[-1].message


def test_preprocess_mean_sweep_finds_one_grey_level():
    entries = sens.preprocess_sensitivity(None, load_zoo()["repvgg_a0"], "zooconform sensitivity")
    mean, bgr = entries
    # one grey level of mean lands just over the 1-grey-level tolerance in float32: detected
    assert (mean["smallest_detected"], mean["not_detected_below"]) == (1.0, 0.5)
    assert [t["outcome"] for t in mean["trials"]] == ["passed", "passed", "failed"]
    assert bgr["smallest_detected"] is True and bgr["command"] == "zooconform sensitivity"


def test_sweep_stops_at_the_first_detection_and_an_inconclusive_is_not_one():
    seen = []

    def attempt(m):
        seen.append(m)
        if m == 2:
            raise Inconclusive("contention: cannot say", {}, failing=False)
        if m >= 3:
            raise CheckFailure("x = 3, but should be <= 2")

    trials = sens.sweep([1, 2, 3, 4], attempt)
    assert seen == [1, 2, 3] and [t.outcome for t in trials] == ["passed", "inconclusive", "failed"]
    assert sens.thresholds(trials) == (3, 1)
    assert sens.thresholds(sens.sweep([1, 2], lambda m: None)) == (None, 2)


DOC = {
    "export": {"defect": "one conv channel <script>alert(1)</script> scaled", "unit": "s (relative scale)",
               "smallest_detected": 0.01, "not_detected_below": 0.001, "model": "repvgg_a0",
               "measured_utc": "2026-12-01T19:00:00Z", "command": "zooconform sensitivity --models repvgg_a0",
               "more": [{"defect": "BN eps | dropped", "unit": "yes/no", "smallest_detected": True,
                         "not_detected_below": None, "model": "repvgg_a0", "measured_utc": "2026-12-01T19:00:00Z",
                         "command": "zooconform sensitivity --models repvgg_a0"}]},
}


def test_report_renders_the_section_from_a_given_document_escaped(tmp_path):
    path = tmp_path / "sensitivity.json"
    path.write_text(json.dumps(DOC))
    w = write_report(smoke_doc(), tmp_path / "run", sensitivity=path)
    page, md = w.index.read_text(), w.summary.read_text()
    assert '<h2 id="sensitivity">What a pass rules out</h2>' in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<td>0.01 s (relative scale)</td><td>0.001</td>" in page and "<td>detected</td>" in page
    assert "zooconform sensitivity --models repvgg_a0" in page
    assert "## What a pass rules out" in md and "<script>" not in md and "BN eps \\| dropped" in md
    assert "| export | one conv channel &lt;script&gt;alert(1)&lt;/script&gt; scaled | 0.01 s (relative scale) | 0.001 |" in md
    assert "Measured by `zooconform sensitivity --models repvgg_a0`." in md


def test_a_missing_file_gives_the_hint_line(tmp_path):
    w = write_report(smoke_doc(), tmp_path / "run", sensitivity=tmp_path / "absent.json")
    page, md = w.index.read_text(), w.summary.read_text()
    assert "run `zooconform sensitivity` to measure it" in page
    assert "## What a pass rules out" in md and "run `zooconform sensitivity` to measure it" in md
    assert report_sens.load(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert report_sens.load(tmp_path / "bad.json") is None


def test_the_verb_writes_the_document_with_its_command(tmp_path, capsys):
    from harness.cli import main

    out = tmp_path / "sens.json"
    assert main(["sensitivity", "--families", "latency", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert list(doc) == ["latency"] and doc["latency"]["smallest_detected"] == 1.3
    assert doc["latency"]["command"] == f"zooconform sensitivity --models repvgg_a0 --families latency --out {out}"
    assert main(["sensitivity", "--families", "nope", "--out", str(out)]) == 4
    assert "--families nope: unknown family" in capsys.readouterr().err
