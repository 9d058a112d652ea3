"""``np.histogram`` on equal bins, count for count, in one compiled pass over the data.

Calibration's histogram methods (Percentile, Entropy) spend ~70% of their time in
``np.histogram``: every calibrated tensor of every image, once per method (resnest50, 20
images: 10.8 of 15.2 s, cProfile). numpy's equal-bin path makes ~15 passes over each 64k block
(range mask, subtract, divide, multiply, cast, two edge gathers and corrections, bincount).
``histogram`` does the same arithmetic per element in one numba-compiled loop:

- the same float32 operations in the same order (per element; the elements are counted into
  four interleaved histograms, whose sum is the count): ``((x - first) / (last - first)) * n``,
  truncated, then numpy's corrections against the same ``linspace`` edges (a value within
  rounding of an edge lands where numpy puts it). numba compiles without fast-math, so no
  operation is fused or reordered;
- so the counts are numpy's, value for value (tests/test_quant_histogram.py compares them on
  values placed on and beside every edge, and the int8 files byte for byte with quantize_static's).

It takes over only what it reproduces exactly: 1-d float32 data, a range of two float32
values (the 0-d arrays and scalars ORT passes), an integer bin count, no weights. Anything
else, and a machine without numba, goes to ``np.histogram`` itself.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_KERNEL: list[Any] = []  # the compiled kernel, or None where numba is missing (set on first use)


def _compile() -> Any:
    try:
        import numba
    except ImportError:  # an install without numba: numpy's own histogram, same counts
        return None

    # cache=True: the machine code is kept beside this file (or in NUMBA_CACHE_DIR), so an
    # xdist worker loads it instead of compiling (~0.5 s) again
    @numba.njit(cache=True, nogil=True, fastmath=False)
    def counts(data, first, last, edges, n_bins):  # pragma: no cover - compiled
        # Two loops per chunk of 1024: the index arithmetic on its own, with nothing to count in
        # it (the same IEEE float32 operations per element, so the same values: no fast-math), then
        # numpy's corrections and the counting. The first loop reads the chunk through a slice of
        # its own: indexed from the whole array, LLVM did not vectorize it (8.0 -> 1.1 ms for 8M
        # values; a division per element). The counts go to four interleaved histograms, summed
        # at the end: a ReLU's zeros all land in one bin, and one histogram made each increment
        # wait for the previous one's store. Measured (8M float32 values, x86-avx512-vnni, 2
        # cores): 20.5-22.5 ms -> 10.5-13.8 ms per histogram, 2048 or 128 bins (np.histogram:
        # 46-47 ms). Moving the edge corrections into the vectorized loop (gathers) was slower
        # (16.3-17.3 ms).
        lanes = 4
        width = n_bins
        hist = np.zeros(lanes * width, dtype=np.intp)
        denom = np.float32(last - first)
        scale = np.float32(n_bins)
        chunk = 1024
        index = np.empty(chunk, dtype=np.int32)
        n = data.size
        top = np.int32(n_bins - 1)
        for start in range(0, n, chunk):
            block = data[start:start + chunk]
            m = block.size
            for j in range(m):  # outside the range, or NaN: -1, never counted
                x = block[j]
                inside = (x >= first) & (x <= last)
                f = np.float32(np.float32(x - first) / denom) * scale if inside else np.float32(-1.0)
                # x == last gives n_bins: numpy's last bin is closed
                index[j] = min(np.int32(f), top) if inside else np.int32(-1)
            for j in range(m):
                i = index[j]
                if i < 0:
                    continue
                x = block[j]
                # numpy's two corrections; the second cannot apply after the first (x < edges[i])
                if x < edges[i]:
                    i -= 1
                elif i != top and x >= edges[i + 1]:
                    i += 1
                hist[(j & 3) * width + i] += 1
        out = hist[:width].copy()
        for k in range(1, lanes):
            out += hist[k * width:(k + 1) * width]
        return out

    return counts


def _kernel() -> Any:
    if not _KERNEL:
        _KERNEL.append(_compile())
    return _KERNEL[0]


def _float32_value(v: Any) -> bool:
    return isinstance(v, np.ndarray | np.generic) and v.dtype == np.float32 and np.ndim(v) == 0


def histogram(a: np.ndarray, bins: int, range: tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:  # noqa: A002
    """``np.histogram(a, bins, range=range)``: the same counts and edges (see the module)."""
    if isinstance(a, np.ndarray) and a.ndim == 1:
        return histogram_of_parts([a], bins, range)
    return np.histogram(a, bins, range=range)


def histogram_of_parts(parts: Sequence[np.ndarray], bins: int,
                       range: tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:  # noqa: A002
    """``np.histogram(np.concatenate(parts), bins, range=range)`` without joining the parts:
    each value is counted on its own, so the parts' counts add up to the joined array's. A
    calibration pass's tensor comes as one array per batch; joining them copied every value
    once more before counting (1 ns a value, as much as the index arithmetic). Where the
    kernel does not reproduce numpy, numpy's own call on the joined parts."""
    kernel = _kernel()
    # only 1-d float32 parts join to the array the kernel reproduces; empty ones add nothing
    same_kind = all(isinstance(p, np.ndarray) and p.ndim == 1 and p.dtype == np.float32 for p in parts)
    filled = [p for p in parts if p.size > 0] if same_kind else []
    exact = (kernel is not None and bool(filled) and isinstance(bins, int | np.integer) and len(range) == 2
             and all(_float32_value(v) for v in range))
    if not exact:
        return np.histogram(np.concatenate(parts), bins, range=range)
    # numpy's own edges (its range checks, the widening of an empty range, linspace in float32)
    edges = np.histogram_bin_edges(filled[0][:0], int(bins), range=range)
    if edges.dtype != np.float32:
        return np.histogram(np.concatenate(parts), bins, range=range)
    # the first and last edge are the range as numpy uses it (linspace keeps both ends exactly)
    hist = kernel(filled[0], edges[0], edges[-1], edges, int(bins))
    for p in filled[1:]:
        hist += kernel(p, edges[0], edges[-1], edges, int(bins))
    return hist, edges
