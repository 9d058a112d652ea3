"""Runtimes suite: the same file gives the same logits on every ``--runtime``, and each runtime
gives the same logits run after run (harness/export/crossruntime.py).

Per model: the first ``--runtime`` against each other one on the embedded images, within the
export tolerance (k x the measured noise floor of the arithmetic the runtimes report); the
runtime that departs is named, with the first diverging layer where intermediates can be read.
Per model and runtime: the determinism gate (two fresh sessions, one session twice, 1 vs N
threads), its own finding before any accuracy verdict. Marked ``export`` too, so that
``-m export`` runs them with the numerics they underpin.
"""
from __future__ import annotations

import pytest

from harness.export import crossruntime as rtchecks

pytestmark = pytest.mark.export


def test_runtime_is_deterministic(model_card, lab, record, runtime):
    rtchecks.check_deterministic(model_card, lab, record, runtime)


def test_runtimes_agree(model_card, lab, record, runtime_pair):
    a, b = runtime_pair
    rtchecks.check_runtimes_agree(model_card, lab, record, a, b)
