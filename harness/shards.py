"""Shards of a run balanced by measured durations: which models ``--shard I/N`` runs.

The unit of sharding is the model, not the test: every test of a model shares its artifacts
(the ONNX exports, the int8 files, the calibration), built once per process and cached per
model, so splitting one model's tests over two machines would build them twice. The cost of a
model is what its tests took together; resnest269 costs many times what hrnet_w18_small_v1
does, so dealing models round-robin (the split before this module) left one shard with the
three ResNeSt giants.

The durations file is pytest-split's format (``.test_durations``: one JSON object, test node id
-> seconds, setup + call + teardown added up), so its tooling and habits carry over. pytest-split
itself cannot be used for the split: its ``least_duration`` algorithm places single tests
(pytest_split/algorithms.py, 0.11), with no notion of a group that must stay on one machine.
What is taken from it is the file format and its greedy rule, applied to models:

- a model's cost is the sum of its tests' recorded seconds (its tests are recognised by the
  model id as the first field of their parameter id, ``test_x[repvgg_a0-ort]``);
- a model with no recorded test is estimated from the card's FLOPs (:func:`cost_proxy`) times
  the seconds per GMAC of the measured models (their median), since the suite's costly steps
  (export numerics, calibration, int8 evaluation, latency) run the model over a fixed number
  of images;
- tests of no model run in shard 1 only (harness/plugin.py), so their recorded total starts
  shard 1's load;
- longest processing time first: the models by decreasing cost, each to the shard with the
  least load so far (ties: the lower shard). Every shard computes the same plan from the same
  file and selection, so the shards partition the models; the plan's digest goes into each
  shard's results so that ``zooconform merge`` can tell shards planned differently.

Without figures for any selected model the split stays round-robin by id (what it was).
"""
from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from .cache import atomic_write_text
from .errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DURATIONS_FILE = ROOT / "fixtures" / "durations" / "test_durations.json"
# another durations file for --shard: what `zooconform run --durations-file` hands its pytest
# (and what a plain `pytest --shard` reads), as $ZOOCONFORM_CACHE does for the cache
DURATIONS_ENV = "ZOOCONFORM_DURATIONS_FILE"

# a published row's FLOPs as multiply-accumulates x 1e9, by counting convention
# (harness/flops.py): GiB of MACs, 1e9 MACs, mmcv's ops (MACs plus small per-element terms),
# timm's card (counts 2 per MAC: its hrnet_w18_small_v1 row 3.611 vs 1.49 GiB MACs)
_GMACS = {"macs_1e9_deploy": 1.0, "macs_gib": 2**30 / 1e9, "mmcv": 1.0, "timm_card": 0.5}
_PARAM_ID = re.compile(r"\[([^\[\]]*)\]$")


class Shard(NamedTuple):
    """``--shard I/N`` (``number`` I of ``total`` N) with the durations file that plans it
    (None: $ZOOCONFORM_DURATIONS_FILE or the shipped one). Unpacks as shard_cards' arguments."""

    number: int
    total: int
    durations_file: Path | None = None


class Card(Protocol):
    """What the split needs of a :class:`harness.zoo.ModelCard`."""

    @property
    def id(self) -> str: ...

    @property
    def published(self) -> Sequence[Any]: ...


def load_durations(path: Path | str) -> dict[str, float]:
    """A durations file (pytest-split's format) as {node id: seconds}; a missing file is empty.

    pytest-split's older list-of-pairs form is read too. Anything else is a ConfigError naming
    the file, the entry and the fix."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(path, "-", f"not valid JSON ({e})",
                          fix="regenerate it: zooconform durations REPORT_DIR... --out FILE") from None
    if isinstance(raw, list):  # pytest-split < 0.4: [[nodeid, seconds], ...]
        try:
            raw = dict(raw)
        except (TypeError, ValueError):
            raise ConfigError(path, "-", "a list that is not [[node id, seconds], ...]",
                              fix="write a JSON object {test node id: seconds} (pytest-split's format)") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "-", f"expected a JSON object {{test node id: seconds}}, got {type(raw).__name__}",
                          fix="write pytest-split's format, e.g. zooconform durations REPORT_DIR... --out FILE")
    out: dict[str, float] = {}
    for nodeid, seconds in raw.items():
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or seconds < 0:
            raise ConfigError(path, nodeid, f"expected seconds as a number >= 0, got {seconds!r}",
                              fix="regenerate it: zooconform durations REPORT_DIR... --out FILE")
        out[str(nodeid)] = float(seconds)
    return out


def write_durations(path: Path | str, durations: Mapping[str, float]) -> None:
    """Write ``durations`` as pytest-split does (sorted keys, indent 4), through a temp file and a
    rename so that a shard reading it never sees half a file."""
    atomic_write_text(Path(path), json.dumps({k: round(float(v), 4) for k, v in durations.items()},
                                             sort_keys=True, indent=4) + "\n")


def model_of(nodeid: str, model_ids: Iterable[str]) -> str | None:
    """The model a test belongs to: the first ``-``-separated field of its parameter id, when
    that is a model id (``suites/test_export.py::test_x[repvgg_b1g2-ort-legacy-opset17]`` ->
    ``repvgg_b1g2``; a prefix such as repvgg_b1 does not match). Model ids hold no ``-``."""
    m = _PARAM_ID.search(nodeid)
    if m is None:
        return None
    first = m.group(1).split("-", 1)[0]
    return first if first in set(model_ids) else None


def cost_proxy(card: Card) -> float | None:
    """The card's cost in 1e9 multiply-accumulates (GMACs), from its published FLOPs rows in
    the first convention of :data:`_GMACS` it has; None when no row has a usable figure."""
    best: tuple[int, float] | None = None
    order = list(_GMACS)
    for row in card.published:
        conv, flops = getattr(row, "flops_convention", None), getattr(row, "flops_g", None)
        if conv in _GMACS and flops:
            rank = order.index(conv)
            if best is None or rank < best[0]:
                best = (rank, float(flops) * _GMACS[conv])
    return None if best is None else best[1]


@dataclass(frozen=True)
class Cost:
    seconds: float
    how: str  # "measured (N tests)", "estimated: G GMACs x S s/GMAC", ...


@dataclass
class Plan:
    """Which models each shard runs. ``shards[i]`` is shard ``i + 1``'s model ids."""

    count: int
    method: str  # "durations" or "round-robin"
    shards: list[list[str]]
    load_s: list[float]  # the planned seconds per shard (durations only; zeros for round-robin)
    costs: dict[str, Cost] = field(default_factory=dict)
    source: str = ""  # the durations file
    other_s: float = 0.0  # recorded seconds of the tests of no model (shard 1)

    def models(self, index: int) -> list[str]:
        return self.shards[index - 1]

    def digest(self) -> str:
        """Identifies the assignment: equal for every shard planned alike."""
        return hashlib.sha1(json.dumps(self.shards).encode()).hexdigest()[:12]

    def record(self, index: int) -> dict[str, Any]:
        """What a shard's results.json keeps (``settings.shard_plan``) for ``zooconform merge``."""
        return {"method": self.method, "source": self.source, "digest": self.digest(),
                "models": sorted(m for s in self.shards for m in s), "mine": self.models(index),
                "planned_s": [round(x, 1) for x in self.load_s]}

    def lines(self) -> list[str]:
        out = [f"{self.method} split into {self.count} shard(s)" + (f" from {self.source}" if self.source else "")]
        for i, ids in enumerate(self.shards, 1):
            extra = f" + {self.other_s:.0f} s of tests of no model" if i == 1 and self.other_s else ""
            load = f"~{self.load_s[i - 1]:.0f} s{extra}: " if self.method == "durations" else ""
            out.append(f"  shard {i}/{self.count}: {load}"
                       + ", ".join(f"{m} ({self.costs[m].seconds:.0f} s)" if m in self.costs else m for m in ids))
        return out


def round_robin(ids: Iterable[str], count: int) -> Plan:
    """The models sorted by id, dealt in turn: the split when no durations are recorded."""
    ordered = sorted(ids)
    return Plan(count, "round-robin", [ordered[i::count] for i in range(count)], [0.0] * count)


def model_costs(cards: Sequence[Card], durations: Mapping[str, float],
                every_card: Sequence[Card] = ()) -> tuple[dict[str, Cost], float]:
    """Each card's cost (recorded, else estimated) and the recorded seconds of tests of no model.

    ``every_card``: the zoo's cards, whose measured seconds per GMAC estimate the unmeasured of
    ``cards`` (a selection of only unmeasured models has no rate of its own: without them its
    models all cost nothing, and the scheduler handed them out by name, resnest269 last)."""
    ids = [c.id for c in cards]
    known = set(ids)
    peers = [c for c in every_card if c.id not in known]
    summed: dict[str, float] = {}
    tests: dict[str, int] = {}
    other = 0.0
    every_id = _all_model_ids() | known
    for nodeid, seconds in durations.items():
        model = model_of(nodeid, every_id)
        if model is None:
            other += seconds
        elif model in known:
            summed[model] = summed.get(model, 0.0) + seconds
            tests[model] = tests.get(model, 0) + 1
    costs = {m: Cost(s, f"measured ({tests[m]} test{'' if tests[m] == 1 else 's'})") for m, s in summed.items()}
    proxies = {c.id: cost_proxy(c) for c in (*cards, *peers)}
    family = {c.id: getattr(c, "family", None) for c in (*cards, *peers)}
    peer_seconds: dict[str, float] = {}
    for nodeid, seconds in durations.items():
        model = model_of(nodeid, every_id | {c.id for c in peers})
        if model is not None and model not in known:
            peer_seconds[model] = peer_seconds.get(model, 0.0) + seconds
    measured = {**{m: c.seconds for m, c in costs.items()}, **{m: s for m, s in peer_seconds.items() if m in proxies}}
    rates = {m: measured[m] / g for m, g in proxies.items() if m in measured and g}
    rate = statistics.median(rates.values()) if rates else None
    for c in cards:
        if c.id in costs:
            continue
        g = proxies[c.id]
        # a family's own rate where one of it is measured: seconds per GMAC differ by family
        # (measured, fixtures/durations/README.md: ResNeSt 53-60, RepVGG 51-86, HRNet 63-140, which has
        # the most activations per MAC for calibration to histogram)
        kin = [r for m, r in rates.items() if family[c.id] is not None and family[m] == family[c.id]]
        if g and kin:
            kin_rate = statistics.median(kin)
            costs[c.id] = Cost(g * kin_rate, f"estimated: {g:.2f} GMACs x {kin_rate:.1f} "
                                             f"s/GMAC (median of the measured {family[c.id]} models)")
        elif g and rate:
            costs[c.id] = Cost(g * rate, f"estimated: {g:.2f} GMACs x {rate:.1f} s/GMAC (median of the measured models)")
        elif costs:  # no FLOPs on the card: a typical measured model
            typical = statistics.median(x.seconds for x in costs.values())
            costs[c.id] = Cost(typical, "estimated: median of the measured models (no FLOPs on the card)")
    return costs, other


def plan(cards: Sequence[Card], count: int, durations: Mapping[str, float], source: str = "") -> Plan:
    """The split of ``cards`` into ``count`` shards: by durations when any selected model has a
    recorded test, else round-robin."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    costs, other = model_costs(cards, durations)
    if not any(v.how.startswith("measured") for v in costs.values()):
        return round_robin([c.id for c in cards], count)
    shards: list[list[str]] = [[] for _ in range(count)]
    load = [0.0] * count
    load[0] = other  # tests of no model run in shard 1
    heap = [(load[i], i) for i in range(count)]
    heapq.heapify(heap)
    for m in sorted(costs, key=lambda m: (-costs[m].seconds, m)):
        s, i = heapq.heappop(heap)
        shards[i].append(m)
        load[i] = s + costs[m].seconds
        heapq.heappush(heap, (load[i], i))
    return Plan(count, "durations", [sorted(s) for s in shards], load, costs, source, other)


def durations_path(file: Path | str | None = None) -> Path:
    """``file``, else ``$ZOOCONFORM_DURATIONS_FILE``, else the shipped fixtures file. A file named
    (by option or environment) must exist: a typo must not fall back to round-robin in silence."""
    named = file or os.environ.get(DURATIONS_ENV)
    if not named:
        return DURATIONS_FILE
    path = Path(named)
    if not path.is_file():
        how = "--durations-file" if file else f"${DURATIONS_ENV}"
        raise ConfigError(path, how, "no such file",
                          fix="write one with `zooconform durations REPORT_DIR... --out FILE`, or name none "
                              "for the shipped fixtures/durations/test_durations.json")
    return path


def plan_from_file(cards: Sequence[Card], count: int, file: Path | str | None = None) -> Plan:
    """:func:`plan` with the durations of :func:`durations_path` (``file``, the environment or
    the shipped fixtures file)."""
    path = durations_path(file)
    return plan(cards, count, load_durations(path), source=_display(path))


def select(cards: Sequence[Card], index: int, count: int, file: Path | str | None = None) -> list[Card]:
    """The cards of shard ``index`` (1-based) of ``count``, in the order given."""
    mine = set(plan_from_file(cards, count, file).models(index))
    return [c for c in cards if c.id in mine]


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _all_model_ids() -> set[str]:
    """Every id of the zoo: a recorded test of an unselected model is no test of 'no model'."""
    from .zoo import load_zoo

    try:
        return set(load_zoo())
    except ConfigError:
        return set()
