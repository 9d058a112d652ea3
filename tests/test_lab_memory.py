"""The lab keeps references and input tensors within a byte budget (the full tier met 24 models
in one worker and was killed for memory), dropping the least recently used first."""
from __future__ import annotations

import torch

from harness.cache import BoundedCache, Memo, approx_bytes, memoised
from harness.lab import _module_bytes


def test_least_recently_used_entries_go_first_once_over_budget():
    cache = BoundedCache(10, lambda v: v)
    cache["a"], cache["b"] = 4, 4
    assert cache["a"] == 4  # a use makes "a" the most recent
    cache["c"] = 4
    assert list(cache) == ["a", "c"]
    cache["huge"] = 100  # the newest entry stays whatever its size
    assert list(cache) == ["huge"]


def test_module_size_counts_parameters_and_buffers():
    bn = torch.nn.BatchNorm2d(8)  # weight, bias, running_mean, running_var (fp32) + num_batches_tracked (int64)
    assert _module_bytes(bn) == 4 * 8 * 4 + 8


def test_memo_builds_once_per_key_and_keeps_each_kind_within_its_budget():
    memo = Memo({"small": 10}, default_budget=1 << 20)
    calls = []

    def build(n):
        return lambda: (calls.append(n), bytes(n))[1]

    assert memo.get("small", "a", build(6)) == bytes(6)
    assert memo.get("small", "a", build(6)) == bytes(6) and calls == [6]  # memoised
    memo.get("small", "b", build(6))  # 12 bytes > 10: "a" goes
    assert memo.usage()["small"] == (1, 6)
    memo.get("other", "a", build(6))  # another kind, its own budget
    assert memo.usage()["other"] == (1, 6) and memo.usage()["small"] == (1, 6)


def test_a_failing_build_is_not_memoised_and_no_owner_builds_every_time():
    memo = Memo()
    try:
        memo.get("k", 1, lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    assert memo.get("k", 1, lambda: "ok") == "ok"
    calls = []
    for _ in range(2):
        memoised(None, "k", 1, lambda: calls.append(1))
    assert calls == [1, 1]


def test_the_lab_and_the_fake_lab_satisfy_the_check_protocol(tmp_path):
    from harness.lab import Lab, Settings
    from harness.testing import FakeLab, LabLike, Recorder

    assert isinstance(FakeLab(tmp_path), LabLike)
    assert isinstance(Lab(Settings(cache_dir=tmp_path / "cache", report_dir=tmp_path / "reports")), LabLike)
    rec = Recorder()
    rec(a=1)
    assert rec.figures == {"a": 1}


def test_approx_bytes_counts_the_buffers_inside_containers():
    import numpy as np

    t = torch.zeros(10, dtype=torch.float32)
    a = np.zeros(5, dtype=np.float64)
    assert approx_bytes(t) == 40 and approx_bytes(a) == 40
    assert approx_bytes((t, [a])) >= 80
    assert approx_bytes((t, [a, a])) == approx_bytes((t, [a]))  # the same array counted once


def test_moving_to_the_next_model_drops_the_memos_of_the_one_before(tmp_path):
    """A serial nightly shard held every model's memos (5.8-7 GB in each phase of shard 4);
    at each change of model only the new model's and those of no model stay."""
    from harness.lab import Lab, Settings

    lab = Lab(Settings(cache_dir=tmp_path / "cache", report_dir=tmp_path / "reports"))
    a, b = list(lab.zoo)[:2]
    lab.memo("references", a, lambda: torch.zeros(4))
    lab.memo("quant.fp32_run", ("digest", a, "images", True), lambda: "a's logits")
    lab.memo("export.header", {"model": b, "file": "x"}.__repr__(), lambda: "no model in a str key")
    lab.memo("host", ("peak", 2), lambda: 198.0)
    lab.keep_only_model(a)
    assert lab.memos.usage()["references"][0] == 1  # the same model: nothing goes
    lab.memo("references", b, lambda: torch.zeros(4))
    lab.keep_only_model(b)
    usage = lab.memos.usage()
    assert usage["references"][0] == 1 and usage["quant.fp32_run"][0] == 0
    assert usage["host"][0] == 1 and usage["export.header"][0] == 1
    calls = []
    lab.memo("references", a, lambda: calls.append(a) or torch.zeros(4))
    assert calls == [a]  # rebuilt (from the disk cache, in a real run) when a model comes back


def test_tests_run_model_by_model_in_the_suites_order():
    from types import SimpleNamespace

    from harness.plugin import in_model_order

    def item(name, model=None):  # the structured fields pytest_itemcollected gives every test
        return SimpleNamespace(name=name, user_properties=[("suite", "s"), ("model", model)] if model else [])

    items = [item("card[a]", "a"), item("card[b]", "b"), item("host"), item("export[a]", "a"),
             item("export[b]", "b"), item("quant[b]", "b")]
    assert [i.name for i in in_model_order(items)] == ["host", "card[a]", "export[a]", "card[b]", "export[b]",
                                                       "quant[b]"]
