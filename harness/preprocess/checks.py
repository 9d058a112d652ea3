"""Preprocessing parity checks: plain functions that know nothing of pytest parametrization.

Three views of one card's preprocessing:

- the card's reference (:mod:`harness.transforms`, torchvision exactly as the seed's code);
- timm's own eval transform for the architecture (``resolve_data_config`` + ``create_transform``);
- a deploy-side config under test (:mod:`harness.preprocess.deploy`: the manifest's
  ``preprocess`` JSON, or else the config derived from the card, so the implementation
  itself is under test).

Differences are measured in normalised units (what the model sees) and in grey levels
(normalised * 255 * std: one grey level is one step of the 8-bit input). A config that
does not match is diagnosed by substituting the card-derived config's keys into it, one at
a time, then in pairs and triples: the smallest substitution that restores the match names
the key at fault. Every check raises :class:`CheckFailure` with the one message shape and
calls ``record(...)`` with every figure it measures.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..cache import memoised
from ..compare import CheckFailure, Inconclusive, binomial_halfwidth, check, message, top1_agreement
from ..errors import ConfigError
from ..tolerances import tolerance
from ..transforms import reference_batch, reference_transform
from ..zoo import ModelCard, Preprocess
from . import deploy as dp
from . import images as images_mod

# Natural images in a parity set (besides the geometry probes) and images run through a model
# for the effect on predictions: enough to see every resize path, few enough that resnest269
# (about 0.5 s per image on this CPU, three passes) stays under a minute.
PARITY_NATURAL_IMAGES = 24
MODEL_EFFECT_IMAGES = 16

# Sizes (width, height) that exercise every geometric corner: 1 px, smaller than the crop,
# odd and even margins (where crop-offset rounding shows), squares, extreme aspect ratios.
GENERIC_PROBE_SIZES = ((1, 1), (2, 3), (3, 1), (7, 5), (31, 17), (100, 57), (223, 224), (224, 223),
                       (256, 341), (341, 256), (257, 257), (333, 333), (500, 375), (375, 500),
                       (640, 480), (1000, 150), (120, 900))


def probe_sizes(pre: Preprocess) -> tuple[tuple[int, int], ...]:
    """Generic probes plus the card's own: side S+32 (ECenterCrop keeps exactly S px there)
    with odd margins, where offsets land on .5 and half-even differs from half-up."""
    m = pre.crop + 32
    own: tuple[tuple[int, int], ...] = ((m, m), (m + 1, m), (m, m + 5), (2 * m + 3, 2 * m))
    if pre.resize:
        own += ((pre.resize, pre.resize + 1), (pre.resize + 3, pre.resize))
    return GENERIC_PROBE_SIZES + own


def parity_set(natural: Sequence[Image.Image], pre: Preprocess, names: Sequence[str] | None = None,
               probes: bool = True) -> list[tuple[str, Image.Image]]:
    """Natural images as they are, plus views of the first one resized to every probe size."""
    names = list(names) if names is not None else [f"image#{i}" for i in range(len(natural))]
    out = list(zip(names, natural))
    if probes and natural:
        src = natural[0].convert("RGB")
        out += [(f"probe {w}x{h}", src.resize((w, h), Image.Resampling.LANCZOS)) for w, h in probe_sizes(pre)]
    return out


def natural_images(lab=None, count: int = PARITY_NATURAL_IMAGES) -> tuple[list[Image.Image], list[str]]:
    """The lab's evaluation images (ImageNet when given, else embedded), or embedded without a lab."""
    from .. import data as data_mod

    samples = lab.images("eval").samples[:count] if lab is not None else data_mod.embedded("eval", count).samples
    imgs, kept, problems = data_mod.load_images(samples)
    if lab is not None:
        lab.data_problems.extend(p for p in problems if p not in lab.data_problems)
    return imgs, [s.name for s in kept]


# --- measuring ----------------------------------------------------------------------------

@contextlib.contextmanager
def single_threaded_torch():
    """Per-image tensor ops are tiny: on a busy 2-core machine torch's thread pool turns a
    1 ms ToTensor+Normalize into 200 ms (measured), so the references run on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference_outputs(images: Sequence[Image.Image], pre: Preprocess) -> list[np.ndarray]:
    """The card's reference, per image (sizes may differ between views, so a list)."""
    with single_threaded_torch():
        return [reference_batch([im], pre)[0].numpy() for im in images]


def transform_outputs(transform: Callable, images: Sequence[Image.Image]) -> list[np.ndarray]:
    with single_threaded_torch():
        return [np.asarray(transform(dp.decode_rgb(im)), dtype=np.float32) for im in images]


def config_outputs(cfg: dp.DeployConfig, images: Sequence[Image.Image]) -> list[np.ndarray]:
    return [dp.preprocess(cfg, im) for im in images]


def _grey_scale(std: Sequence[float]) -> np.ndarray:
    """Normalised units -> grey levels, per channel (one grey level = 1 / 255 / std)."""
    return (255.0 * np.asarray(std, np.float64))[:, None, None]


def pixel_stats(outs: Sequence[np.ndarray], refs: Sequence[np.ndarray], std: Sequence[float]) -> dict[str, Any]:
    """max/mean |out - ref| in normalised units and grey levels; shape mismatches counted."""
    shape_mismatch = [i for i, (o, r) in enumerate(zip(outs, refs)) if o.shape != r.shape]
    if shape_mismatch:
        i = shape_mismatch[0]
        return {"images": len(refs), "shape_mismatch": len(shape_mismatch),
                "shape": tuple(outs[i].shape), "reference_shape": tuple(refs[i].shape),
                "max_grey": float("inf"), "mean_grey": float("inf"), "max_norm": float("inf"),
                "mean_norm": float("inf"), "worst_image": i}
    scale = _grey_scale(std)
    max_norm = max_grey = 0.0
    sum_norm = sum_grey = 0.0
    count = 0
    worst = 0
    for i, (o, r) in enumerate(zip(outs, refs)):
        d = np.abs(o.astype(np.float64) - r.astype(np.float64))
        if not np.all(np.isfinite(d)):
            d = np.where(np.isfinite(d), d, np.inf)
        g = d * scale
        if g.max() > max_grey:
            max_grey, worst = float(g.max()), i
        max_norm = max(max_norm, float(d.max()))
        sum_norm += float(d.sum())
        sum_grey += float(g.sum())
        count += d.size
    return {"images": len(refs), "shape_mismatch": 0, "max_grey": max_grey,
            "mean_grey": sum_grey / max(count, 1), "max_norm": max_norm, "mean_norm": sum_norm / max(count, 1),
            "worst_image": worst}


def _model_of(model) -> torch.nn.Module:  # callers pass a model, or a callable that builds one
    return model() if callable(model) and not isinstance(model, torch.nn.Module) else model


def logits_of(model: torch.nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 16, lab=None) -> np.ndarray:
    """The model's logits; on disk when ``lab`` built it as a reference (``cached_torch_logits``)."""
    from ..lab import cached_torch_logits

    return cached_torch_logits(model, x, lab, batch_size=batch_size)


def prediction_effect(model: torch.nn.Module, x_ref: np.ndarray, x_other: np.ndarray, std: Sequence[float],
                      noise_grey: float | None = None, seed: int = 0, lab=None) -> dict[str, Any]:
    """How much a preprocessing difference moves the model, against a noise floor.

    Noise floor: the same model on the reference input plus uniform integer noise of
    +-``noise_grey`` grey levels per pixel (a difference the model should not care about).
    Logit change is per image ||Δlogits|| / ||logits||, median over images.
    """
    noise_grey = tolerance("preprocess", "noise_floor_grey_levels") if noise_grey is None else noise_grey
    rng = np.random.default_rng(seed)
    noise = rng.integers(-int(noise_grey), int(noise_grey) + 1, size=x_ref.shape).astype(np.float32)
    noisy = x_ref + noise / _grey_scale(std).astype(np.float32)[None]
    l_ref = logits_of(model, x_ref, lab=lab)
    l_other = logits_of(model, x_other, lab=lab)
    l_noise = logits_of(model, noisy, lab=lab)

    def change(a, b):
        den = np.linalg.norm(b.astype(np.float64), axis=1)
        return float(np.median(np.linalg.norm(a.astype(np.float64) - b, axis=1) / np.where(den > 0, den, 1)))

    n = len(x_ref)
    agree = top1_agreement(l_other, l_ref)
    floor = top1_agreement(l_noise, l_ref)
    return {"effect_images": n, "top1_agreement": round(agree, 4),
            "noise_floor_top1_agreement": round(floor, 4),
            "agreement_halfwidth": round(binomial_halfwidth(agree, n), 4),
            "logit_change_median": round(change(l_other, l_ref), 5),
            "noise_floor_logit_change_median": round(change(l_noise, l_ref), 5),
            "noise_floor_grey_levels": noise_grey,
            "distinct_top1_reference": int(len(np.unique(np.argmax(l_ref, axis=1))))}


def _effect_text(e: dict[str, Any]) -> str:
    if not e:
        return "effect on predictions not measured"
    if "effect_error" in e:
        return f"effect on predictions not measured ({e['effect_error']})"
    return (f"effect on predictions over {e['effect_images']} images: top-1 agreement {e['top1_agreement']:.2f} "
            f"(noise floor +-{e['noise_floor_grey_levels']:g} grey levels: {e['noise_floor_top1_agreement']:.2f}), "
            f"median logit change {e['logit_change_median']:.2%} (noise floor {e['noise_floor_logit_change_median']:.2%})")


def _stats_text(s: dict[str, Any]) -> str:
    if s.get("shape_mismatch"):
        return f"output shape {s['shape']} on {s['shape_mismatch']}/{s['images']} images"
    return (f"{s['max_grey']:.2f} grey levels (max {s['max_norm']:.4f}, mean {s['mean_norm']:.5f} normalised units)")


# --- diagnosis ----------------------------------------------------------------------------

def _units(keys: Sequence[str]) -> list[tuple[str, ...]]:
    """Substitution units: a pipeline change brings its size key along (the config is
    invalid otherwise); every other key is its own unit."""
    keys = list(keys)
    if "pipeline" in keys:
        bundle = tuple(k for k in ("pipeline", "resize", "crop_fraction") if k in keys)
        return [bundle] + [(k,) for k in keys if k not in bundle]
    return [(k,) for k in keys]


def diagnose(cfg: dp.DeployConfig, good: dp.DeployConfig, images: Sequence[Image.Image],
             refs: Sequence[np.ndarray], std: Sequence[float], tol_grey: float,
             max_units: int = 3) -> dict[str, Any]:
    """Which keys of ``good`` restore the match when substituted into ``cfg``.

    Tries single units, then pairs, then triples; stops at the first size where some
    substitution restores the match. Returns the differing keys, the restoring key sets
    and, per single unit, the max difference left after substituting it.
    """
    differing = dp.differing_keys(cfg, good)
    units = _units(differing)
    residual: dict[str, float] = {}
    restoring: list[tuple[str, ...]] = []
    for size in range(1, min(len(units), max_units) + 1):
        for combo in itertools.combinations(units, size):
            keys = tuple(k for unit in combo for k in unit)
            try:
                trial = dp.with_keys(cfg, good, keys)
            except ConfigError:  # an invalid combination is simply not a candidate
                continue
            s = pixel_stats(config_outputs(trial, images), refs, std)
            if size == 1:
                residual["+".join(keys)] = s["max_grey"]
            if s["max_grey"] <= tol_grey:
                restoring.append(keys)
        if restoring:
            break
    return {"differing_keys": differing, "restoring": restoring, "residual_max_grey": residual}


def _hint(key: str, value: Any, good_value: Any) -> str:
    """What the usual mistake behind a key's wrong value is."""
    if key in ("mean", "std") and isinstance(value, list) and isinstance(good_value, list) \
            and all(abs(v) <= 1.0 for v in value) \
            and any(abs(v) > 1.0 for v in good_value):
        return " (0-1 units in a 0-255 config: multiply by 255)"
    if key in ("mean", "std") and isinstance(value, list) and value == list(reversed(good_value)):
        return " (channels in reverse order)"
    if key == "color":
        return " (channel order swapped: the model sees red as blue)"
    if value is None or good_value is None:
        return ""
    if key == "resize" and isinstance(value, int):
        keeps = "more" if value < good_value else "less"
        return f" (short side {value} instead of {good_value}: the crop keeps {keeps} of the image)"
    if key == "crop_fraction":
        return f" (the crop keeps {value:.4g} of the short side instead of {good_value:.4g})"
    if key == "crop_offset_rounding":
        return " (the crop shifts 1 px where the margin is odd)"
    if key == "interpolation":
        return " (a different resampling filter)"
    return ""


def _describe_keys(keys: Iterable[str], cfg: dp.DeployConfig, good: dp.DeployConfig) -> str:
    a, b = cfg.to_dict(), good.to_dict()

    def show(d, k):
        return _fmt(d[k]) if k in d else "absent"

    return ", ".join(f"'{k}' = {show(a, k)} (card: {show(b, k)}){_hint(k, a.get(k), b.get(k))}" for k in keys)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return repr(v)


def _diagnosis_text(diag: dict[str, Any], cfg: dp.DeployConfig, good: dp.DeployConfig) -> tuple[str, str]:
    """(the key(s) to look at, the named cause)."""
    if not diag["differing_keys"]:
        return ("harness/preprocess/deploy.py (the config equals the card-derived one)",
                "the config equals the card-derived config, yet its output differs: a defect in the "
                "implementation (harness/preprocess/deploy.py) or in the reference (harness/transforms.py)")
    if diag["restoring"]:
        best = diag["restoring"]
        keys = sorted({k for ks in best for k in ks}, key=dp.SEMANTIC_KEYS.index)
        alts = " or ".join("+".join(ks) for ks in best)
        return (f"key{'s' if len(keys) > 1 else ''} {', '.join(repr(k) for k in keys)}",
                f"{_describe_keys(keys, cfg, good)}; substituting the card's {alts} restores the match")
    closest = min(diag["residual_max_grey"].items(), key=lambda kv: kv[1], default=(None, None))
    keys = diag["differing_keys"]
    text = f"{_describe_keys(keys, cfg, good)}; no substitution of up to 3 keys restores the match"
    if closest[0]:
        text += f" (closest: '{closest[0]}' leaves {closest[1]:.2f} grey levels)"
    return f"keys {', '.join(repr(k) for k in keys)}", text


# --- checks -------------------------------------------------------------------------------

def deploy_config_for(card: ModelCard, lab) -> dp.DeployConfig:
    """The manifest's ``preprocess`` config for the card, else the one derived from the card."""
    path = lab.artifacts(card).get("preprocess")
    return dp.load(path) if path is not None else dp.config_from_card(card)


def check_deploy_config(card: ModelCard, cfg: dp.DeployConfig, images: Sequence[tuple[str, Image.Image]],
                        record, model=None, effect_images: int = MODEL_EFFECT_IMAGES, lab=None) -> None:
    """The deploy config reproduces the card's reference within one grey level.

    ``model``: a module, a zero-argument factory (built only when the check fails), or None.
    On a mismatch the message names the key(s) whose card value restores the match, the
    pixel difference and the effect on the model's predictions.
    """
    pre = card.preprocess
    good = dp.config_from_card(card)
    imgs = [im for _, im in images]
    refs = reference_outputs(imgs, pre)
    stats = pixel_stats(config_outputs(cfg, imgs), refs, pre.std)
    tol = tolerance("preprocess", "matching_max_grey_levels")
    record(config_source=cfg.source, config=cfg.describe(), card_config=good.describe(),
           parity_images=len(imgs), max_grey_levels=round(stats["max_grey"], 4),
           mean_grey_levels=round(stats["mean_grey"], 5), max_normalised=round(stats["max_norm"], 5),
           mean_normalised=round(stats["mean_norm"], 6), allowed_grey_levels=tol)
    if stats["max_grey"] <= tol:
        return
    diag = diagnose(cfg, good, imgs, refs, pre.std, tol)
    effect = _effect(model, card, cfg, imgs[:effect_images], lab)
    figures = {"differing_keys": diag["differing_keys"],
               "restoring_keys": ["+".join(k) for k in diag["restoring"]],
               "worst_image": images[stats["worst_image"]][0], **effect}
    record(**figures)
    where, cause = _diagnosis_text(diag, cfg, good)
    raise CheckFailure(message(f"max |deploy - card reference| of {card.id} preprocessing over {len(imgs)} images",
                               _stats_text(stats), f"<= {tol:g} grey level", f"{cfg.source} {where}",
                               cause=f"{cause}; {_effect_text(effect)}"), figures)


def _effect(model, card: ModelCard, cfg: dp.DeployConfig, imgs: Sequence[Image.Image], lab=None) -> dict[str, Any]:
    if model is None or not imgs:
        return {}
    try:
        m = _model_of(model)
        x_ref = np.stack(reference_outputs(imgs, card.preprocess))
        x_dep = dp.preprocess_batch(cfg, imgs)
        return prediction_effect(m, x_ref, x_dep, card.preprocess.std, lab=lab)
    except Exception as e:  # the pixel verdict stands; the effect is extra information
        return {"effect_error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}


def timm_data_config(card: ModelCard) -> dict:
    from ..cardchecks import timm_data_config as cfg_of

    return cfg_of(card)


def check_timm_transform(card: ModelCard, images: Sequence[tuple[str, Image.Image]], record,
                         model=None, data_config: dict | None = None, lab=None) -> None:
    """timm's own eval transform against the card's reference, pixel for pixel.

    First the harness's reading of timm's config as a deploy config must reproduce timm's
    transform exactly (else the comparison below would be of the harness); then timm's
    transform must match the card within one grey level, and where it does not, the
    message names the keys that differ (and both pipelines are recorded).
    """
    from timm.data import create_transform

    pre = card.preprocess
    dc = dict(data_config or timm_data_config(card))
    transform = create_transform(**dc)
    imgs = [im for _, im in images]
    refs = reference_outputs(imgs, pre)
    timm_out = transform_outputs(transform, imgs)
    tol = tolerance("preprocess", "matching_max_grey_levels")
    good = dp.config_from_card(card)
    try:
        timm_cfg = dp.config_from_timm(dc, f"timm eval transform of {card.timm_arch}")
    except ValueError as e:
        timm_cfg = None
        record(timm_config_note=str(e))
    stats = pixel_stats(timm_out, refs, pre.std)
    record(card_pipeline=good.describe(), timm_pipeline=timm_cfg.describe() if timm_cfg else str(dc),
           timm_transform=" | ".join(repr(t) for t in transform.transforms),
           max_grey_levels=round(stats["max_grey"], 4), mean_grey_levels=round(stats["mean_grey"], 5),
           max_normalised=round(stats["max_norm"], 5), mean_normalised=round(stats["mean_norm"], 6),
           parity_images=len(imgs))
    if timm_cfg is not None:
        own = pixel_stats(config_outputs(timm_cfg, imgs), timm_out, dc["std"])
        record(timm_as_config_max_grey_levels=round(own["max_grey"], 4))
        check(own["max_grey"] <= tol, f"max |harness config - timm transform| for {card.timm_arch}",
              _stats_text(own), f"<= {tol:g} grey level", "harness/preprocess/deploy.py config_from_timm",
              cause="the harness misreads timm's data config (timm/data/transforms_factory.py changed?)")
    if stats["max_grey"] <= tol:
        return
    if timm_cfg is not None:
        diag = diagnose(timm_cfg, good, imgs, refs, pre.std, tol)
        where, cause = _diagnosis_text(diag, timm_cfg, good)
        figures = {"differing_keys": diag["differing_keys"], "restoring_keys": ["+".join(k) for k in diag["restoring"]]}
    else:
        where, cause, figures = "timm data config", "timm's transform is not expressible as a deploy config", {}
    effect = {}
    if model is not None:
        try:
            sub = imgs[:MODEL_EFFECT_IMAGES]
            effect = prediction_effect(_model_of(model), np.stack(reference_outputs(sub, pre)),
                                       np.stack(transform_outputs(transform, sub)), pre.std, lab=lab)
        except Exception as e:
            effect = {"effect_error": f"{type(e).__name__}: {e}"}
    figures.update(effect)
    record(**figures)
    raise CheckFailure(message(f"max |timm eval transform - card reference| of {card.id} over {len(imgs)} images",
                               _stats_text(stats), f"<= {tol:g} grey level",
                               f"timm pretrained cfg of {card.timm_arch} vs {card.file.name} models.{card.id}.preprocess {where}",
                               cause=f"timm's config differs from the card: {cause}; {_effect_text(effect)}"), figures)


def resize_center_crop_of(pre: Preprocess, interpolation: str = "bilinear") -> Preprocess:
    """Resize(S+32) + CenterCrop(S): the HRNet-style pipeline with ECenterCrop(S)'s crop fraction."""
    return Preprocess(pipeline="resize_then_crop", crop=pre.crop, resize=pre.crop + 32,
                      interpolation=interpolation, mean=pre.mean, std=pre.std)


def check_ecenter_square_identity(card: ModelCard, natural: Sequence[Image.Image], record,
                                  ecenter: Callable | None = None) -> None:
    """On a square of side S+32, ECenterCrop(S) and Resize(S+32)+CenterCrop(S) are the same
    operation (a centred S x S crop, no resampling): outputs must be bit-identical."""
    pre = card.preprocess
    check(pre.pipeline == "ecenter_crop", f"pipeline of {card.id}", pre.pipeline, "ecenter_crop",
          f"{card.file.name} models.{card.id}.preprocess", cause="this comparison is about ECenterCrop cards")
    side = pre.crop + 32
    ecenter = ecenter or reference_transform(pre)
    alt = reference_transform(resize_center_crop_of(pre))
    squares = [im.convert("RGB").resize((side, side), Image.Resampling.LANCZOS) for im in natural]
    with single_threaded_torch():
        a = [ecenter(im).numpy() for im in squares]
        b = [alt(im).numpy() for im in squares]
    equal = [bool(x.shape == y.shape and np.array_equal(x, y)) for x, y in zip(a, b)]
    stats = pixel_stats(a, b, pre.std)
    record(size=pre.crop, square_side=side, square_images=len(squares), square_identical=all(equal),
           square_max_normalised=stats["max_norm"])
    check(all(equal), f"ECenterCrop({pre.crop}) vs Resize({side})+CenterCrop({pre.crop}) on {side}x{side} images",
          f"{equal.count(False)}/{len(equal)} differ ({_stats_text(stats)})", "bit-identical",
          f"harness/transforms.py ECenterCrop / {card.file.name} models.{card.id}.preprocess",
          cause=f"on a square of side S+32 both crop the centred {pre.crop}x{pre.crop} pixels without resampling; "
                "a difference means the crop fraction or the crop offsets are not what the seed's code computes")


def check_ecenter_vs_resize_crop(card: ModelCard, images: Sequence[tuple[str, Image.Image]], record,
                                 model=None, effect_images: int = MODEL_EFFECT_IMAGES, lab=None) -> None:
    """ECenterCrop(S) vs Resize(S+32)+CenterCrop(S) (bilinear) away from the S+32 square:
    pixel statistics and the effect on predictions against the noise floor. A measurement:
    it fails only if the model cannot tell images apart (then nothing was measured)."""
    pre = card.preprocess
    check(pre.pipeline == "ecenter_crop", f"pipeline of {card.id}", pre.pipeline, "ecenter_crop",
          f"{card.file.name} models.{card.id}.preprocess", cause="this comparison is about ECenterCrop cards")
    imgs = [im for _, im in images]
    natural = [i for i, (name, _) in enumerate(images) if not name.startswith("probe ")]
    refs = reference_outputs(imgs, pre)
    figures: dict[str, Any] = {"size": pre.crop, "parity_images": len(imgs), "natural_images": len(natural)}
    for label, interp in (("resize_crop_bilinear", "bilinear"), ("resize_crop_bicubic", "bicubic")):
        # bicubic isolates the order (crop-then-resize vs resize-then-crop); bilinear is the usual runtime
        alt = reference_outputs(imgs, resize_center_crop_of(pre, interp))
        s = pixel_stats(alt, refs, pre.std)
        nat = pixel_stats([alt[i] for i in natural], [refs[i] for i in natural], pre.std)
        figures.update({f"{label}_max_normalised": round(s["max_norm"], 4),
                        f"{label}_mean_normalised": round(s["mean_norm"], 5),
                        f"{label}_max_grey_levels": round(s["max_grey"], 2),
                        f"{label}_mean_grey_levels": round(s["mean_grey"], 3),
                        f"{label}_worst_image": images[s["worst_image"]][0],
                        f"{label}_natural_max_normalised": round(nat["max_norm"], 4),
                        f"{label}_natural_mean_normalised": round(nat["mean_norm"], 5)})
    if model is not None:
        sub = imgs[:effect_images]
        x_ref = np.stack(reference_outputs(sub, pre))
        x_alt = np.stack(reference_outputs(sub, resize_center_crop_of(pre)))
        e = prediction_effect(_model_of(model), x_ref, x_alt, pre.std, lab=lab)
        within = e["top1_agreement"] >= e["noise_floor_top1_agreement"] - e["agreement_halfwidth"]
        e["effect_vs_noise_floor"] = ("within" if within
                                      else "beyond")
        figures.update(e)
    record(**figures)
    if model is not None and figures["distinct_top1_reference"] < 2:
        raise Inconclusive(f"{card.id} predicts one class for all {figures['effect_images']} images: "
                           "agreement figures say nothing", figures)


# --- properties (any image) ---------------------------------------------------------------

def check_any_image(pre: Preprocess, image: Image.Image, where: str,
                    run: Callable[[dp.DeployConfig, Image.Image], np.ndarray] = dp.preprocess) -> np.ndarray:
    """Reference and the matching config on one image: (3,S,S) float32, finite, deterministic,
    same grey levels exactly and the same floats within arithmetic noise. Returns the output."""
    cfg = dp.config_from_preprocess(pre, "config matching the reference")
    s = pre.crop
    with single_threaded_torch():
        ref = reference_batch([image], pre)[0].numpy()
        ref_again = reference_batch([image], pre)[0].numpy()
    out = run(cfg, image)
    out_again = run(cfg, image)
    shape = getattr(out, "shape", None)
    check(shape == (3, s, s), "output shape", shape, (3, s, s), where,
          cause="the pipeline's layout or crop size is wrong (CHW expected)")
    check(out.dtype == np.float32, "output dtype", out.dtype, "float32", where, cause="wrong dtype")
    check(bool(np.all(np.isfinite(out))), "non-finite output values", int(np.sum(~np.isfinite(out))), 0, where,
          cause="a division by a zero std or a NaN in decoding")
    check(np.array_equal(out, out_again), "max |run 1 - run 2|", float(np.max(np.abs(out - out_again))), 0.0,
          where, cause="the pipeline is not deterministic")
    check(np.array_equal(ref, ref_again), "max |reference run 1 - run 2|", float(np.max(np.abs(ref - ref_again))),
          0.0, where, cause="the reference is not deterministic")
    scale = _grey_scale(pre.std)
    mean255 = (255.0 * np.asarray(pre.mean, np.float64))[:, None, None]
    grey_ref = np.rint(ref.astype(np.float64) * scale + mean255)
    grey_out = np.rint(out.astype(np.float64) * scale + mean255)
    differ = int(np.sum(grey_ref != grey_out))
    check(differ == 0, "pixels whose grey level differs from the reference", f"{differ} of {grey_ref.size}", 0,
          where, cause=f"the config's geometry or decoding differs from the reference "
                       f"(max {float(np.max(np.abs(grey_ref - grey_out))) if differ else 0:.0f} grey levels)")
    arith = float(np.max(np.abs(out.astype(np.float64) - ref)))
    tol = tolerance("preprocess", "arithmetic_max_normalised")
    check(arith <= tol, "max |config - reference| (normalised)", arith, f"<= {tol:g}", where,
          cause="normalisation arithmetic differs beyond float32 rounding")
    return out


def check_synthetic_image(pre: Preprocess, spec: tuple[str, int, int, int, int | None], where: str,
                          memo=None) -> None:
    """``check_any_image`` on the synthetic image ``spec`` = (mode, width, height, seed, EXIF
    orientation) describes, decoded from a file, and an orientation tag ignored as torchvision's
    loader ignores it. A case that passed for an identical pipeline in this session (``memo``:
    the lab) is not redone: both outputs are functions of the pipeline and the image alone, and
    20 of the 24 cards share one pipeline (~7 s of property examples each). A failure is not
    memoised: it is judged again, with its own card's name."""
    mode, width, height, seed, orientation = spec

    def judge() -> bool:
        image = images_mod.synthetic_image(mode, width, height, seed)
        decoded = images_mod.with_exif_orientation(image, orientation)
        here = f"{where} {mode} {width}x{height} seed={seed} orientation={orientation}"
        check_any_image(pre, decoded, here)
        if orientation is not None:  # documented: the tag is ignored, like torchvision's loader does
            check_same_output(pre, decoded, images_mod.with_exif_orientation(image, None),
                              f"EXIF orientation {orientation}", here)
        return True

    case = (repr(pre), tuple(spec), reference_batch, dp.preprocess)  # a planted function is another case
    memoised(memo, "preprocess.synthetic_case", case, judge, lambda _: 100)


def check_same_output(pre: Preprocess, a: Image.Image, b: Image.Image, what: str, where: str) -> None:
    """Two inputs the documented decisions declare equivalent (alpha dropped, EXIF orientation
    ignored) give the same output, in the reference and in the config."""
    cfg = dp.config_from_preprocess(pre, "config matching the reference")
    with single_threaded_torch():
        ra, rb = reference_batch([a], pre)[0].numpy(), reference_batch([b], pre)[0].numpy()
    ca, cb = dp.preprocess(cfg, a), dp.preprocess(cfg, b)
    for label, x, y in (("reference", ra, rb), ("config", ca, cb)):
        check(x.shape == y.shape and np.array_equal(x, y), f"max |{label}({what}) - {label}(without)|",
              float(np.max(np.abs(x - y))) if x.shape == y.shape else f"shapes {x.shape} vs {y.shape}", 0.0, where,
              cause=f"{what} changes the {label}'s output (harness/preprocess/deploy.py documents it as ignored)")
