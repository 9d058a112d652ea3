"""The compiled equal-bin histogram of calibration (harness/quant/histogram.py) against
``np.histogram`` itself: count for count where it takes over, numpy's own call where not."""
from __future__ import annotations

import numpy as np
import pytest

from harness.quant import histogram as hg

pytestmark = pytest.mark.skipif(hg._kernel() is None, reason="numba is not installed: np.histogram is used as is")


def _edge_heavy(rng: np.random.Generator, n_bins: int, threshold: np.ndarray) -> np.ndarray:
    """Activations plus every edge of the range, the float32 values on either side of each, NaN,
    infinities, values outside the range and exact zeros (a ReLU's output): where numpy's
    index arithmetic needs its corrections."""
    edges = np.linspace(-threshold, threshold, n_bins + 1, dtype=np.float32)
    beside = np.concatenate([edges, np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(-np.inf))])
    scale = float(threshold) * rng.uniform(0.3, 1.3)
    values = (rng.standard_normal(int(rng.integers(1, 4000))) * scale).astype(np.float32)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, 0.0, -0.0, 2 * threshold, -2 * threshold], dtype=np.float32)
    data = np.concatenate([values, beside.astype(np.float32), special]).astype(np.float32)
    rng.shuffle(data)
    return data


@pytest.mark.parametrize("n_bins", [1, 7, 128, 131, 2048, 2050])
def test_counts_and_edges_are_numpy_s_on_and_beside_every_edge(n_bins):
    rng = np.random.default_rng(n_bins)
    for _ in range(40):
        threshold = np.array(rng.uniform(1e-3, 50.0), dtype=np.float32)  # ORT: a 0-d float32 array
        data = _edge_heavy(rng, n_bins, threshold)
        want, want_edges = np.histogram(data, n_bins, range=(-threshold, threshold))
        got, got_edges = hg.histogram(data, n_bins, (-threshold, threshold))
        assert got.dtype == want.dtype and got_edges.dtype == want_edges.dtype
        assert np.array_equal(got_edges, want_edges)
        differ = np.flatnonzero(got != want)
        assert differ.size == 0, (f"{n_bins} bins over +-{threshold}: counts differ from np.histogram's in bins "
                                  f"{differ[:5].tolist()} (got {got[differ[:5]].tolist()}, numpy {want[differ[:5]].tolist()})")


def test_a_grown_range_of_float32_scalars_and_an_empty_range_are_numpy_s():
    """ORT's merge passes np.float32 scalars (threshold + whole old strides), and a tensor that
    was all zeros has the range (-0, 0), which numpy widens by 0.5 each side."""
    rng = np.random.default_rng(1)
    old = np.array(1.7, dtype=np.float32)
    stride = 2 * old / 2048
    grown = 37 * stride + old
    assert isinstance(grown, np.float32)
    data = _edge_heavy(rng, 2048 + 74, grown)
    for lo_hi, bins in (((-grown, grown), 2048 + 74), ((-np.array(0, np.float32), np.array(0, np.float32)), 128)):
        want, want_edges = np.histogram(data, bins, range=lo_hi)
        got, got_edges = hg.histogram(data, bins, lo_hi)
        assert np.array_equal(got, want) and np.array_equal(got_edges, want_edges)


@pytest.mark.parametrize("case", ["float64 data", "python-float range", "float64 range", "2-d data", "empty data"])
def test_what_it_does_not_reproduce_goes_to_np_histogram(case, monkeypatch):
    """Other dtypes, Python floats (numpy promotes them differently), other shapes: numpy's own call."""
    data = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    lo, hi = -np.array(2, np.float32), np.array(2, np.float32)
    args = {"float64 data": (data.astype(np.float64), (lo, hi)), "python-float range": (data, (-2.0, 2.0)),
            "float64 range": (data, (np.float64(-2), np.float64(2))), "2-d data": (data.reshape(10, 100), (lo, hi)),
            "empty data": (data[:0], (lo, hi))}[case]
    calls = []
    real = np.histogram
    monkeypatch.setattr(hg.np, "histogram", lambda *a, **k: calls.append(1) or real(*a, **k))
    got, _ = hg.histogram(args[0], 64, args[1])
    assert calls, f"{case}: the compiled kernel took a case it does not reproduce exactly"
    assert np.array_equal(got, real(args[0], 64, range=args[1])[0])


def test_without_numba_numpy_counts(monkeypatch):
    monkeypatch.setattr(hg, "_KERNEL", [None])
    data = np.random.default_rng(3).standard_normal(500).astype(np.float32)
    t = np.array(1.5, np.float32)
    assert np.array_equal(hg.histogram(data, 128, (-t, t))[0], np.histogram(data, 128, range=(-t, t))[0])


def test_a_kernel_off_by_one_bin_would_be_seen(monkeypatch):
    """The comparison above can fail: a kernel that skips numpy's edge corrections (the cheap
    ``int((x - first) / width * n)`` alone) miscounts values beside the edges."""
    import numba

    @numba.njit(cache=False)
    def uncorrected(data, first, last, edges, n_bins):
        hist = np.zeros(n_bins, dtype=np.intp)
        for x in data:
            if x >= first and x <= last:
                hist[min(int((x - first) / (last - first) * n_bins), n_bins - 1)] += 1
        return hist

    monkeypatch.setattr(hg, "_KERNEL", [uncorrected])
    rng = np.random.default_rng(4)
    threshold = np.array(3.3, np.float32)
    data = _edge_heavy(rng, 2048, threshold)
    assert not np.array_equal(hg.histogram(data, 2048, (-threshold, threshold))[0],
                              np.histogram(data, 2048, range=(-threshold, threshold))[0])


@pytest.mark.parametrize("n_bins", [128, 2048])
def test_parts_count_as_the_joined_array_and_odd_parts_go_to_numpy(n_bins, monkeypatch):
    """A pass's batches are counted where they lie: the sum is np.histogram of the joined
    values, with empty batches among them; parts the kernel does not take (float64) join first."""
    rng = np.random.default_rng(n_bins)
    threshold = np.array(2.5, np.float32)
    parts = [_edge_heavy(rng, n_bins, threshold) for _ in range(3)] + [np.empty(0, np.float32)]
    want, want_edges = np.histogram(np.concatenate(parts), n_bins, range=(-threshold, threshold))
    got, got_edges = hg.histogram_of_parts(parts, n_bins, (-threshold, threshold))
    assert np.array_equal(got_edges, want_edges)
    assert np.array_equal(got, want), f"counts differ in bins {np.flatnonzero(got != want)[:5].tolist()}"
    calls = []
    real = np.histogram
    monkeypatch.setattr(hg.np, "histogram", lambda *a, **k: calls.append(1) or real(*a, **k))
    mixed = [parts[0], parts[1].astype(np.float64)]
    got, _ = hg.histogram_of_parts(mixed, n_bins, (-threshold, threshold))
    assert calls and np.array_equal(got, real(np.concatenate(mixed), n_bins, range=(-threshold, threshold))[0])
