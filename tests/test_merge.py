"""Merging results documents: phases of one run, shards of one run, and what makes a
merged run incomplete. Shard assignment by model."""
from __future__ import annotations

import json

import pytest

from harness.errors import InputError
from harness.plugin import shard_cards
from harness.report.merge import load_results, merge_documents, run_id_of
from harness.zoo import load_zoo


def doc(tests, shard=None, complete=True, wall=10.0, started="2026-11-24T01:00:00Z", exitstatus=0, **extra):
    d = {"schema": "zooconform.results/1", "complete": complete, "exitstatus": exitstatus, "started_utc": started,
         "wall_s": wall, "machine": {"hostname": "vm"}, "versions": {"torch": "2.14.1"},
         "settings": {"tier": "full", "models": sorted({t.get("model") for t in tests if t.get("model")}),
                      "shard": shard},
         "counts": {}, "tests": tests}
    d.update(extra)
    return d


def t(nodeid, outcome="passed", model="m1", **figs):
    return {"nodeid": nodeid, "outcome": outcome, "duration_s": 0.1, "figures": figs, "model": model}


def test_shards_merge_into_one_complete_run():
    a = doc([t("s::x[m1]", fig=1)], shard="1/2", wall=30)
    b = doc([t("s::x[m2]", "failed", "m2", fig=2)], shard="2/2", wall=50, exitstatus=1)
    m = merge_documents([("a", a), ("b", b)])
    assert m["complete"] is True and m["incomplete_reasons"] == []
    assert [x["nodeid"] for x in m["tests"]] == ["s::x[m1]", "s::x[m2]"]
    assert m["counts"] == {"passed": 1, "failed": 1} and m["exitstatus"] == 1
    assert m["wall_s"] == 50  # side by side: the longest shard
    assert m["settings"]["models"] == ["m1", "m2"] and "shard" not in m["settings"]
    assert [p["shard"] for p in m["parts"]] == ["1/2", "2/2"]


def test_a_missing_or_repeated_shard_makes_the_merge_incomplete():
    a = doc([t("s::x[m1]")], shard="1/3")
    c = doc([t("s::x[m3]", model="m3")], shard="3/3")
    m = merge_documents([("a", a), ("c", c)])
    assert m["complete"] is False and m["incomplete_reasons"] == ["shard(s) 2/3 missing"]
    m = merge_documents([("a", a), ("a again", a)])
    assert "shard(s) [1] given more than once" in m["incomplete_reasons"]
    assert any("reported by more than one shard" in r for r in m["incomplete_reasons"])


def test_an_incomplete_part_keeps_its_reasons():
    a = doc([t("s::x[m1]")], shard="1/2", complete=False, incomplete_reasons=["interrupted (Ctrl-C)"])
    b = doc([t("s::x[m2]", model="m2")], shard="2/2")
    m = merge_documents([("shard-a", a), ("shard-b", b)])
    assert m["complete"] is False and m["incomplete_reasons"] == ["shard-a: interrupted (Ctrl-C)"]


def test_a_test_in_two_parts_keeps_its_worst_outcome():
    a = doc([t("s::x[m1]", "passed", fig=1)])
    b = doc([t("s::x[m1]", "failed", fig=2)])
    for parts in ([("a", a), ("b", b)], [("b", b), ("a", a)]):
        m = merge_documents(parts)
        assert [(x["outcome"], x["figures"]) for x in m["tests"]] == [("failed", {"fig": 2})]
        assert m["duplicates"] == ["s::x[m1]"]


def test_phases_add_their_wall_times_and_keep_the_shard():
    p1 = doc([t("s::x[m1]")], shard="2/4", wall=100)
    p2 = doc([t("l::lat[m1]", fig=3.0)], shard="2/4", wall=40, started="2026-11-24T01:02:00Z")
    m = merge_documents([("parallel", p1), ("latency", p2)], sequential=True)
    assert m["complete"] is True and m["wall_s"] == 140 and m["settings"]["shard"] == "2/4"
    assert m["started_utc"] == "2026-11-24T01:00:00Z"


def test_the_merged_machine_is_the_part_that_measured_the_peaks():
    # phase 1 ran no latency check, so it names the host by its flags; phase 2 measured peaks
    flags = {"hostname": "vm", "host_class": "x86-avx2", "fp32_peak_gflops": None}
    peaks = {**flags, "fp32_peak_gflops": 126.0, "int8_peak_gops": 400.0}
    p1, p2 = doc([t("s::x[m1]")], machine=flags), doc([t("l::lat[m1]")], machine=peaks)
    assert merge_documents([("parallel", p1), ("latency", p2)], sequential=True)["machine"] == peaks
    assert merge_documents([("parallel", p1)], sequential=True)["machine"] == flags


def test_interrupted_beats_failed_in_the_exit_status():
    a = doc([t("s::x[m1]")], exitstatus=1)
    b = doc([t("s::x[m2]", model="m2")], exitstatus=2, complete=False)
    assert merge_documents([("a", a), ("b", b)])["exitstatus"] == 2


def test_merged_run_id_is_stable_so_history_is_not_duplicated():
    a, b = doc([t("s::x[m1]")], shard="1/2"), doc([t("s::x[m2]", model="m2")], shard="2/2")
    assert merge_documents([("a", a), ("b", b)])["run_id"] == merge_documents([("b", b), ("a", a)])["run_id"]
    assert run_id_of(a) == run_id_of(json.loads(json.dumps(a))) != run_id_of(b)


def test_differing_versions_or_machines_are_noted():
    a, b = doc([t("s::x[m1]")], shard="1/2"), doc([t("s::x[m2]", model="m2")], shard="2/2")
    b["versions"] = {"torch": "2.15.0"}
    b["machine"] = {"hostname": "other"}
    m = merge_documents([("a", a), ("b", b)])
    assert m["versions_differ"] is True and len(m["machines"]) == 2


@pytest.mark.parametrize("n", [1, 2, 3, 5, 24])
def test_shards_split_the_models_disjointly_whatever_their_order(n, tmp_path, monkeypatch):
    cards = list(load_zoo().values())
    shards = [shard_cards(cards, i, n) for i in range(1, n + 1)]
    ids = [c.id for s in shards for c in s]
    assert sorted(ids) == sorted(c.id for c in cards) and len(set(ids)) == len(ids)
    backwards = [shard_cards(cards[::-1], i, n) for i in range(1, n + 1)]
    assert [{c.id for c in s} for s in backwards] == [{c.id for c in s} for s in shards]
    # without recorded durations the split is round-robin: within one model of each other in count
    # (with them, shards are even in seconds, not in models: tests/test_shards.py)
    empty = tmp_path / "durations.json"
    empty.write_text("{}")
    monkeypatch.setenv("ZOOCONFORM_DURATIONS_FILE", str(empty))
    dealt = [shard_cards(cards, i, n) for i in range(1, n + 1)]
    assert max(map(len, dealt)) - min(map(len, dealt)) <= 1


def test_unreadable_results_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"results\.json: no results\.json here"):
        load_results(tmp_path)
    bad = tmp_path / "results.json"
    bad.write_text('{"tests": [')
    with pytest.raises(InputError, match=r"results\.json: not valid JSON"):
        load_results(tmp_path)
    bad.write_text('{"something": 1}')
    with pytest.raises(InputError, match="not a zooconform results document"):
        load_results(bad)


# --- shards planned by durations (harness/shards.py) -------------------------------------------

def planned(shard, models, digest="abc123", everything=("m1", "m2")):
    d = doc([t(f"s::x[{m}]", model=m) for m in models], shard=shard)
    d["settings"]["shard_plan"] = {"method": "durations", "source": "fixtures/durations/test_durations.json",
                                   "digest": digest, "models": list(everything), "mine": list(models)}
    return d


def test_shards_of_one_plan_merge_complete():
    m = merge_documents([("a", planned("1/2", ["m1"])), ("b", planned("2/2", ["m2"]))])
    assert m["complete"] is True and m["incomplete_reasons"] == []


def test_shards_planned_from_different_durations_files_make_the_merge_incomplete():
    # shard 2 read an updated durations file: m2 moved to shard 1 there, so nobody ran it
    a = planned("1/2", ["m1"], digest="abc123")
    b = planned("2/2", [], digest="def456")
    m = merge_documents([("shard-a", a), ("shard-b", b)])
    assert m["complete"] is False
    [reason] = m["incomplete_reasons"]
    assert "shards were planned differently" in reason and "shard-a: abc123, shard-b: def456" in reason
    assert "a model may have run in two shards or in none" in reason and "same --durations-file" in reason


def test_a_planned_model_that_ran_in_no_shard_is_named():
    a = planned("1/2", ["m1"], everything=("m1", "m2", "m3"))
    b = planned("2/2", ["m2"], everything=("m1", "m2", "m3"))
    m = merge_documents([("a", a), ("b", b)])
    assert m["complete"] is False and m["incomplete_reasons"] == ["model(s) m3 of the shard plan ran in no shard"]


def test_a_shard_without_a_recorded_plan_beside_planned_ones_is_named():
    a = planned("1/2", ["m1"])
    b = doc([t("s::x[m2]", model="m2")], shard="2/2")  # an older zooconform: no shard_plan
    m = merge_documents([("a", a), ("b", b)])
    assert m["complete"] is False and "b: none recorded" in m["incomplete_reasons"][0]
