"""Model-card checks: plain functions of (card, lab, record, ...) that know nothing of pytest.

Each raises :class:`CheckFailure` with the one message shape on a mismatch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn as nn

from . import flops as flops_mod
from .cache import memoised
from .compare import CheckFailure, check, distinct_top1, message
from .models import count_params, create_architecture, deploy_form
from .tolerances import tolerance
from .zoo import ModelCard, Printed, PublishedRow

if TYPE_CHECKING:  # the check signature's types (harness/testing.py); no import at run time
    from .testing import LabLike, Record


def measured_figures(card: ModelCard) -> dict:
    """Everything the card checks count, from one build of the architecture (weights irrelevant).

    Only numbers are kept, so a full-tier run does not hold 24 models in memory, and each
    count is one forward pass however many published rows share it.
    """
    model = create_architecture(card)
    deploy = deploy_form(model) if card.count_form == "deploy" else None
    counted = deploy if deploy is not None else model
    figures: dict[str, Any] = {"params": count_params(counted), "form": "deploy" if deploy is not None else "train",
               "upsample_modes": sorted({m.mode for m in model.modules() if isinstance(m, nn.Upsample)}),
               "flops": {}, "gmacs": {}}
    for row in card.published:
        size = row.input_size or card.input_size
        if row.flops_convention and (row.flops_convention, size) not in figures["flops"]:
            figures["flops"][(row.flops_convention, size)] = flops_mod.flops_under(row.flops_convention, model, deploy, size)
        if size not in figures["gmacs"]:
            figures["gmacs"][size] = flops_mod.reference_count(counted, size)
    return figures


def figures_of(card: ModelCard, lab=None) -> dict:
    """:func:`measured_figures`, memoised in the lab per card (numbers only: a few KB)."""
    return memoised(lab, "card.figures", card, lambda: measured_figures(card), lambda _: 1000)


def _where(card: ModelCard, row: PublishedRow) -> str:
    return f"{card.file.name} models.{card.id} '{row.name}' ({'/'.join(row.sources)}, seed {row.seed})"


def _last_digit_unit(value: float) -> float:
    """One unit of the last printed digit of a published figure (8.30 -> 0.01, 1.4 -> 0.1)."""
    if isinstance(value, Printed):
        return value.last_digit_unit
    return Printed(repr(value)).last_digit_unit


def within_published(measured: float, published: float, rel: float, digit_units: float) -> tuple[bool, float]:
    allowed = max(rel * abs(published), digit_units * _last_digit_unit(published))
    return abs(measured - published) <= allowed, allowed


def check_params(card: ModelCard, lab: LabLike, record: Record, row: PublishedRow) -> None:
    assert row.params_m is not None  # the suite checks only rows that publish params
    fig = figures_of(card, lab)
    measured = fig["params"] / 1e6
    deploy = fig["form"] == "deploy"
    ok, allowed = within_published(measured, row.params_m, tolerance("card", "params_rel"),
                                   tolerance("card", "params_last_digit_units"))
    record(params_m_measured=round(measured, 4), params_m_published=row.params_m,
           params_rel_diff=round((measured - row.params_m) / row.params_m, 6),
           params_form=fig["form"], params_allowed_m=allowed)
    form = " (deploy form)" if deploy else ""
    check(ok, f"params{form} of {card.timm_arch}", f"{measured:.4f}M",
          f"{row.params_m}M +-{allowed:.4g}M", _where(card, row),
          cause=None if ok else f"the built architecture differs from '{row.name}' by "
                                f"{(measured - row.params_m) / row.params_m:+.3%} (width/depth/groups?)")


def check_flops(card: ModelCard, lab: LabLike, record: Record, row: PublishedRow) -> None:
    assert row.flops_g is not None  # the suite checks only rows that publish FLOPs
    size = row.input_size or card.input_size
    measured = figures_of(card, lab)["flops"][(row.flops_convention, size)]
    plain = figures_of(card, lab)["gmacs"][size]
    record(flops_convention=row.flops_convention, flops_g_published=row.flops_g,
           gmacs_measured=round(plain, 4), published_over_gmacs=round(row.flops_g / plain, 4), input_size=size)
    if measured is None:
        raise CheckFailure(message(
            f"FLOPs of {card.timm_arch} under convention '{row.flops_convention}'", "no counter reproduces it",
            f"{row.flops_g} G", _where(card, row),
            cause=f"published / measured conv+linear GMACs = {row.flops_g / plain:.4f} at {size}px; "
                  "convention not identified"))
    ok, allowed = within_published(measured, row.flops_g, tolerance("card", "flops_rel"),
                                   tolerance("card", "flops_last_digit_units"))
    record(flops_g_measured=round(measured, 4), flops_rel_diff=round((measured - row.flops_g) / row.flops_g, 6))
    check(ok, f"FLOPs ({row.flops_convention}) of {card.timm_arch} at {size}px", f"{measured:.4f} G",
          f"{row.flops_g} G +-{allowed:.4g}", _where(card, row),
          cause=None if ok else f"{(measured - row.flops_g) / row.flops_g:+.2%} off the published figure")


def timm_data_config(card: ModelCard) -> dict:
    """timm's own pretrained data config for the card's architecture (no weights needed)."""
    import timm
    from timm.data import resolve_data_config

    name = card.timm_arch
    if card.byob:  # no timm config for an architecture timm does not register: use its sibling's
        name = "repvgg_b1g4"
    tagged = f"{name}.{card.timm_tag}" if card.timm_tag else name
    cfg = timm.models.get_pretrained_cfg(tagged) or timm.models.get_pretrained_cfg(name)
    return resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg else {}, use_test_size=True)


def card_view(card: ModelCard) -> dict:
    """The card's preprocessing in timm's vocabulary (crop_pct, interpolation, resize)."""
    p = card.preprocess
    resize = p.resize if p.pipeline == "resize_then_crop" else p.crop + 32
    return {"input_size": (3, card.input_size, card.input_size), "crop_size": p.crop,
            "crop_pct": round(p.crop_fraction, 4), "resize_short": resize,
            "interpolation": p.interpolation, "mean": tuple(round(x, 3) for x in p.mean),
            "std": tuple(round(x, 3) for x in p.std)}


def check_timm_data_config(card: ModelCard, lab: LabLike, record: Record) -> None:
    ours = card_view(card)
    cfg = timm_data_config(card)
    import math

    theirs = {"input_size": tuple(cfg["input_size"]), "crop_size": cfg["input_size"][-1],
              "crop_pct": round(cfg["crop_pct"], 4),
              "resize_short": math.floor(cfg["input_size"][-1] / cfg["crop_pct"]),
              "interpolation": cfg["interpolation"], "mean": tuple(round(x, 3) for x in cfg["mean"]),
              "std": tuple(round(x, 3) for x in cfg["std"])}
    record(**{f"card_{k}": v for k, v in ours.items()}, **{f"timm_{k}": v for k, v in theirs.items()})
    # timm stores crop_pct to 3 decimals (0.909 for 320/352): compare it at that precision;
    # the resize side it implies (exact) is compared separately
    differ = [k for k in ours if (abs(ours[k] - theirs[k]) > 6e-4 if k == "crop_pct" else ours[k] != theirs[k])]
    if differ:
        found = "; ".join(f"{k}: card {ours[k]} vs timm {theirs[k]}" for k in differ)
        raise CheckFailure(message(f"preprocessing of {card.id}", f"timm config {card.timm_arch}",
                                   "the card's pipeline", f"{card.file.name} [family.preprocess] / models.{card.id}",
                                   cause=f"finding: {found}"),
                           {"finding": found})


def check_fusion_upsampling(card: ModelCard, lab: LabLike, record: Record) -> None:
    claimed = card.claims.get("fusion_upsample")
    modes = figures_of(card, lab)["upsample_modes"]
    record(fusion_upsample_card=claimed, fusion_upsample_built=modes)
    check(modes == [claimed], f"fusion upsampling mode of {card.timm_arch}", modes, [claimed],
          f"{card.file.name} [family.claims] fusion_upsample",
          cause=f"the card says '{claimed}', the built model upsamples with {modes}")


def check_diverse_predictions(card: ModelCard, lab: LabLike, record: Record) -> None:
    logits = lab.reference_logits(card, "eval")
    n = distinct_top1(logits)
    need = int(tolerance("card", "min_distinct_classes"))
    weights = "checkpoint" if lab.checkpoint_for(card) else "recalibrated seeded init"
    record(distinct_top1_classes=n, eval_images=len(logits), weights=weights)
    check(n >= need, f"distinct top-1 classes of {card.id} over {len(logits)} eval images", n, f">= {need}",
          "harness/models.py recalibration / the checkpoint",
          cause="the model predicts (almost) one class for every image: every check on it would prove nothing")
