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

Memory: each end event carries the phase's high-water resident memory (``high_mb``: the most
the process held while the phase ran, nested phases included; sampled from /proc every
``RSS_SAMPLE_EVERY_S`` by one thread per process, and exact where the phase raised the process's
peak) and, where it did raise that peak, ``peak_mb``. The kernel's own per-process high-water
(VmHWM) could be reset per phase through /proc/self/clear_refs, but that would also reset what
``/usr/bin/time`` and a CI's rusage report as the run's maximum: sampling leaves them alone.
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
# how often the resident memory of a process with an open phase is read: the arrays that set a
# phase's high-water (activations of a batch, a calibration pass) live for seconds; a spike
# shorter than this can be missed unless it raised the process's peak (read exactly)
RSS_SAMPLE_EVERY_S = 0.02
# phases during which the sampler stays asleep: a latency measurement's threads own the cores,
# and its memory (a loaded session) is no news
UNSAMPLED_PHASES = frozenset({"timing", "machine peak"})


@dataclass(eq=False)  # open frames are told apart by identity
class _Frame:
    model: str | None
    phase: str = ""
    children_s: float = 0.0  # seconds of the phases nested in this one: not its self time
    high_mb: float | None = None  # the most resident memory seen while it runs (MB)


def process_peak_mb() -> float | None:
    """This process's peak resident memory so far, in MB (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_rss_mb() -> float | None:
    """This process's resident memory now, in MB (Linux's /proc/self/statm; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES / 2**20
    except (OSError, ValueError, IndexError):
        return None


class _Sampler:
    """One daemon thread per process: every ``RSS_SAMPLE_EVERY_S`` it folds the resident memory
    into each open phase of the logs that have one, and it sleeps on an event while none has
    (a run's many labs and fake labs share it: no thread per log, no wake-ups when idle)."""

    def __init__(self) -> None:
        self._logs: dict[int, PhaseLog] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def opened(self, log: PhaseLog) -> None:
        with self._lock:
            self._logs[id(log)] = log
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zooconform-rss-sampler", daemon=True)
                self._thread.start()

    def idle(self, log: PhaseLog) -> None:
        with self._lock:
            if not log.has_open_phases():  # another thread may have opened one since
                self._logs.pop(id(log), None)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(RSS_SAMPLE_EVERY_S)
            with self._lock:  # cleared under the lock that opened() sets it under: no lost wake-up
                logs = list(self._logs.values())
                if not logs:
                    self._wake.clear()
            for log in logs:
                if not log.sampler_paused():
                    log.sample()


_SAMPLER = _Sampler()


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
    # the process's resident memory now, in MB: each phase's high-water (a test gives its own)
    rss_mb: Callable[[], float | None] = field(default=process_rss_mb, repr=False)
    # whether the process's sampler thread reads ``rss_mb`` while a phase is open (a test that
    # feeds its own values calls ``sample`` itself); off, only a phase's start and end are read
    sampled: bool = True
    _open: list[_Frame] = field(default_factory=list, repr=False)  # every thread's open phases
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
        frame = _Frame(model, phase, high_mb=self.rss_mb())
        if self.on_start is not None:
            self.on_start()
        peak_before = self.peak_mb()
        start = time.monotonic()
        self._emit({"ev": "start", "id": ident, "phase": phase, "model": model, "t": time.time()})
        stack.append(frame)
        with self._lock:
            self._open.append(frame)
            first = len(self._open) == 1
        if first and self.sampled:
            _SAMPLER.opened(self)
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
            raised_to = (peak_after if peak_after is not None and peak_before is not None and peak_after > peak_before
                         else None)
            self._close(frame, parent, raised_to)
            if raised_to is not None:
                end["peak_mb"] = round(raised_to)  # this phase set the process's highest memory so far
            if frame.high_mb is not None:
                end["high_mb"] = round(frame.high_mb)
            self._emit(end)

    def has_open_phases(self) -> bool:
        return bool(self._open)

    def sampler_paused(self) -> bool:
        """Whether the phase opened last is one the sampler must not disturb (``UNSAMPLED_PHASES``):
        a latency check's call is "timing", but the builds it starts inside are sampled."""
        opened = list(self._open)
        return bool(opened) and opened[-1].phase in UNSAMPLED_PHASES

    def sample(self) -> None:
        """Fold the resident memory now into every open phase's high-water (the sampler's step)."""
        rss = self.rss_mb()
        if rss is None:
            return
        with self._lock:
            for frame in self._open:
                frame.high_mb = rss if frame.high_mb is None else max(frame.high_mb, rss)

    def _close(self, frame: _Frame, parent: _Frame | None, peak: float | None) -> None:
        """The frame's last reading (now; the process's peak if the phase raised it: that peak
        was reached while it ran), handed on to the phase it is nested in."""
        self.sample()
        with self._lock:
            self._open.remove(frame)
            empty = not self._open
            readings = [v for v in (frame.high_mb, peak) if v is not None]
            frame.high_mb = max(readings) if readings else None
            if parent is not None and frame.high_mb is not None:
                parent.high_mb = frame.high_mb if parent.high_mb is None else max(parent.high_mb, frame.high_mb)
        if empty and self.sampled:
            _SAMPLER.idle(self)

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
    set and which phase (``peak_mb``, ``phase``: absent for a model that never raised its process's
    peak, e.g. a small one after a large one on the same -j worker), and ``phases``: each phase's
    high-water, the most the process held while that phase ran for the model (nested phases
    included): what a runner must hold for it, and which phase to make smaller."""
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
            memory.setdefault(model, {}).update(peak_mb=round(float(e["peak_mb"])), phase=e["phase"])
        if e.get("high_mb") is not None:
            highs = memory.setdefault(model, {}).setdefault("phases", {})
            highs[e["phase"]] = max(highs.get(e["phase"], 0), round(float(e["high_mb"])))
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
    for entry in memory.values():
        if "phases" in entry:  # highest first, like the totals
            entry["phases"] = dict(sorted(entry["phases"].items(), key=lambda kv: (-kv[1], kv[0])))
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
            if peak.get("peak_mb") is not None:
                events.append({"ev": "end", "phase": peak["phase"], "model": model, "self_s": 0.0,
                               "peak_mb": peak["peak_mb"]})
            events += [{"ev": "end", "phase": p, "model": model, "self_s": 0.0, "high_mb": mb}
                       for p, mb in (peak.get("phases") or {}).items()]
        if (prof or {}).get("tests_s") is not None:
            tests_s, any_tests = tests_s + float(prof["tests_s"]), True  # type: ignore[index]
    return profile(events, busy_s=tests_s if any_tests else None)
