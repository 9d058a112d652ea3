"""``reports/history.jsonl``: one JSON line per (run, model), appended, never rewritten.

Appends are safe under concurrent writers (two nightly jobs, a merge beside a run): each
append takes a file lock, writes every new line in one ``write`` on a descriptor opened with
``O_APPEND``, and fsyncs before releasing the lock. A line torn by a writer that died
mid-write is skipped on reading (and counted), and the next append starts on a fresh line,
so one bad line never costs the rest of the history.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from filelock import FileLock

SCHEMA = "zooconform.history/1"


@dataclass
class History:
    records: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)  # 1-based line numbers that did not parse

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
        except (ValueError, UnicodeDecodeError):
            out.bad_lines.append(i)
            continue
        if isinstance(rec, dict):
            out.records.append(rec)
        else:
            out.bad_lines.append(i)
    return out


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
    best = None
    for r in history.for_model(model):
        if r.get("run_id") == run_id:
            continue
        if started_utc and r.get("started_utc") and r["started_utc"] > started_utc:
            continue
        if best is None or (r.get("started_utc") or "") >= (best.get("started_utc") or ""):
            best = r
    return best
