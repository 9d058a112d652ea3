"""Shared pieces of the harness's own tests (imported as ``from _kit import ...``, like _latency_sim)."""
from __future__ import annotations

from pathlib import Path

from harness.figures import validate
from harness.testing import Recorder


def recorder() -> Recorder:
    """The kit's ``record`` stand-in (harness.testing.Recorder: ``record(**figures)``, figures in
    ``record.figures``), checking every name against the figure contract (harness/figures.py)."""
    return Recorder(check=lambda figures: validate(figures, strict=True))


def count_calls(monkeypatch, owner, name: str) -> list:
    """Replace ``owner.name`` (for the test) by a wrapper that appends 1 to the returned list on
    each call and then calls the original: how many builds, sessions or reports a test caused."""
    calls: list = []
    real = getattr(owner, name)

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, counting)
    return calls


# a suite whose second test kills its own process (an OOM kill, a lost CI runner)
DIES = '''
import os, signal

def test_fast(model_card, record):
    record(answer=42)

def test_worker_dies(model_card, record):
    record(about_to_die=1)
    os.kill(os.getpid(), signal.SIGKILL)

def test_after(model_card, record):
    record(after=1)
'''


def suite_dir(tmp_path: Path, source: str) -> Path:
    """A folder ``mysuite`` holding one suite file with ``source``, for ``zooconform run --suites``."""
    d = tmp_path / "mysuite"
    d.mkdir()
    (d / "test_mine.py").write_text(source)
    return d
