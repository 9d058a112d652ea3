"""`-n N --dist loadgroup` keeps each model's tests on one worker (harness/plugin.py
pytest_xdist_make_scheduler): pytest 9's node ids drop the ``@group`` suffix xdist 3.8 groups by
(pytest-xdist#1386), and without the plugin's scheduler every worker rebuilt every model."""
from __future__ import annotations

import json


def test_each_models_tests_run_on_one_worker(pytester, monkeypatch):
    out = pytester.path / "where"
    out.mkdir()
    monkeypatch.setenv("ZOOCONFORM_TEST_WHERE", str(out))
    pytester.makepyfile(test_where='''
        import json, os

        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_where(model_card, i):
            out = os.path.join(os.environ["ZOOCONFORM_TEST_WHERE"], f"{model_card.id}-{i}.json")
            with open(out, "w") as f:
                json.dump([model_card.id, os.getpid()], f)
    ''')
    result = pytester.runpytest_subprocess("-p", "harness.plugin", "--models", "repvgg_a0,hrnet_w18_small_v1",
                                           "--no-results", "-n", "2", "--dist", "loadgroup")
    result.assert_outcomes(passed=8)
    pids: dict[str, set[int]] = {}
    for f in out.glob("*.json"):
        model, pid = json.loads(f.read_text())
        pids.setdefault(model, set()).add(pid)
    assert set(pids) == {"repvgg_a0", "hrnet_w18_small_v1"}
    assert all(len(p) == 1 for p in pids.values()), f"a model's tests ran on several workers: {pids}"


def test_the_most_expensive_model_is_handed_out_first(pytester, monkeypatch):
    # longest-processing-time first: resnest50 (the shipped durations' costliest smoke model)
    # starts at once on one worker while the two small models share the other; in collection
    # order it started only when a small model was done and then ran alone, one core idle
    out = pytester.path / "when"
    out.mkdir()
    monkeypatch.setenv("ZOOCONFORM_TEST_WHEN", str(out))
    pytester.makepyfile(test_when='''
        import json, os, time

        def test_when(model_card):
            out = os.path.join(os.environ["ZOOCONFORM_TEST_WHEN"], f"{model_card.id}.json")
            with open(out, "w") as f:
                json.dump([time.time(), os.getpid()], f)
            time.sleep(1.0)
    ''')
    result = pytester.runpytest_subprocess("-p", "harness.plugin", "--models", "hrnet_w18_small_v1,repvgg_a0,resnest50",
                                           "--no-results", "-n", "2", "--dist", "loadgroup")
    result.assert_outcomes(passed=3)
    started = {f.stem: json.loads(f.read_text()) for f in out.glob("*.json")}
    first_two = sorted(started, key=lambda m: started[m][0])[:2]
    assert "resnest50" in first_two, f"models in the order they started: {sorted(started, key=lambda m: started[m][0])}"
