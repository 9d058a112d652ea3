"""The artifact cache: content-addressed, corrupt entries rebuilt, one build under contention."""
from __future__ import annotations

import multiprocessing as mp
import time

from harness.cache import ArtifactCache


def _build_slowly(folder):
    (folder / "marker.txt").write_text("built")
    with open(folder.parent.parent / "builds.log", "a") as f:
        f.write("x")
    time.sleep(0.5)


def _worker(root):
    ArtifactCache(root).entry("thing", {"k": 1}, _build_slowly)


def test_entry_is_built_once_and_reused(tmp_path):
    cache = ArtifactCache(tmp_path)
    calls = []
    a = cache.entry("thing", {"k": 1}, lambda d: (calls.append(1), (d / "f.bin").write_bytes(b"abc")))
    b = cache.entry("thing", {"k": 1}, lambda d: calls.append(2))
    assert a == b and calls == [1] and (a / "f.bin").read_bytes() == b"abc"
    c = cache.entry("thing", {"k": 2}, lambda d: (d / "f.bin").write_bytes(b"other"))
    assert c != a


def test_truncated_entry_is_detected_and_rebuilt(tmp_path):
    cache = ArtifactCache(tmp_path)
    folder = cache.entry("thing", {"k": 1}, lambda d: (d / "f.bin").write_bytes(b"0123456789"))
    (folder / "f.bin").write_bytes(b"01234")  # truncated by a crash or a full disk
    again = cache.entry("thing", {"k": 1}, lambda d: (d / "f.bin").write_bytes(b"0123456789"))
    assert (again / "f.bin").read_bytes() == b"0123456789"


def test_two_processes_build_one_entry_once(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(tmp_path / "c",)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert (tmp_path / "c" / "builds.log").read_text() == "x"


def test_a_shared_folder_serves_its_kinds_to_a_fresh_cache_and_takes_what_it_builds(tmp_path):
    from harness.cache import is_valid

    shared, built = tmp_path / "shared", []

    def build(folder):
        built.append(folder)
        (folder / "state.bin").write_bytes(b"weights")

    first = ArtifactCache(tmp_path / "a", shared, frozenset({"reference"}))
    first.entry("reference", {"k": 1}, build)
    assert len(built) == 1 and is_valid(shared / "reference" / first.folder("reference", {"k": 1}).name)
    second = ArtifactCache(tmp_path / "b", shared, frozenset({"reference"}))
    got = second.entry("reference", {"k": 1}, build)
    assert len(built) == 1 and (got / "state.bin").read_bytes() == b"weights"  # copied, not rebuilt
    other = ArtifactCache(tmp_path / "c", shared, frozenset({"reference"}))
    other.entry("onnx", {"k": 1}, build)  # not a shared kind: built, and not published
    assert len(built) == 2 and not (shared / "onnx").exists()
    # a shared entry that no longer verifies is never copied: the fresh cache builds its own
    (next((shared / "reference").glob("*/state.bin"))).write_bytes(b"torn")
    ArtifactCache(tmp_path / "d", shared, frozenset({"reference"})).entry("reference", {"k": 1}, build)
    assert len(built) == 3
