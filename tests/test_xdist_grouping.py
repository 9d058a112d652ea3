"""`-n N --dist loadgroup` keeps each model's tests on one worker (harness/plugin.py
pytest_xdist_make_scheduler): pytest 9's node ids drop the ``@group`` suffix xdist 3.8 groups by
(pytest-xdist#1386), and without the plugin's scheduler every worker rebuilt every model."""
from __future__ import annotations

import json


def test_each_models_tests_run_on_one_worker_and_the_most_expensive_model_starts_first(pytester, monkeypatch):
    """One nested ``-n 2`` run (each costs ~20 s of imports on 2 cores), two properties:
    every test of a model runs in one worker process; longest-processing-time first: resnest50
    (the shipped durations' costliest smoke model) starts at once on one worker while the two
    small models share the other (in collection order it started only when a small model was
    done and then ran alone, one core idle)."""
    out = pytester.path / "where"
    out.mkdir()
    monkeypatch.setenv("ZOOCONFORM_TEST_WHERE", str(out))
    pytester.makepyfile(test_where='''
        import json, os, time

        import pytest

        @pytest.mark.parametrize("i", range(3))
        def test_where(model_card, i):
            out = os.path.join(os.environ["ZOOCONFORM_TEST_WHERE"], f"{model_card.id}-{i}.json")
            with open(out, "w") as f:
                json.dump([model_card.id, os.getpid(), time.time()], f)
            time.sleep(0.4)
    ''')
    result = pytester.runpytest_subprocess("-p", "harness.plugin", "--models", "hrnet_w18_small_v1,repvgg_a0,resnest50",
                                           "--no-results", "-n", "2", "--dist", "loadgroup")
    result.assert_outcomes(passed=9)
    pids: dict[str, set[int]] = {}
    started: dict[str, float] = {}
    for f in out.glob("*.json"):
        model, pid, when = json.loads(f.read_text())
        pids.setdefault(model, set()).add(pid)
        started[model] = min(started.get(model, when), when)
    assert set(pids) == {"repvgg_a0", "hrnet_w18_small_v1", "resnest50"}
    assert all(len(p) == 1 for p in pids.values()), f"a model's tests ran on several workers: {pids}"
    order = sorted(started, key=started.__getitem__)
    assert "resnest50" in order[:2], f"models in the order they started: {order}"
