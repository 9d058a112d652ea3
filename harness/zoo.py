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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import tomllib
from pydantic import Field, WrapValidator, model_validator

from .config import Expect, OneOf, Strict, problem, validate
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


# --- validation: the file's model (harness/config.py) -------------------------------------

def _printed(value: Any, inner: Callable[[Any], Any]) -> Printed:
    """A published figure keeps how it was printed (TOML floats are parsed as Printed)."""
    inner(value)
    return value if isinstance(value, Printed) else Printed(str(value))


Int = Annotated[int, Expect("int")]
Str = Annotated[str, Expect("str")]
Figure = Annotated[float, Expect("int or float"), WrapValidator(_printed)]
Triple = Annotated[list[float], Field(min_length=3, max_length=3), Expect("a list of 3 numbers", fix="write it as [r, g, b]")]


class _Preprocess(Strict):
    pipeline: Annotated[str, OneOf(PIPELINES)]
    crop: Int
    interpolation: Annotated[str, OneOf(INTERPOLATIONS)]
    mean: Triple
    std: Triple
    resize: Int | None = None

    @model_validator(mode="after")
    def _resize_with_its_pipeline(self) -> _Preprocess:
        if self.pipeline == "resize_then_crop" and self.resize is None:
            raise problem("missing required key 'resize' (pipeline 'resize_then_crop')", fix="add resize = ...",
                          key="resize")
        return self


class _Row(Strict):
    sources: list[Annotated[str, OneOf(SOURCES)]]
    name: Str
    seed: Str
    top1: Figure | None = None
    top5: Figure | None = None
    params_m: Figure | None = None
    flops_g: Figure | None = None
    flops_convention: Annotated[str, OneOf(FLOPS_CONVENTIONS)] | None = None
    weights: Str | None = None
    input_size: Int | None = None
    reference_top1: Figure | None = None
    reference_top5: Figure | None = None
    latency_ms: dict[str, list[Annotated[float, Expect("int or float")]]] = {}
    latency_batches: list[Int] = []
    note: Str = ""

    @model_validator(mode="after")
    def _paired_keys(self) -> _Row:
        if self.flops_g is not None and self.flops_convention is None:
            raise problem("missing required key 'flops_convention' (the row has flops_g)",
                          fix=f"add flops_convention = one of {list(FLOPS_CONVENTIONS)}", key="flops_convention")
        if self.latency_ms and not self.latency_batches:
            raise problem("missing required key 'latency_batches' (the row has latency_ms)",
                          fix="add latency_batches = [1, 4, 8]", key="latency_batches")
        for k, v in self.latency_ms.items():
            if len(v) != len(self.latency_batches):
                raise problem(f"expected a list of {len(self.latency_batches)} numbers (one per latency_batches entry), "
                              f"got {v!r}", fix="give one figure per batch size", key=f"latency_ms.{k}")
        return self


class _Model(Strict):
    timm_arch: Str
    input_size: Int
    preprocess: _Preprocess  # the family's, with the model's keys over it
    tiers: list[Annotated[str, OneOf(TIERS)]] = []
    published: list[_Row] = []
    byob: dict[str, Any] | None = None
    note: Str = ""


class _Family(Strict):
    name: Str
    seed: Str = ""
    preprocess: dict[str, Any] = {}
    count_form: Annotated[str, OneOf(("train", "deploy"))] = "train"
    export_note: Str = ""
    claims: dict[str, Any] = {}
    timm_tag: Str = ""


class FamilyFile(Strict):
    """``fixtures/zoo/<family>.toml`` (the module docstring shows it)."""

    family: _Family
    models: dict[str, _Model]

    @model_validator(mode="before")
    @classmethod
    def _family_preprocess_under_each_model(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            return data
        fam = data.get("family")
        fam_pre = fam.get("preprocess", {}) if isinstance(fam, dict) else {}
        if not isinstance(fam_pre, dict):
            return data  # reported at family.preprocess
        models = {mid: ({**m, "preprocess": {**fam_pre, **m["preprocess"]}} if isinstance(m.get("preprocess"), dict)
                        else m if "preprocess" in m else {**m, "preprocess": dict(fam_pre)}) if isinstance(m, dict) else m
                  for mid, m in data["models"].items()}
        return {**data, "models": models}


def _row(r: _Row) -> PublishedRow:
    return PublishedRow(
        sources=tuple(r.sources), name=r.name, seed=r.seed, params_m=r.params_m, flops_g=r.flops_g,
        flops_convention=r.flops_convention, top1=r.top1, top5=r.top5, weights=r.weights, input_size=r.input_size,
        reference_top1=r.reference_top1, reference_top5=r.reference_top5,
        latency_ms={k: tuple(float(x) for x in v) for k, v in r.latency_ms.items()},
        latency_batches=tuple(r.latency_batches))


def _preprocess(p: _Preprocess) -> Preprocess:
    return Preprocess(pipeline=p.pipeline, crop=p.crop, interpolation=p.interpolation,
                      mean=(float(p.mean[0]), float(p.mean[1]), float(p.mean[2])),
                      std=(float(p.std[0]), float(p.std[1]), float(p.std[2])), resize=p.resize)


def load_family_file(file: Path) -> dict[str, ModelCard]:
    file = Path(file)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"), parse_float=Printed)
    except FileNotFoundError:
        raise ConfigError(file, "-", "file not found", fix="check the path") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "-", f"not valid TOML: {e}", fix="fix the TOML syntax at that line") from None
    doc: FamilyFile = validate(FamilyFile, data, file, shape="harness/zoo.py")
    fam = doc.family
    return {mid: ModelCard(id=mid, family=fam.name, timm_arch=m.timm_arch, input_size=m.input_size,
                           preprocess=_preprocess(m.preprocess), published=tuple(_row(r) for r in m.published),
                           tiers=tuple(sorted(set(m.tiers) | {"full"})), file=file, count_form=fam.count_form,
                           byob=dict(m.byob) if m.byob is not None else None, claims=dict(fam.claims),
                           timm_tag=fam.timm_tag, note=m.note)
            for mid, m in doc.models.items()}


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
