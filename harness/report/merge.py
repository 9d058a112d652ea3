"""Merge several ``results.json`` documents into one: the phases of one run (parallel, then
serial latency) or the shards of one run spread over machines.

A merged run is complete only if every part is complete and, for shards, every shard
``1..N`` of the same split is present exactly once.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..constants import parse_shard
from ..errors import InputError
from ..phases import merge_profiles
from .results import run_notes
from .views import OUTCOME_ORDER

# what makes two parts' machines different machines (the fingerprint's peaks are measured
# each run and differ a few per cent on one host)
IDENTITY = ("hostname", "platform", "cpu", "cores", "gpu", "host_class", "isa")

RESULTS = "results.json"


def load_results(path: Path | str) -> dict[str, Any]:
    """A ``results.json`` file, or a folder holding one; clear errors for anything else."""
    path = Path(path)
    file = path / RESULTS if path.is_dir() else path
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(file, "no results.json here",
                         fix="pass a run folder (reports/<tier>/<timestamp>) or its results.json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(file, f"not valid JSON ({e})", fix="the run that wrote it was killed mid-write? re-run it") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list):
        raise InputError(file, "not a zooconform results document (no 'tests' list)",
                         fix="pass a results.json written by zooconform")
    for i, t in enumerate(doc["tests"]):
        if not isinstance(t, dict) or not isinstance(t.get("nodeid"), str):
            raise InputError(file, f"tests[{i}] has no nodeid", fix="pass a results.json written by zooconform")
    return doc


def run_id_of(doc: dict[str, Any]) -> str:
    """The run's id: the run folder name where ``zooconform run`` set it, else a digest."""
    if doc.get("run_id"):
        return str(doc["run_id"])
    h = hashlib.sha1()
    for k in (doc.get("started_utc"), (doc.get("machine") or {}).get("hostname"), doc.get("wall_s")):
        h.update(str(k).encode())
    for t in doc.get("tests", []):
        h.update(t["nodeid"].encode())
    return f"{(doc.get('started_utc') or 'run').replace(':', '').replace('-', '')}-{h.hexdigest()[:8]}"


def _worse(a: str | None, b: str | None) -> bool:
    rank = {o: i for i, o in enumerate(OUTCOME_ORDER)}
    return rank.get(a or "error", len(rank)) > rank.get(b or "error", len(rank))


def _exitstatus(codes: list[int | None]) -> int:
    codes = [c for c in codes if c is not None]
    for severe in (2, 3, 4):  # interrupted, internal error, usage error
        if severe in codes:
            return severe
    if 1 in codes:
        return 1
    if codes and all(c == 5 for c in codes):
        return 5
    return 0


def _plan_problems(plans: dict[str, dict[str, Any] | None], ran: set[str], complete_split: bool) -> list[str]:
    """Shards split by durations (harness/shards.py) partition the models only if every shard
    planned from the same durations file and selection: each records its plan's digest. Shards
    whose digests differ (a durations file updated between two shards' checkouts, another
    --models) may have run a model twice or not at all."""
    if not any(plans.values()):  # round-robin shards of a zooconform that recorded no plan
        return []
    digests = {label: (p or {}).get("digest") or "none recorded" for label, p in plans.items()}
    if len(set(digests.values())) > 1:
        return ["shards were planned differently (another durations file or model selection): "
                + ", ".join(f"{label}: {d}" for label, d in digests.items())
                + "; a model may have run in two shards or in none (fix: run every shard from one commit and "
                  "the same --durations-file / --models)"]
    planned = set(next(p for p in plans.values() if p).get("models") or [])
    lost = sorted(planned - ran)
    if lost and complete_split:
        return [f"model(s) {', '.join(lost)} of the shard plan ran in no shard"]
    return []


def merge_documents(parts: list[tuple[str, dict[str, Any]]], sequential: bool = False) -> dict[str, Any]:
    """``parts``: (label, document). ``sequential``: the parts ran one after another (phases),
    so wall times add up; shards run side by side, so the longest counts."""
    if not parts:
        raise ValueError("nothing to merge")
    tests: dict[str, dict[str, Any]] = {}
    duplicates: list[str] = []
    reasons: list[str] = []
    models: list[str] = []
    problems: list[str] = []
    shards: dict[int, list[str]] = {}
    shard_total: set[int] = set()
    plans: dict[str, dict[str, Any] | None] = {}  # shard label -> its settings.shard_plan
    shard_models: set[str] = set()
    summary: list[dict[str, Any]] = []
    for label, doc in parts:
        settings = doc.get("settings") or {}
        for t in doc.get("tests", []):
            nid = t["nodeid"]
            if nid in tests:
                duplicates.append(nid)
                if not _worse(t.get("outcome"), tests[nid].get("outcome")):
                    continue
            tests[nid] = t
        for m in settings.get("models") or []:
            if m not in models:
                models.append(m)
        for p in settings.get("data_problems") or []:
            if p not in problems:
                problems.append(p)
        if not doc.get("complete"):
            own = doc.get("incomplete_reasons") or ["interrupted"]
            reasons.extend(f"{label}: {r}" for r in own)
        shard = settings.get("shard")
        if shard and not sequential:  # phases of one shard are one shard
            i, n = parse_shard(shard)
            shards.setdefault(i, []).append(label)
            shard_total.add(n)
            plans[label] = settings.get("shard_plan")
            shard_models.update(settings.get("models") or [])
        summary.append({"label": label, "source": doc.get("source"), "run_id": run_id_of(doc),
                        "started_utc": doc.get("started_utc"), "wall_s": doc.get("wall_s"),
                        "complete": bool(doc.get("complete")), "tests": len(doc.get("tests", [])),
                        "shard": shard, "exitstatus": doc.get("exitstatus"),
                        "machine": doc.get("machine")})
    if shard_total:
        if len(shard_total) > 1:
            reasons.append(f"shards of different splits merged: {sorted(shard_total)}")
        n = max(shard_total)
        missing = [i for i in range(1, n + 1) if i not in shards]
        if missing:
            reasons.append(f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing")
        twice = [i for i, labels in shards.items() if len(labels) > 1]
        if twice:
            reasons.append(f"shard(s) {twice} given more than once")
        reasons.extend(_plan_problems(plans, shard_models, complete_split=not missing and not twice))
    if duplicates and shard_total:
        reasons.append(f"{len(duplicates)} test(s) reported by more than one shard (the worst outcome kept)")
    first = parts[0][1]
    versions = [d.get("versions") for _, d in parts]
    counts: dict[str, int] = {}
    for t in tests.values():
        counts[t.get("outcome") or "unknown"] = counts.get(t.get("outcome") or "unknown", 0) + 1
    walls = [float(d.get("wall_s") or 0) for _, d in parts]
    settings = dict(first.get("settings") or {})
    if not sequential:
        settings.pop("shard", None)
    settings["models"] = models
    settings["data_problems"] = problems[:50]
    # the applied budget profile: the part whose latency tests chose one (phase 2 of run -j; a
    # shard that ran latency), not the first part, which may have judged no absolute budget
    from .verdict import applied_profile

    applied = applied_profile(list(tests.values()), settings)
    settings.update(profile=applied["name"], profile_how=applied["how"], profile_reason=applied["reason"])
    ids = hashlib.sha1("\n".join(sorted(s["run_id"] for s in summary)).encode()).hexdigest()[:8]
    started = min((str(d["started_utc"]) for _, d in parts if d.get("started_utc")), default=None)
    doc = {
        "schema": first.get("schema", "zooconform.results/1"),
        "run_id": f"{(started or 'merged').replace(':', '').replace('-', '')}-merged-{ids}",
        "complete": not reasons,
        "incomplete_reasons": reasons,
        "exitstatus": _exitstatus([d.get("exitstatus") for _, d in parts]),
        "started_utc": started,
        "wall_s": round(sum(walls) if sequential else max(walls), 2),
        # the part that measured the host's peaks (the latency phase of run -j): a run without
        # latency names the host by its ISA flags only
        "machine": next((d["machine"] for _, d in parts if (d.get("machine") or {}).get("fp32_peak_gflops")),
                        first.get("machine")),
        "versions": first.get("versions"),
        "settings": settings,
        "counts": counts,
        "tests": list(tests.values()),
        "phases": merge_profiles(d.get("phases") for _, d in parts),
        "parts": summary,
    }
    if any(v != versions[0] for v in versions):
        doc["versions_differ"] = True
    # the same host measures slightly different peaks each run: machines differ by who they are
    machines = {json.dumps({k: v for k, v in (d.get("machine") or {}).items() if k in IDENTITY}, sort_keys=True)
                for _, d in parts}
    if len(machines) > 1:
        doc["machines"] = [d.get("machine") for d in
                           {json.dumps({k: v for k, v in (d.get("machine") or {}).items() if k in IDENTITY},
                                       sort_keys=True): d for _, d in parts}.values()]
    classes = {label: (d.get("machine") or {}).get("host_class") for label, d in parts}
    known = {c for c in classes.values() if c}
    notes = run_notes(doc["tests"])
    if len(known) > 1:
        notes.append("parts ran on different host classes (" + ", ".join(f"{label}: {c or 'unknown'}"
                                                                          for label, c in classes.items())
                     + "): latency figures and int8 kernel results differ by host class; compare each part with "
                       "runs of its own class")
        doc["host_classes_differ"] = True
    doc["notes"] = notes
    if duplicates:
        doc["duplicates"] = duplicates[:100]
    return doc
