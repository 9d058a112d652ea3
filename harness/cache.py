"""Content-addressed on-disk artifact cache, safe under parallel workers.

An entry is a folder named by the digest of its key (a JSON-able dict: model id, weights
digest, tool, options, library versions). It is built in a temporary folder and published
by an atomic rename, under a file lock so two workers never build the same entry twice.
A ``_complete.json`` marker with per-file sizes and sha256 is written last: an entry
whose files do not match it (truncated, corrupted) is detected and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from filelock import FileLock

MARKER = "_complete.json"


def default_root() -> Path:
    return Path(os.environ.get("ZOOCONFORM_CACHE", Path.cwd() / ".zooconform-cache"))


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, dict]:
    return {p.name: {"size": p.stat().st_size, "sha256": _file_sha(p)}
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


class ArtifactCache:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root else default_root()

    def entry(self, kind: str, key: dict, build: Callable[[Path], None]) -> Path:
        """Folder holding the artifact for ``key``; ``build(tmpdir)`` writes it if absent.

        Returns the published folder; a corrupt entry is removed and rebuilt.
        """
        digest = key_digest({"kind": kind, **key})
        final = self.root / kind / digest
        if is_valid(final):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if is_valid(final):  # another worker built it while we waited
                return final
            if final.exists():
                shutil.rmtree(final)  # truncated or corrupt: rebuild
            tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=final.parent))
            try:
                build(tmp)
                (tmp / "key.json").write_text(json.dumps({"kind": kind, **key}, sort_keys=True, default=str, indent=1))
                (tmp / MARKER).write_text(json.dumps({"files": _manifest(tmp)}))
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return final
