"""Content-addressed on-disk artifact cache, safe under parallel workers.

An entry is a folder named by the digest of its key (a JSON-able dict: model id, weights
digest, tool, options, library versions). It is built in a temporary folder and published
by an atomic rename, under a file lock so two workers never build the same entry twice.
A ``_complete.json`` marker with per-file sizes and sha256 is written last: an entry
whose files do not match it (truncated, corrupted) is detected and rebuilt.

In memory, :class:`Memo` holds the session's memos (one LRU per kind under a byte budget);
the lab owns the one instance (``Lab.memo``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from filelock import FileLock

MARKER = "_complete.json"
T = TypeVar("T")
log = logging.getLogger("zooconform.cache")


def default_root() -> Path:
    return Path(os.environ.get("ZOOCONFORM_CACHE", Path.cwd() / ".zooconform-cache"))


def shared_from_environment() -> tuple[Path | None, frozenset[str]]:
    """(folder, kinds) of ``$ZOOCONFORM_SHARED_CACHE`` / ``$ZOOCONFORM_SHARED_KINDS``."""
    folder = os.environ.get(SHARED_CACHE_ENV)
    kinds = os.environ.get(SHARED_KINDS_ENV, DEFAULT_SHARED_KINDS)
    return (Path(folder) if folder else None), frozenset(k.strip() for k in kinds.split(",") if k.strip())


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def array_digest(x: Any) -> str:
    """Content digest of an array, its shape and dtype included (for cache keys)."""
    import numpy as np

    x = np.ascontiguousarray(x)
    return hashlib.sha256(str((x.shape, x.dtype)).encode() + x.tobytes()).hexdigest()[:24]


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, dict]:
    return {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER}


def is_valid(folder: Path) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, OSError):
        return False
    try:
        return _manifest(folder) == recorded
    except OSError:
        return False


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` through a temp file of its own in the same folder and a rename: readers see
    the old file or the new one, never a torn one, even with concurrent writers. Mode 0644 (a
    report is for reading; mkstemp's 0600 would hide it from a CI's other users)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ``$ZOOCONFORM_SHARED_CACHE``: a second cache folder several caches read from and publish to,
# for the kinds in ``$ZOOCONFORM_SHARED_KINDS`` (comma-separated; default: the seeded references,
# whose BN recalibration is the largest fixed cost of a cold cache, and what is built from them:
# export, int8 file and calibration, floors, logits; and the embedded images' preprocessed tensors;
# every key names what its entry is made of).
# The harness's own tests give each nested run a fresh cache of its own; through this they build
# each once per test session instead of once per test (tests/conftest.py sets it), and `make
# test`'s suites step starts from what they built (Makefile).
SHARED_CACHE_ENV, SHARED_KINDS_ENV = "ZOOCONFORM_SHARED_CACHE", "ZOOCONFORM_SHARED_KINDS"
DEFAULT_SHARED_KINDS = "inputs,reference,onnx,fp64-floor,reference-logits,int8-pre,int8-ranges,int8,eval-logits"


class ArtifactCache:
    def __init__(self, root: Path | str | None = None, shared: Path | str | None = None,
                 shared_kinds: frozenset[str] | None = None):
        self.root = Path(root) if root else default_root()
        # an entry of ``shared_kinds`` missing here is copied from ``shared`` when there, and one
        # built here is published there too (same key digests, same validity marker)
        self.shared = Path(shared) if shared else None
        self.shared_kinds = shared_kinds if shared_kinds is not None else frozenset()
        # one line per entry found corrupt and rebuilt this session (also logged): a cache that
        # keeps rotting (a full disk, a flaky mount) should be seen, not silently paid for
        self.notes: list[str] = []
        # ``around_build(kind, key)``: a context manager around every build (the lab times it as a
        # phase, harness/phases.py); a hit costs nothing and is not timed
        self.around_build: Callable[[str, dict], AbstractContextManager[Any]] | None = None

    def _note(self, text: str) -> None:
        self.notes.append(text)
        log.warning(text)

    def folder(self, kind: str, key: dict) -> Path:
        """Where the entry of ``key`` lives (built or not)."""
        return self.root / kind / key_digest({"kind": kind, **key})

    def entry(self, kind: str, key: dict, build: Callable[[Path], None]) -> Path:
        """Folder holding the artifact for ``key``; ``build(tmpdir)`` writes it if absent.

        Returns the published folder; a corrupt entry is removed and rebuilt (with a note).
        """
        final = self.folder(kind, key)
        digest = final.name
        if is_valid(final):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if is_valid(final):  # another worker built it while we waited
                return final
            if final.exists():
                self._note(f"cache entry {final} did not match its {MARKER} (truncated or corrupt): rebuilt")
                shutil.rmtree(final)
            shared = self.shared / kind / digest if self.shared is not None and kind in self.shared_kinds else None
            if shared is not None and is_valid(shared) and self._copy_published(shared, final):
                return final
            tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=final.parent))
            try:
                with self.around_build(kind, key) if self.around_build is not None else nullcontext():
                    build(tmp)
                (tmp / "key.json").write_text(json.dumps({"kind": kind, **key}, sort_keys=True, default=str, indent=1))
                (tmp / MARKER).write_text(json.dumps({"files": _manifest(tmp)}))
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        if shared is not None and not is_valid(shared):
            shared.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(shared) + ".lock"):
                if not is_valid(shared):
                    self._copy_published(final, shared)
        return final

    def _copy_published(self, source: Path, final: Path) -> bool:
        """Copy a valid entry to ``final`` through a temp folder and a rename (False, no copy,
        when it no longer verifies there: it is then built as if absent)."""
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            if not is_valid(tmp):
                return False
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            return True
        except OSError:
            return False
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def discard(self, kind: str, key: dict, why: str) -> None:
        """Remove the entry of ``key`` (under its lock), noting ``why``: the next ``entry`` rebuilds it."""
        final = self.folder(kind, key)
        if not final.exists():
            return
        with FileLock(str(final) + ".lock"):
            if final.exists():
                self._note(f"cache entry {final} {why}: rebuilt")
                shutil.rmtree(final, ignore_errors=True)

    def arrays(self, kind: str, key: dict, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """numpy arrays cached under ``key``: ``build()`` returns ``{name: array}`` (plain numeric
        dtypes; names are file names), stored one ``<name>.npy`` each and read back with
        ``allow_pickle=False``. An entry that does not verify or does not load is rebuilt with
        a note, never an error. Values come back as the arrays built (first call) or loaded."""
        import numpy as np

        built: dict[str, Any] = {}

        def write(folder: Path) -> None:
            built.update({name: np.asarray(a) for name, a in build().items()})
            for name, a in built.items():
                if a.dtype.hasobject:
                    raise TypeError(f"cache kind {kind!r}: array {name!r} holds Python objects; only numeric "
                                    f"arrays are cached (allow_pickle=False)")
                np.save(folder / f"{name}.npy", a, allow_pickle=False)

        for attempt in (1, 2):
            folder = self.entry(kind, key, write)
            if built:
                return built
            try:
                return {p.stem: np.load(p, allow_pickle=False) for p in sorted(folder.glob("*.npy"))}
            except (ValueError, OSError) as e:
                if attempt == 2:
                    raise
                self.discard(kind, key, f"did not load ({type(e).__name__}: {str(e)[:120]})")
        raise AssertionError("unreachable")


# --- in-memory memos (the lab owns them: harness/lab.py Lab.memo) ------------------------------

class BoundedCache(dict):
    """A dict that forgets its least recently used entries once their sizes (``size_of(value)``:
    bytes for the lab's tensors, 1 per entry for a count bound) add up to more than
    ``capacity`` (the newest entry always stays, however large)."""

    def __init__(self, capacity: int, size_of: Callable[[Any], int]):
        super().__init__()
        self.capacity, self.size_of = capacity, size_of
        self._sizes: dict = {}

    def __getitem__(self, key):
        value = super().pop(key)  # re-insert: dict order is the recency order
        super().__setitem__(key, value)
        return value

    def __setitem__(self, key, value) -> None:
        if key in self:
            super().pop(key)
        super().__setitem__(key, value)
        self._sizes[key] = self.size_of(value)
        while len(self) > 1 and sum(self._sizes[k] for k in self) > self.capacity:
            oldest = next(iter(self))
            super().pop(oldest)
            self._sizes.pop(oldest, None)

    def pop(self, key, *default):
        self._sizes.pop(key, None)
        return super().pop(key, *default)

    def clear(self) -> None:
        self._sizes.clear()
        super().clear()

    @property
    def bytes(self) -> int:
        return sum(self._sizes.get(k, 0) for k in self)


def approx_bytes(value: Any, _seen: set | None = None) -> int:
    """Memory held by ``value``: the buffers of numpy arrays, torch tensors and modules, summed
    through tuples, lists, dicts and dataclasses; a small constant for anything else (a memo's
    budget is about the large buffers, not exact Python object sizes)."""
    seen = _seen if _seen is not None else set()
    if id(value) in seen:
        return 0
    seen.add(id(value))
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):  # numpy arrays (and torch tensors since 2.1)
        return nbytes
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # a torch tensor
        return int(value.element_size() * value.nelement())
    if hasattr(value, "parameters") and hasattr(value, "buffers"):  # a torch module
        return sum(t.element_size() * t.nelement() for t in list(value.parameters()) + list(value.buffers()))
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if hasattr(value, "ByteSize"):  # a protobuf message (an ONNX graph)
        try:
            return int(value.ByteSize())
        except Exception:
            return 64
    if isinstance(value, dict):
        return 64 + sum(approx_bytes(k, seen) + approx_bytes(v, seen) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return 64 + sum(approx_bytes(v, seen) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return 64 + sum(approx_bytes(getattr(value, f.name), seen) for f in fields(value))
    return 64


class Memo:
    """In-memory memos by kind: each kind an LRU :class:`BoundedCache` under its own byte budget
    (``budgets[kind]``, else ``default_budget``). One lab holds one; nothing is cached at module
    level (tests/test_no_module_caches.py)."""

    def __init__(self, budgets: dict[str, int] | None = None, default_budget: int = 256 << 20):
        self.budgets = dict(budgets or {})
        self.default_budget = default_budget
        self._kinds: dict[str, BoundedCache] = {}

    def store(self, kind: str, size_of: Callable[[Any], int] | None = None) -> BoundedCache:
        """The kind's LRU (created on first use with ``size_of``, bytes per value)."""
        if kind not in self._kinds:
            self._kinds[kind] = BoundedCache(self.budgets.get(kind, self.default_budget), size_of or approx_bytes)
        return self._kinds[kind]

    def get(self, kind: str, key: Hashable, build: Callable[[], T],
            size_of: Callable[[Any], int] | None = None, valid: Callable[[Any], bool] | None = None) -> T:
        """The memoised value of ``key``; ``build()`` makes it when absent, or when ``valid(value)``
        says the kept one is stale (an exception in ``build`` is not memoised)."""
        store = self.store(kind, size_of)
        if key in store and (valid is None or valid(store[key])):
            return store[key]
        value = build()
        store[key] = value
        return value

    def drop(self, forget: Callable[[Hashable], bool]) -> int:
        """Remove every entry whose key ``forget(key)`` is true, of every kind; how many."""
        dropped = 0
        for store in self._kinds.values():
            for key in [k for k in store if forget(k)]:
                store.pop(key)
                dropped += 1
        return dropped

    def share(self, kind: str, other: Memo) -> None:
        """Use ``other``'s memo of ``kind`` (two labs over the same images share their inputs)."""
        self._kinds[kind] = other.store(kind)

    def forget(self, kind: str | None = None) -> None:
        for k, store in self._kinds.items():
            if kind is None or k == kind:
                store.clear()

    def usage(self) -> dict[str, tuple[int, int]]:
        """Per kind: (entries, bytes)."""
        return {k: (len(s), s.bytes) for k, s in self._kinds.items()}


class HasMemo(Protocol):
    def memo(self, kind: str, key: Hashable, build: Callable[[], T],
             size_of: Callable[[Any], int] | None = None, valid: Callable[[Any], bool] | None = None) -> T: ...


def memoised(owner: HasMemo | Memo | None, kind: str, key: Hashable, build: Callable[[], T],
             size_of: Callable[[Any], int] | None = None, valid: Callable[[Any], bool] | None = None) -> T:
    """``owner.memo(...)`` (a lab) or ``owner.get(...)`` (a :class:`Memo`); with no owner the value
    is built every time (a check called outside a session, as the self-tests do)."""
    if owner is None:
        return build()
    if isinstance(owner, Memo):
        return owner.get(kind, key, build, size_of, valid)
    return owner.memo(kind, key, build, size_of, valid)
