"""``reports/history.jsonl``: one JSON line per (run, model), appended, never rewritten.

Appends are safe under concurrent writers (two nightly jobs, a merge beside a run): each
append takes a file lock, writes every new line in one ``write`` on a descriptor opened with
``O_APPEND``, and fsyncs before releasing the lock. A line torn by a writer that died
mid-write is skipped on reading (and counted), and the next append starts on a fresh line,
so one bad line never costs the rest of the history. A line that parses but is not one of
ours (another schema, a field of the wrong type: ``"started_utc": 1``) is skipped and counted
the same way, with the reason, so that no reader (regressions, trends, dedup) meets it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

SCHEMA = "zooconform.history/1"


@dataclass
class History:
    records: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)  # 1-based line numbers skipped (unreadable or foreign)
    bad_reasons: dict[int, str] = field(default_factory=dict)  # line number -> why it was skipped

    def bad_note(self, name: str = "history.jsonl", limit: int = 3) -> str:
        """One line naming the skipped lines, e.g. ``history.jsonl: 2 line(s) skipped (line 3:
        started_utc is int, expected a string; ...)``; empty when none was skipped."""
        if not self.bad_lines:
            return ""
        shown = "; ".join(f"line {n}: {self.bad_reasons.get(n, 'unreadable')}" for n in self.bad_lines[:limit])
        more = f"; and {len(self.bad_lines) - limit} more" if len(self.bad_lines) > limit else ""
        return f"{name}: {len(self.bad_lines)} line(s) skipped ({shown}{more}); the rest of the history is used"

    def runs(self) -> list[str]:
        """Run ids in the order they were first appended."""
        seen: dict[str, None] = {}
        for r in self.records:
            seen.setdefault(r.get("run_id", ""), None)
        return list(seen)

    def for_model(self, model: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("model") == model]


def lock_for(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=120)


def read_history(path: Path | str) -> History:
    path = Path(path)
    out = History()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return out
    for i, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            out.bad_lines.append(i)
            out.bad_reasons[i] = "not valid JSON (torn or edited by hand?)"
            continue
        why = record_problem(rec)
        if why is None:
            out.records.append(rec)
        else:
            out.bad_lines.append(i)
            out.bad_reasons[i] = why
    return out


_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    # what the readers of a record (regress.py, plots.py, nightly.py) touch, and its type
    "started_utc": (str,), "complete": (bool,), "tier": (str,), "family": (str,), "verdict": (str,),
    "counts": (dict,), "machine": (dict,), "threads": (int,), "profile": (str,), "data": (str,),
    "versions": (dict,), "metrics": (dict,), "failing": (list,), "passed_digests": (list,),
}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def record_problem(rec: Any) -> str | None:
    """Why ``rec`` is not a history record this harness can read (None: it is one)."""
    if not isinstance(rec, dict):
        return f"a JSON {_type_name(rec)}, not an object"
    schema = rec.get("schema")
    if schema is not None and not (isinstance(schema, str) and schema.startswith("zooconform.history/")):
        return f"schema {schema!r} is not {SCHEMA!r} (a foreign line)"
    for key in ("model", "run_id"):
        v = rec.get(key)
        if not isinstance(v, str) or not v:
            return (f"no {key!r} (not a zooconform history line)" if key not in rec
                    else f"{key} is {_type_name(v)} {v!r:.40}, expected a non-empty string")
    for key, types in _OPTIONAL_TYPES.items():
        v = rec.get(key)
        if v is not None and (not isinstance(v, types) or (types == (int,) and isinstance(v, bool))):
            expected = {str: "a string", bool: "true or false", dict: "an object", int: "an integer",
                        list: "a list"}[types[0]]
            return f"{key} is {_type_name(v)}, expected {expected}"
    for key in ("failing", "passed_digests"):
        if any(not isinstance(x, str) for x in rec.get(key) or []):
            return f"{key} holds a non-string"
    for name, m in (rec.get("metrics") or {}).items():
        if not isinstance(m, dict):
            return f"metrics.{name} is {_type_name(m)}, expected an object"
        for k in ("value", "n", "cv", "floor"):
            v = m.get(k)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                return f"metrics.{name}.{k} is {_type_name(v)}, expected a number"
    machine = rec.get("machine") or {}
    if any(isinstance(v, (dict, list)) for v in machine.values()):
        return "machine holds a nested value"
    return None


def append_records(path: Path | str, records: Iterable[dict[str, Any]], skip_known_runs: bool = True) -> int:
    """Append ``records`` (one line each); returns how many were written.

    With ``skip_known_runs`` a (run_id, model) pair already in the file is not written again,
    so re-rendering or re-merging the same results never duplicates history.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    if not records:
        return 0
    with lock_for(path):
        if skip_known_runs:
            known = {(r.get("run_id"), r.get("model")) for r in read_history(path).records}
            records = [r for r in records if (r.get("run_id"), r.get("model")) not in known]
            if not records:
                return 0
        payload = "".join(json.dumps(r, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"
                          for r in records).encode("ascii")
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if not created and _ends_without_newline(fd):
                payload = b"\n" + payload  # a writer died mid-line: start ours on a fresh line
            view = memoryview(payload)
            while view:  # one write() for the whole payload; the loop only covers a short write
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(path.parent)
    return len(records)


def _ends_without_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    if size == 0:
        return False
    return os.pread(fd, 1, size - 1) != b"\n"


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def previous_record(history: History, model: str, run_id: str, started_utc: str | None) -> dict[str, Any] | None:
    """The latest record of ``model`` from another run that started before this one."""
    best: dict[str, Any] | None = None
    for r in history.for_model(model):
        if r.get("run_id") == run_id:
            continue
        raw = r.get("started_utc")
        stamp = raw if isinstance(raw, str) else ""
        if started_utc and stamp and stamp > started_utc:
            continue
        best_raw = best.get("started_utc") if best is not None else None
        best_stamp = best_raw if isinstance(best_raw, str) else ""
        if best is None or stamp >= best_stamp:
            best = r
    return best
