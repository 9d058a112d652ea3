"""A repro bundle per failing or inconclusive test: ``<run>/repro/<sanitized test id>/``.

- ``cause.json``: the message's fields (what, measured, expected, where, cause; see
  ``harness/compare.py`` ``message``), the exception type, the outcome, the figures;
- ``command.txt``: one shell command that re-runs exactly that test with the run's options
  (its results go to the bundle's ``rerun/`` folder, never over the run's own files);
- ``inputs.npz``: the images the check used (file names of the evaluation and calibration
  splits it read, labels when there are any) and any arrays the check exposed (e.g. the
  images int8 flips);
- ``artifacts/``: each file the message or the figures name (an ONNX file in
  ``.zooconform-cache``, a checkpoint) copied when under :data:`FILE_CAP` bytes and while
  the run's repro folder stays under :data:`RUN_CAP`, else a symbolic link to it;
  ``artifacts.json`` lists what was copied, linked or missing.

No pytest and no torch here: the plugin gathers what the test exposes and calls
:func:`write_bundle`.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FILE_CAP = 64 * 2**20  # bytes: an artifact larger than this is linked, not copied
RUN_CAP = 512 * 2**20  # bytes: once a run's repro folder holds this much, artifacts are linked
MAX_NAME = 120

# absolute paths, and relative ones into the artifact cache
_PATH = re.compile(r"(?:(?<=[\s'\"(=:\[])|^)((?:/|\.zooconform-cache/)[^\s'\"()\[\],;]+)")


def sanitize(nodeid: str) -> str:
    """A folder name for a test id: ``suites/test_quant.py::test_x[repvgg_a0-minmax]`` ->
    ``test_quant.test_x.repvgg_a0-minmax`` (path separators and brackets out, length capped
    with a digest so two long ids never collide)."""
    import hashlib

    path, _, rest = nodeid.partition("::")
    base = Path(path).name.removesuffix(".py")
    name = f"{base}.{rest}" if rest else base
    name = re.sub(r"[^A-Za-z0-9._+-]+", ".", name.replace("[", ".").replace("]", "")).strip(".")
    if len(name) > MAX_NAME:
        name = name[:MAX_NAME - 11] + "-" + hashlib.sha1(nodeid.encode()).hexdigest()[:10]
    return name or "test"


def parse_message(message: str) -> dict[str, str | None]:
    """The fields of ``<what> = <measured>, but should be <expected> [<where>]; cause: <cause>``
    (``harness/compare.py``; ``where`` may hold brackets itself: ``fixtures/tolerances.toml
    [quant] agreement``). A message of another shape keeps its text in ``what``."""
    text = message.strip()
    for prefix in ("CheckFailure: ", "Inconclusive: "):
        text = text.removeprefix(prefix)
    none = {"what": text, "measured": None, "expected": None, "where": None, "cause": None}
    what, sep, rest = text.partition(" = ")
    measured, sep2, rest = rest.partition(", but should be ")
    if not (sep and sep2):
        return none
    head, sep3, cause = rest.partition("; cause: ")
    head = head.rstrip()
    where = None
    if head.endswith("]"):  # the last balanced [...] group is where to look
        depth = 0
        for i in range(len(head) - 1, -1, -1):
            depth += {"]": 1, "[": -1}.get(head[i], 0)
            if depth == 0:
                where, head = head[i + 1:-1], head[:i].rstrip()
                break
    return {"what": what.strip(), "measured": measured.strip(), "expected": head.strip(),
            "where": where, "cause": cause.strip() if sep3 else None}


def artifact_paths(message: str, figures: dict[str, Any]) -> list[Path]:
    """Existing files or folders named in the message or in string figures."""
    texts = [message] + [v for v in _walk(figures) if isinstance(v, str)]
    out: list[Path] = []
    for text in texts:
        candidates = [text] if _looks_like_path(text) else [m.group(1) for m in _PATH.finditer(text)]
        for c in candidates:
            p = Path(c.rstrip(".:"))
            try:
                if p.exists() and p not in out and p.resolve() != Path("/"):
                    out.append(p)
            except OSError:
                continue
    return out


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and " " not in text and ("/" in text) and len(text) < 4096


def _walk(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)
    else:
        yield value


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o644)


def command_line(cwd: Path | str, argv: list[str]) -> str:
    return f"cd {shlex.quote(str(cwd))} && {shlex.join(argv)}"


def write_bundle(root: Path, nodeid: str, *, outcome: str, exc_type: str, message: str,
                 figures: dict[str, Any], command: str, inputs: dict[str, Any] | None = None,
                 file_cap: int = FILE_CAP, run_cap: int = RUN_CAP) -> Path:
    """Write ``root/<sanitize(nodeid)>/`` and return it (an existing bundle of the same test,
    from an earlier phase of the same test, is replaced)."""
    import numpy as np

    folder = root / sanitize(nodeid)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    for d in (root.parent, root, folder):
        try:
            os.chmod(d, 0o755)
        except OSError:
            pass
    from .results import jsonable

    cause = {"nodeid": nodeid, "outcome": outcome, "type": exc_type, **parse_message(message),
             "message": message, "figures": jsonable(figures)}
    _write(folder / "cause.json", json.dumps(cause, indent=1))
    _write(folder / "command.txt", command + "\n")

    arrays: dict[str, Any] = {}
    for k, v in (inputs or {}).items():
        try:
            arr = np.asarray(v)
        except Exception:  # not array-like: it goes to cause.json's figures, not here
            continue
        if arr.dtype != object:
            arrays[k] = arr
    if arrays:
        with open(folder / "inputs.npz", "wb") as f:
            np.savez_compressed(f, **arrays)
        os.chmod(folder / "inputs.npz", 0o644)

    listed = []
    paths = artifact_paths(message, figures)
    if paths:
        adir = folder / "artifacts"
        adir.mkdir(exist_ok=True)
        os.chmod(adir, 0o755)
        used = _folder_bytes(root)
        for i, p in enumerate(paths[:20]):
            target = adir / (p.name or f"artifact{i}")
            if target.exists() or target.is_symlink():
                target = adir / f"{i}-{p.name}"
            entry: dict[str, Any] = {"source": str(p.resolve())}
            try:
                size = p.stat().st_size if p.is_file() else None
                if size is not None and size <= file_cap and used + size <= run_cap:
                    shutil.copyfile(p, target)
                    os.chmod(target, 0o644)
                    used += size
                    entry.update(how="copied", path=str(target.relative_to(folder)), bytes=size)
                else:
                    os.symlink(p.resolve(), target)
                    entry.update(how="linked", path=str(target.relative_to(folder)),
                                 why="a folder" if size is None else f"{size} bytes, over the copy cap")
            except OSError as e:
                entry.update(how="missing", why=e.strerror or str(e))
            listed.append(entry)
    _write(folder / "artifacts.json", json.dumps(listed, indent=1))
    return folder
