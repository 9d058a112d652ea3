"""The registry: model cards loaded from ``fixtures/zoo/<family>.toml`` and validated.

File shape (one file per family)::

    [family]                      # shared by every model of the file
    name = "hrnet"
    seed = "000_....txt"          # the seed document the figures come from
    preprocess = { pipeline = "resize_then_crop", resize = 256, crop = 224,
                   interpolation = "bilinear", mean = [...], std = [...] }
    count_form = "deploy"         # optional: params/FLOPs are of the re-parameterized form

    [models.<id>]                 # one table per model
    timm_arch = "hrnet_w18_small" # timm architecture name
    input_size = 224
    tiers = ["smoke"]             # optional; every model is in "full"
    preprocess = { crop = 256 }   # optional; merged over the family's
    byob = { wf = [...], groups = 2 }  # optional; build from timm's ByobNet RepVGG config
    note = "..."                  # optional

    [[models.<id>.published]]     # one row per published table row
    sources = ["official"]        # official | mmcls | timm | ppcls
    name = "HRNet_w18_small_model_v1"   # as written in the seed
    seed = "000"                  # seed file prefix
    top1 = 72.3                   # percent; optional (absent where the seed says "-")
    top5 = 90.7
    params_m = 13.2
    flops_g = 1.49
    flops_convention = "macs_gib" # see harness/flops.py
    weights = "ssld"              # optional: a different training recipe of the same model
    latency_ms = { t4_trt_fp32 = [b1, b4, b8] }   # optional, batches in latency_batches

Expected failures of a row's checks live in ``fixtures/expectations.toml``, not here.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from .errors import ConfigError

ZOO_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "zoo"
SOURCES = ("official", "mmcls", "timm", "ppcls")
PIPELINES = ("resize_then_crop", "ecenter_crop")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
TIERS = ("smoke", "full")
# a published row's FLOPs counting convention (harness/flops.py counts the first three; the
# others are reported as ratios and declared xfail in fixtures/expectations.toml)
FLOPS_CONVENTIONS = ("macs_gib", "macs_1e9_deploy", "mmcv", "paddle", "paddle_page", "timm_card")


@dataclass(frozen=True)
class Preprocess:
    """The card's reference preprocessing (what the seed's torchvision code does)."""

    pipeline: str  # resize_then_crop | ecenter_crop
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int | None = None  # short side, resize_then_crop only

    @property
    def crop_fraction(self) -> float:
        """Fraction of the short side that ends up in the crop."""
        if self.pipeline == "ecenter_crop":
            return self.crop / (self.crop + 32)
        assert self.resize is not None, "resize_then_crop has a resize"
        return self.crop / self.resize


@dataclass(frozen=True)
class PublishedRow:
    sources: tuple[str, ...]
    name: str
    seed: str
    params_m: float | None
    flops_g: float | None
    flops_convention: str | None
    top1: float | None = None
    top5: float | None = None
    weights: str | None = None
    input_size: int | None = None
    reference_top1: float | None = None
    reference_top5: float | None = None
    latency_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    latency_batches: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        """Stable id for parametrization: source-seed-name."""
        return f"{'+'.join(self.sources)}:{self.name}@{self.seed}"


@dataclass(frozen=True, eq=False)
class ModelCard:
    id: str
    family: str
    timm_arch: str
    input_size: int
    preprocess: Preprocess
    published: tuple[PublishedRow, ...]
    tiers: tuple[str, ...]
    file: Path
    count_form: str = "train"  # "deploy": published params/FLOPs are of the deploy form
    byob: dict[str, Any] | None = None
    claims: dict[str, Any] = field(default_factory=dict)  # architecture facts the card states
    timm_tag: str = ""  # timm pretrained tag of the weights the card's rows describe (e.g. ms_in1k)
    note: str = ""

    def rows(self, source: str | None = None) -> list[PublishedRow]:
        return [r for r in self.published if source is None or source in r.sources]


class Printed(float):
    """A published figure that remembers how the seed printed it ("8.30" keeps its 2 decimals).

    The seeds truncate or round to the printed digits, so a comparison needs the printed
    precision, which a plain float loses (8.30 == 8.3).
    """

    text: str

    def __new__(cls, text: str):
        obj = super().__new__(cls, text)
        obj.text = text
        return obj

    @property
    def last_digit_unit(self) -> float:
        """One unit of the last printed digit: 8.30 -> 0.01, 1.4 -> 0.1, 13 -> 1."""
        mantissa = self.text.lower().split("e")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        return 10.0 ** -decimals


# --- validation -------------------------------------------------------------------------

def _expect(d: dict, key: str, types: type | tuple[type, ...], where: str, file: Path,
            required: bool = True, default: Any = None) -> Any:
    if key not in d:
        if required:
            raise ConfigError(file, f"{where}.{key}", f"missing required key '{key}'",
                              fix=f"add '{key} = ...' to [{where}]")
        return default
    value = d[key]
    # bool is an int in Python; a card never means a bool where it asks for a number
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        tn = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ConfigError(file, f"{where}.{key}",
                          f"expected {tn}, got {type(value).__name__} {value!r}",
                          fix=f"write {key} as a {tn}")
    return value


def _number(d, key, where, file, required=True):
    v = _expect(d, key, (int, float), where, file, required)
    if v is None or isinstance(v, Printed):
        return v
    return Printed(str(v))


def _triple(d, key, where, file) -> tuple[float, float, float]:
    v = _expect(d, key, list, where, file)
    if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ConfigError(file, f"{where}.{key}", f"expected a list of 3 numbers, got {v!r}",
                          fix=f"write {key} = [r, g, b]")
    return (float(v[0]), float(v[1]), float(v[2]))


def _choice(d, key, choices, where, file, required=True):
    v = _expect(d, key, str, where, file, required)
    if v is not None and v not in choices:
        raise ConfigError(file, f"{where}.{key}", f"'{v}' is not one of {list(choices)}",
                          fix=f"use one of {list(choices)}")
    return v


def _parse_preprocess(d: dict, where: str, file: Path) -> Preprocess:
    known = {"pipeline", "crop", "interpolation", "mean", "std", "resize"}
    _no_unknown(d, known, where, file)
    pipeline = _choice(d, "pipeline", PIPELINES, where, file)
    resize = _expect(d, "resize", int, where, file, required=pipeline == "resize_then_crop")
    return Preprocess(
        pipeline=pipeline,
        crop=_expect(d, "crop", int, where, file),
        interpolation=_choice(d, "interpolation", INTERPOLATIONS, where, file),
        mean=_triple(d, "mean", where, file),
        std=_triple(d, "std", where, file),
        resize=resize,
    )


def _no_unknown(d: dict, known: Iterable[str], where: str, file: Path) -> None:
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(file, f"{where}.{unknown[0]}", f"unknown key(s) {unknown}",
                          fix=f"known keys are {sorted(known)}")


_ROW_KEYS = {"sources", "name", "seed", "top1", "top5", "params_m", "flops_g", "flops_convention",
             "weights", "input_size", "reference_top1", "reference_top5", "latency_ms",
             "latency_batches", "note"}
_MODEL_KEYS = {"timm_arch", "input_size", "tiers", "preprocess", "published", "byob", "note"}


def _parse_row(d: dict, where: str, file: Path) -> PublishedRow:
    if not isinstance(d, dict):
        raise ConfigError(file, where, f"expected a table, got {type(d).__name__}",
                          fix="write each row as [[models.<id>.published]]")
    _no_unknown(d, _ROW_KEYS, where, file)
    sources = _expect(d, "sources", list, where, file)
    for s in sources:
        if s not in SOURCES:
            raise ConfigError(file, f"{where}.sources", f"unknown source {s!r}",
                              fix=f"use some of {list(SOURCES)}")
    lat = _expect(d, "latency_ms", dict, where, file, required=False, default={})
    batches = tuple(_expect(d, "latency_batches", list, where, file, required=bool(lat), default=[]))
    for k, v in lat.items():
        if not isinstance(v, list) or len(v) != len(batches):
            raise ConfigError(file, f"{where}.latency_ms.{k}",
                              f"expected a list of {len(batches)} numbers (one per latency_batches entry), got {v!r}",
                              fix="give one figure per batch size")
    return PublishedRow(
        sources=tuple(sources),
        name=_expect(d, "name", str, where, file),
        seed=_expect(d, "seed", str, where, file),
        params_m=_number(d, "params_m", where, file, required=False),
        flops_g=_number(d, "flops_g", where, file, required=False),
        flops_convention=_choice(d, "flops_convention", FLOPS_CONVENTIONS, where, file, required="flops_g" in d),
        top1=_number(d, "top1", where, file, required=False),
        top5=_number(d, "top5", where, file, required=False),
        weights=_expect(d, "weights", str, where, file, required=False),
        input_size=_expect(d, "input_size", int, where, file, required=False),
        reference_top1=_number(d, "reference_top1", where, file, required=False),
        reference_top5=_number(d, "reference_top5", where, file, required=False),
        latency_ms={k: tuple(float(x) for x in v) for k, v in lat.items()},
        latency_batches=batches,
    )


def load_family_file(file: Path) -> dict[str, ModelCard]:
    file = Path(file)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"), parse_float=Printed)
    except FileNotFoundError:
        raise ConfigError(file, "-", "file not found", fix="check the path") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "-", f"not valid TOML: {e}", fix="fix the TOML syntax at that line") from None
    fam = _expect(data, "family", dict, "<top>", file)
    _no_unknown(data, {"family", "models"}, "<top>", file)
    _no_unknown(fam, {"name", "seed", "preprocess", "count_form", "export_note", "claims", "timm_tag"}, "family", file)
    timm_tag = _expect(fam, "timm_tag", str, "family", file, required=False, default="")
    claims = _expect(fam, "claims", dict, "family", file, required=False, default={})
    family = _expect(fam, "name", str, "family", file)
    fam_pre = _expect(fam, "preprocess", dict, "family", file, required=False, default={})
    count_form = _choice(fam, "count_form", ("train", "deploy"), "family", file, required=False) or "train"
    models = _expect(data, "models", dict, "<top>", file)
    cards: dict[str, ModelCard] = {}
    for mid, m in models.items():
        where = f"models.{mid}"
        if not isinstance(m, dict):
            raise ConfigError(file, where, f"expected a table, got {type(m).__name__}",
                              fix=f"write [models.{mid}]")
        _no_unknown(m, _MODEL_KEYS, where, file)
        pre = {**fam_pre, **_expect(m, "preprocess", dict, where, file, required=False, default={})}
        tiers = _expect(m, "tiers", list, where, file, required=False, default=[])
        for t in tiers:
            if t not in TIERS:
                raise ConfigError(file, f"{where}.tiers", f"unknown tier {t!r}", fix=f"use {list(TIERS)}")
        rows = _expect(m, "published", list, where, file, required=False, default=[])
        cards[mid] = ModelCard(
            id=mid,
            family=family,
            timm_arch=_expect(m, "timm_arch", str, where, file),
            input_size=_expect(m, "input_size", int, where, file),
            preprocess=_parse_preprocess(pre, f"{where}.preprocess", file),
            published=tuple(_parse_row(r, f"{where}.published[{i}]", file) for i, r in enumerate(rows)),
            tiers=tuple(sorted(set(tiers) | {"full"})),
            file=file,
            count_form=count_form,
            byob=_expect(m, "byob", dict, where, file, required=False),
            claims=dict(claims),
            timm_tag=timm_tag,
            note=_expect(m, "note", str, where, file, required=False, default=""),
        )
    return cards


def load_zoo(zoo_dir: Path | str = ZOO_DIR) -> dict[str, ModelCard]:
    """Every card of every ``*.toml`` in the folder, in file then table order."""
    zoo_dir = Path(zoo_dir)
    files = sorted(zoo_dir.glob("*.toml"))
    if not files:
        raise ConfigError(zoo_dir, "-", "no *.toml model cards found", fix="point at fixtures/zoo")
    cards: dict[str, ModelCard] = {}
    for f in files:
        for mid, card in load_family_file(f).items():
            if mid in cards:
                raise ConfigError(f, f"models.{mid}", f"id also defined in {cards[mid].file.name}",
                                  fix="model ids must be unique across files")
            cards[mid] = card
    return cards


def select(cards: dict[str, ModelCard], ids: Iterable[str] | None = None, tier: str = "smoke") -> list[ModelCard]:
    """Cards chosen by explicit ids (any tier) or else by tier. Unknown ids are a usage error."""
    if ids:
        ids = list(ids)
        unknown = [i for i in ids if i not in cards]
        if unknown:
            raise UnknownModelError(unknown, list(cards))
        return [cards[i] for i in ids]
    if tier not in TIERS:
        raise ValueError(f"--tier {tier!r}: expected one of {list(TIERS)}")
    return [c for c in cards.values() if tier in c.tiers]


class UnknownModelError(ValueError):
    def __init__(self, unknown: list[str], valid: list[str]):
        self.unknown, self.valid = unknown, valid
        super().__init__(f"unknown model id(s) {unknown}; valid ids: {', '.join(valid)}")
