"""Where a run's time goes: phases per model, logged as they happen.

Every expensive step of the lab and the checks runs inside ``lab.phase(name, model)``. A
phase's start and end are appended as JSON lines to ``<run folder>/phases.jsonl``; xdist
workers write into the controller's file (one ``write`` of one short line per event on an
``O_APPEND`` descriptor: lines never interleave). Two readers:

- the progress line: the controller tails the file and prints ``model · phase · elapsed`` for
  every phase that runs longer than ~5 s (issue 19: no silent 185 s reference build);
- the profile: at the end of the run, seconds per model and phase (self time: a nested phase's
  seconds are its own, not its parent's) go into results.json ``phases`` and the HTML report,
  with the suite's overhead ratio: the time of all tests over the time spent on the work under
  test (export, quantization and inference of the artifacts under test).
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# name -> (what it is, whether it is work on the artifacts under test). Work under test is what
# a deployer's own pipeline would also spend (export, quantization, running the files); the
# rest (references, floors, diagnoses) is the suite's overhead.
PHASES: dict[str, tuple[str, bool]] = {
    "reference build": ("the reference model: architecture and weights", False),
    "bn recalibration": ("the seeded reference's BatchNorm statistics on the calibration split", False),
    "reference logits": ("the reference model's fp32 outputs on the evaluation images", False),
    "images": ("decoding and preprocessing the evaluation / calibration images", False),
    "export": ("torch -> ONNX export of an artifact under test", True),
    "fp64 floor": ("the float64 twin's outputs: the numerical noise floor", False),
    "calibration": ("int8 calibration: activation ranges on the calibration images", True),
    "quantize": ("writing the int8 model (quantize_static)", True),
    "evaluation": ("running the artifacts under test on the evaluation images", True),
    "timing": ("latency measurement of the artifacts under test", True),
    "machine peak": ("the host's GEMM peaks (latency budgets are scaled by them)", False),
    "layer report": ("per-layer diagnosis of an int8 file", False),
    "divergence search": ("locating the first diverging layer of a failing export", False),
}
# the lab's memo kinds (Lab.memo) and artifact-cache kinds (ArtifactCache.entry) whose builds are
# timed as a phase: a miss is where the time goes, a hit costs nothing
MEMO_PHASES: dict[str, str] = {
    "references": "reference build",
    "export.fusion_variant": "reference build",
    "reference_logits": "reference logits",
    "inputs": "images",
    "quant.fp32_run": "evaluation",
    "quant.int8_run": "evaluation",
    "accuracy.evaluation": "evaluation",
    "reparam.study": "evaluation",
    "quant.layer_report": "layer report",
}
CACHE_PHASES: dict[str, str] = {
    "reference": "bn recalibration",
    "onnx": "export",
    "fp16": "export",
    "int8-pre": "quantize",
    "int8": "quantize",
    "int8-ranges": "calibration",
    "fp64-floor": "fp64 floor",
    "reference-logits": "reference logits",
    "eval-logits": "evaluation",
}
ESSENTIAL = frozenset(name for name, (_, essential) in PHASES.items() if essential)
PROGRESS_AFTER_S = 5.0  # a phase shorter than this is not announced
PROGRESS_EVERY_S = 30.0  # a running phase is re-announced this often


@dataclass
class _Frame:
    model: str | None
    children_s: float = 0.0  # seconds of the phases nested in this one: not its self time


def process_peak_mb() -> float | None:
    """This process's peak resident memory so far, in MB (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


@dataclass
class PhaseLog:
    """``with log("export", "resnest50"): ...``. ``sink``: the JSON-lines file (None: in memory only)."""

    sink: Path | None = None
    current_model: str | None = None  # the running test's model (set by the plugin): a phase's default
    events: list[dict[str, Any]] = field(default_factory=list)  # this process's, for the profile without a sink
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _ids: Iterator[int] = field(default_factory=itertools.count, repr=False)
    # called as each phase starts: an xdist worker takes the CPUs another worker has left
    # (harness/plugin.py), so a long test's later phases run on them, not only the next test
    on_start: Callable[[], None] | None = field(default=None, repr=False)
    # the process's peak resident memory in MB (a test gives its own)
    peak_mb: Callable[[], float | None] = field(default=process_peak_mb, repr=False)
    _fd: int | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def __call__(self, phase: str, model: str | None = None) -> Iterator[None]:
        if phase not in PHASES:  # a contract like the figure names: the report knows every phase
            raise ValueError(f"unknown phase {phase!r}: add it to harness.phases.PHASES")
        stack: list[_Frame] = self._local.__dict__.setdefault("stack", [])
        parent = stack[-1] if stack else None
        ident = f"{os.getpid()}-{next(self._ids)}"
        if model is None:
            model = parent.model if parent is not None else self.current_model
        frame = _Frame(model)
        if self.on_start is not None:
            self.on_start()
        peak_before = self.peak_mb()
        start = time.monotonic()
        self._emit({"ev": "start", "id": ident, "phase": phase, "model": model, "t": time.time()})
        stack.append(frame)
        try:
            yield
        finally:
            stack.pop()
            seconds = time.monotonic() - start
            if parent is not None:
                parent.children_s += seconds
            end = {"ev": "end", "id": ident, "phase": phase, "model": model, "t": time.time(),
                   "s": round(seconds, 4), "self_s": round(max(0.0, seconds - frame.children_s), 4)}
            peak_after = self.peak_mb()
            if peak_after is not None and peak_before is not None and peak_after > peak_before:
                end["peak_mb"] = round(peak_after)  # this phase set the process's highest memory so far
            self._emit(end)

    def _emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)
            if self.sink is None:
                return
            try:
                if self._fd is None:
                    self.sink.parent.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(self.sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(self._fd, (json.dumps(event) + "\n").encode())
            except OSError:  # a progress line is not worth a failed check: keep the in-memory log
                self.sink = None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def in_phase(lab: Any, phase: str) -> AbstractContextManager[Any]:
    """``lab.phase(phase)`` for the running test's model, or nothing for a check called without a
    lab (the self-tests call checks with ``lab=None``). Checks wrap their runs of the artifacts
    under test in "evaluation" with it: left outside every phase, that time counted as overhead."""
    log = getattr(lab, "phase", None)
    return log(phase) if isinstance(log, PhaseLog) else nullcontext()


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The whole lines of ``path`` from byte ``offset`` on, and the offset after them."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line being written is read next time
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, offset + end


class Progress:
    """The live half: fed events, it says which phases to announce now."""

    def __init__(self, after: float | None = None, every: float | None = None):
        self.after = PROGRESS_AFTER_S if after is None else after
        self.every = PROGRESS_EVERY_S if every is None else every
        self.running: dict[str, dict[str, Any]] = {}  # id -> event + next announcement

    def feed(self, events: Iterable[dict[str, Any]], now: float) -> list[str]:
        lines = []
        for e in events:
            if e.get("ev") == "start":
                self.running[e["id"]] = {**e, "next": e["t"] + self.after, "announced": False}
            elif e.get("ev") == "end":
                started = self.running.pop(str(e.get("id")), None)
                # a phase nested in the same phase of the same model (a memo around its disk
                # cache entry) is one step to the reader: only the outermost one speaks
                if started is not None and self._outer_of(started) is None and (
                        started["announced"] or e.get("s", 0.0) >= self.after):
                    lines.append(f"{_label(e)} · done in {e.get('s', 0.0):.1f} s")
        for rec in self.running.values():
            if now >= rec["next"] and self._outer_of(rec) is None:
                lines.append(f"{_label(rec)} · {now - rec['t']:.0f} s ...")
                rec["next"] = now + self.every
                rec["announced"] = True
        return lines

    def _outer_of(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        """A running phase of the same model and name that started before ``rec`` (``running``
        keeps the order of the start events; an ended ``rec`` is no longer in it), if any."""
        for other in self.running.values():
            if other is rec:
                break
            if other.get("model") == rec.get("model") and other.get("phase") == rec.get("phase"):
                return other
        return None


def _label(e: dict[str, Any]) -> str:
    return f"zooconform: {e.get('model') or '(all models)'} · {e.get('phase')}"


def profile(events: Iterable[dict[str, Any]], busy_s: float | None = None) -> dict[str, Any]:
    """Self seconds per model and phase from the end events; ``busy_s``: the summed durations of
    every test (setup + call + teardown), for the overhead ratio and the unattributed rest.
    ``memory``: per model, the highest peak resident memory of its process that one of its phases
    set, and which phase (a model that never raised its process's peak, e.g. a small one after a
    large one on the same -j worker, has no entry): what a runner must hold for it."""
    by_model: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    memory: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("ev") != "end" or e.get("phase") not in PHASES:
            continue
        seconds = float(e.get("self_s", e.get("s", 0.0)))
        model = e.get("model") or "(all models)"
        # the highest process peak a model's phases set; an outer phase ends after the inner one
        # that set the same peak, so ">" keeps the inner (the one that did it)
        if e.get("peak_mb") is not None and float(e["peak_mb"]) > float(memory.get(model, {}).get("peak_mb", 0)):
            memory[model] = {"peak_mb": round(float(e["peak_mb"])), "phase": e["phase"]}
        by_model.setdefault(model, {})
        by_model[model][e["phase"]] = by_model[model].get(e["phase"], 0.0) + seconds
        totals[e["phase"]] = totals.get(e["phase"], 0.0) + seconds
    essential = sum(s for p, s in totals.items() if p in ESSENTIAL)
    accounted = sum(totals.values())
    out: dict[str, Any] = {
        "by_model": {m: {p: round(s, 2) for p, s in sorted(ph.items(), key=lambda kv: -kv[1])}
                     for m, ph in sorted(by_model.items())},
        "totals": {p: round(s, 2) for p, s in sorted(totals.items(), key=lambda kv: -kv[1])},
        "essential_s": round(essential, 2),
        "accounted_s": round(accounted, 2),
        "essential_phases": sorted(ESSENTIAL),
    }
    if memory:
        out["memory"] = dict(sorted(memory.items()))
    if busy_s is not None:
        out["tests_s"] = round(busy_s, 2)
        out["unattributed_s"] = round(max(0.0, busy_s - accounted), 2)
        # tests' time over the work under test: 1.0 means the suite adds nothing
        out["overhead_ratio"] = round(busy_s / essential, 3) if essential > 0 else None
    return out


def merge_profiles(profiles: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """One profile of several runs' (shards, or the phases of ``zooconform run -j``): seconds add up."""
    events: list[dict[str, Any]] = []
    tests_s, any_tests = 0.0, False
    for prof in profiles:
        for model, phases in ((prof or {}).get("by_model") or {}).items():
            events += [{"ev": "end", "phase": p, "model": model, "self_s": s} for p, s in phases.items()]
        for model, peak in ((prof or {}).get("memory") or {}).items():
            events.append({"ev": "end", "phase": peak["phase"], "model": model, "self_s": 0.0,
                           "peak_mb": peak["peak_mb"]})
        if (prof or {}).get("tests_s") is not None:
            tests_s, any_tests = tests_s + float(prof["tests_s"]), True  # type: ignore[index]
    return profile(events, busy_s=tests_s if any_tests else None)
