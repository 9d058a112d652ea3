"""A kit for testing checks: the :class:`LabLike` protocol the checks take, a :class:`Recorder`
standing in for the ``record`` fixture, and :class:`FakeLab`, a lab whose parts a test fills in.

Checks are plain functions ``check_x(card, lab, record, ...)``. Outside a pytest session (the
harness's self-tests, a notebook) they run against a :class:`FakeLab`; the planted mistakes
they must catch are catalogued next to the checks (e.g. ``harness.reparam.checks.KNOWN_MISTAKES``).
No pytest here: the kit is plain Python, so that harness stays importable without it.
"""
from __future__ import annotations

import types
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .cache import ArtifactCache, Memo, T
from .phases import PhaseLog


@runtime_checkable
class LabLike(Protocol):
    """What a check may ask of the lab (harness.lab.Lab implements all of it)."""

    settings: Any
    cache: ArtifactCache

    def memo(self, kind: str, key: Hashable, build: Callable[[], T],
             size_of: Callable[[Any], int] | None = None, valid: Callable[[Any], bool] | None = None) -> T: ...

    def artifacts(self, card: Any) -> Any: ...

    def checkpoint_for(self, card: Any) -> Path | None: ...

    def reference(self, card: Any) -> Any: ...

    def reference_logits(self, card: Any, split: str = "eval") -> Any: ...

    def inputs(self, card: Any, split: str = "eval", limit: int | None = None) -> tuple[Any, list]: ...

    def images(self, split: str) -> Any: ...

    @property
    def uses_real_data(self) -> bool: ...


class Record(Protocol):
    """The ``record`` a check takes: ``record(name=value, ...)`` keeps figures for the report."""

    def __call__(self, **figures: Any) -> None: ...


class Recorder(dict):
    """The ``record`` fixture's stand-in: ``record(**figures)`` keeps them; read them as a dict
    (``rec["opset_written"]``) or as ``rec.figures``. ``check(figures)``, when given, sees every
    call first (e.g. the figure-name contract's validator)."""

    def __init__(self, check: Callable[[dict], Any] | None = None):
        super().__init__()
        self.check = check

    def __call__(self, **figures: Any) -> None:
        if self.check is not None:
            self.check(figures)
        self.update(figures)

    @property
    def figures(self) -> dict:
        return self


def recorder(check: Callable[[dict], Any] | None = None) -> Recorder:
    return Recorder(check)


class FakeLab:
    """A lab for self-tests: real memos (so memoised checks behave as in a session) and an
    artifact cache under ``tmp`` when given; everything else is what the test passes as keyword
    arguments: values (``reference=model``) or callables (``reference=lambda card: model``).

    ``settings`` defaults to ``threads=1``; ``manifest`` (a harness.manifest.Manifest) answers
    ``artifacts``; ``inputs`` may be a tensor (sliced to ``limit``) or a callable.
    """

    def __init__(self, tmp: Path | None = None, *, settings: Any = None, manifest: Any = None,
                 **parts: Any):
        self.settings = settings if settings is not None else types.SimpleNamespace(threads=1, imagenet=None)
        self.cache = ArtifactCache(Path(tmp) / "cache") if tmp is not None else None
        self.memos = Memo()
        self.phase = PhaseLog()
        self.manifest = manifest
        self.manifest_error = None
        self.data_problems: list[str] = []
        self._parts = parts

    def memo(self, kind: str, key: Hashable, build: Callable[[], T],
             size_of: Callable[[Any], int] | None = None, valid: Callable[[Any], bool] | None = None) -> T:
        return self.memos.get(kind, key, build, size_of, valid)

    def _part(self, name: str) -> Any:
        if name not in self._parts:
            raise AttributeError(f"this FakeLab was given no {name!r} (pass FakeLab({name}=...))")
        return self._parts[name]

    def _answer(self, name: str, *args: Any) -> Any:
        part = self._part(name)
        return part(*args) if callable(part) and not hasattr(part, "forward") else part

    @property
    def uses_real_data(self) -> bool:
        return bool(self._parts.get("uses_real_data", False))

    def artifacts(self, card: Any) -> Any:
        if "artifacts" in self._parts:
            return self._answer("artifacts", card)
        if self.manifest is None:
            from . import manifest as manifest_mod

            self.manifest = manifest_mod.empty()
        return self.manifest.for_model(card.id)

    def checkpoint_for(self, card: Any) -> Path | None:
        if "checkpoint_for" in self._parts:
            return self._answer("checkpoint_for", card)
        return None

    def reference(self, card: Any) -> Any:
        return self._answer("reference", card)

    def reference_logits(self, card: Any, split: str = "eval") -> Any:
        return self._answer("reference_logits", card, split)

    def inputs(self, card: Any, split: str = "eval", limit: int | None = None) -> tuple[Any, list]:
        part = self._part("inputs")
        if callable(part):
            return part(card, split, limit)
        x = part
        return (x[:limit] if limit else x), []

    def iter_batches(self, card: Any, split: str, batch_size: int = 32) -> Iterator[tuple[Any, list]]:
        return self._answer("iter_batches", card, split, batch_size)

    def images(self, split: str) -> Any:
        part = self._part("images")
        return part[split] if isinstance(part, dict) else part(split)
