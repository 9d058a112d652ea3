"""The lab keeps references and input tensors within a byte budget (the full tier met 24 models
in one worker and was killed for memory), dropping the least recently used first."""
from __future__ import annotations

import torch

from harness.lab import BoundedCache, _module_bytes


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
