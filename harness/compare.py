"""Comparison metrics and the assert helpers every suite uses.

One message shape everywhere (after array-api-tests)::

    <what> = <measured>, but should be <expected> [<where to look>]
    <what> = <measured>, but should be <expected> [<where>]; cause: <named cause>

so a red test says what was measured, what was expected, and where to look.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class CheckFailure(AssertionError):
    """A conformance check failed. ``figures`` carries what was measured."""

    # optional, set by a check: arrays for the repro bundle's inputs.npz (read with getattr)
    inputs: dict[str, Any]

    def __init__(self, message: str, figures: dict[str, Any] | None = None):
        super().__init__(message)
        self.figures = figures or {}


class Inconclusive(Exception):
    """The check could not judge (degenerate model, contended machine). Not a pass.

    ``failing=True``: the test fails (e.g. a model that cannot tell images apart);
    ``failing=False``: reported as its own outcome, "inconclusive", and not counted as a fail.
    """

    def __init__(self, reason: str, figures: dict[str, Any] | None = None, failing: bool = True):
        super().__init__(reason)
        self.figures = figures or {}
        self.failing = failing


def message(what: str, measured: Any, expected: Any, where: str, cause: str | None = None) -> str:
    msg = f"{what} = {measured}, but should be {expected} [{where}]"
    if cause:
        msg += f"; cause: {cause}"
    return msg


def check(ok: bool, what: str, measured: Any, expected: Any, where: str, cause: str | None = None,
          figures: dict[str, Any] | None = None) -> None:
    if not ok:
        raise CheckFailure(message(what, measured, expected, where, cause), figures)


# --- metrics ----------------------------------------------------------------------------

def rel_max_error(out: np.ndarray, ref: np.ndarray) -> float:
    """max|out - ref| / max|ref|: error relative to the output's scale.

    Elementwise relative error is useless for logits (many are near zero); this is scale
    aware and still sees a change in a single element.
    """
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    if not np.all(np.isfinite(out)):
        return float("inf")
    return float(np.max(np.abs(out - ref)) / scale) if scale > 0 else float(np.max(np.abs(out - ref)))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity per row (per image) of two (N, C) arrays."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(cosine_rows(a, b))) if len(a) else 1.0


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose arg-max class is the same."""
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1))) if len(a) else 1.0


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The seeds' definition: share of images whose label is among the k best-scored classes."""
    if len(labels) == 0:
        return float("nan")
    topk = np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(topk == np.asarray(labels)[:, None], axis=1)))


def distinct_top1(logits: np.ndarray) -> int:
    return int(len(np.unique(np.argmax(logits, axis=1)))) if len(logits) else 0


def binomial_halfwidth(p: float, n: int, z: float = 1.96) -> float:
    """Half-width of the Wilson score interval for a proportion measured on n samples."""
    if n <= 0:
        return 1.0
    denom = 1 + z * z / n
    return float(z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom)
