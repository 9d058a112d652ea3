"""RepVGG re-parameterization checks: the deploy form (one 3x3 conv per block) computes
what the training form (3x3 + 1x1 + identity branches, each with BN) computes.

Plain functions of (card, lab, record) that know nothing of pytest; each raises
:class:`CheckFailure` with the one message shape.

How "equal" is judged. Every deploy form under test (timm's ``reparameterize_model``, the
independent :mod:`harness.reparam.fusion`, the ONNX export, a user's deploy checkpoint) runs in
float32 and is compared with the training form run in **float64** (the truth). Its
``rel_max_error`` must stay within ``deploy_over_floor`` times the float64 noise floor: the
error of the float32 training form itself. Top-1 agreement is recorded but never judged:
it stays 1.0 with a 20-50% fusion error.

Where. The same float64 pass measures every block on its own (pre-activation, the block's
own float64 input): a wrong fusion is named by its block (``stages.2.5``) and the cause by
the branch its error follows (bias -> ``running_mean``/beta folding; the identity, 1x1 or
3x3 branch -> that branch's kernel).

Teeth. With timm's default BN statistics (mean 0, var 1) a fusion that ignores
``running_mean`` is invisible. The reference models here have non-trivial statistics
(recalibrated on images, or a checkpoint's); :func:`check_bugs_would_show` proves it on
every model by running two deliberately wrong fusions and requiring that they fail.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn as nn

from .. import flops as flops_mod
from ..cardchecks import within_published
from ..compare import CheckFailure, check, message, min_cosine, rel_max_error, top1_agreement
from ..errors import ConfigError, InputError
from ..models import count_params, deploy_form, load_state_dict_file, official_repvgg_to_timm
from ..tolerances import tolerance
from ..zoo import ModelCard, PublishedRow
from . import fusion as reparam

if TYPE_CHECKING:  # the check signature's types (harness/testing.py); no import at run time
    from ..testing import LabLike, Record

SECTION = "reparam"
FUSION_CODE = {"timm": "timm.utils.reparameterize_model (RepVggBlock._get_kernel_bias)",
               "independent": "harness/reparam/fusion.py Fusion",
               "onnx": "harness/export/exporter.py export of timm's deploy form",
               "checkpoint": "the manifest's deploy_checkpoint"}


# --- measurement ----------------------------------------------------------------------------

@dataclass
class BlockFigures:
    block: str
    error: float  # fused fp32 vs training fp64, pre-activation, on the block's own input
    floor: float  # training fp32 vs training fp64, same place
    groups: int

    @property
    def ratio(self) -> float:
        return self.error / self.floor if self.floor > 0 else (0.0 if self.error == 0 else float("inf"))


@dataclass
class FormFigures:
    """One deploy form against the training form."""

    label: str
    logits: np.ndarray
    error: float
    floor: float
    cosine: float
    top1: float
    blocks: list[BlockFigures] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.error / self.floor if self.floor > 0 else (0.0 if self.error == 0 else float("inf"))


@dataclass
class TrainingTruth:
    x: torch.Tensor
    logits64: np.ndarray
    logits32: np.ndarray

    @property
    def floor(self) -> float:
        return rel_max_error(self.logits32, self.logits64)


def _branch_sum(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's pre-activation as the training form computes it (3x3 + 1x1 + identity)."""
    b: Any = block  # its branches are submodules (nn.Module.__getattr__ types them Tensor | Module)
    out = b.conv_kxk(x)
    if b.conv_1x1 is not None:
        out = out + b.conv_1x1(x)
    if b.identity is not None:
        out = out + b.identity(x)
    return out


ConvsByBlock = dict[str, nn.Conv2d]


def deploy_convs(model: nn.Module) -> ConvsByBlock:
    """Block name -> fused conv for a plain model or timm's deploy form (``reparam_conv``)."""
    if isinstance(model, reparam.PlainRepVGG):
        return dict(model.convs())
    return {n: cast(nn.Conv2d, m.reparam_conv) for n, m in model.named_modules()
            if isinstance(getattr(m, "reparam_conv", None), nn.Conv2d)}


def measure(train: nn.Module, x: torch.Tensor,
            candidates: dict[str, tuple[nn.Module, ConvsByBlock]]) -> tuple[TrainingTruth, dict[str, FormFigures]]:
    """Run the training form in float64 once; measure every candidate end to end and per block.

    ``candidates``: label -> (deploy model in float32, its fused conv per training block).
    """
    train = train.eval()
    blocks = reparam.rep_blocks(train)
    train32 = dict(blocks)
    train64 = copy.deepcopy(train).double().eval()
    per_block: dict[str, list[BlockFigures]] = {label: [] for label in candidates}
    inputs: dict[str, torch.Tensor] = {}
    hooks = []

    def remember_input(name):
        def hook(module, args):
            inputs[name] = args[0]
        return hook

    def judge_preactivation(name):
        # the block's act (ReLU) receives the branch sum: measure before it runs (in place)
        def hook(module, args):
            pre64 = args[0]
            x32 = inputs.pop(name).float()
            ref32 = _branch_sum(train32[name], x32)
            floor = rel_max_error(ref32.numpy(), pre64.numpy())
            groups = getattr(cast(nn.Module, train32[name].conv_kxk).conv, "groups", 1)
            for label, (_, convs) in candidates.items():
                conv = convs.get(name)
                err = float("inf") if conv is None else rel_max_error(conv(x32).numpy(), pre64.numpy())
                per_block[label].append(BlockFigures(name, err, floor, groups))
        return hook

    for name, block in reparam.rep_blocks(train64):
        hooks.append(block.register_forward_pre_hook(remember_input(name)))
        hooks.append(cast(nn.Module, block.act).register_forward_pre_hook(judge_preactivation(name)))
    try:
        with torch.no_grad():
            logits64 = train64(x.double()).numpy()
            logits32 = train(x).numpy()
    finally:
        for h in hooks:
            h.remove()
    truth = TrainingTruth(x, logits64, logits32)
    forms = {}
    with torch.no_grad():
        for label, (model, _) in candidates.items():
            out = model.eval()(x).float().numpy()
            forms[label] = FormFigures(label, out, rel_max_error(out, logits64), truth.floor,
                                       min_cosine(out, logits64), top1_agreement(out, logits64), per_block[label])
    del train64
    return truth, forms


# --- known mistakes: the catalogue a failing block is matched against ---------------------

class MeanBlindFusion(reparam.Fusion):
    """running_mean ignored: the bug timm's default BN statistics (mean 0, var 1) hide."""

    def fold_bn(self, kernel, bn):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return kernel * scale.reshape(-1, 1, 1, 1), bn.bias.clone()


class EpsBlindFusion(reparam.Fusion):
    """BN eps left out of the scale: the subtlest bug of the seed's recipe."""

    def fold_bn(self, kernel, bn):
        scale = bn.weight / torch.sqrt(bn.running_var)
        return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class IdentityDroppedFusion(reparam.Fusion):
    def identity_kernel(self, channels, groups, size, like):
        return torch.zeros((channels, channels // groups, *size), dtype=like.dtype)


class IdentityUngroupedFusion(reparam.Fusion):
    """A dense identity (channel c at input c) cut to the grouped weight's width."""

    def identity_kernel(self, channels, groups, size, like):
        kernel = torch.zeros((channels, channels // groups, *size), dtype=like.dtype)
        for c in range(min(channels, channels // groups)):
            kernel[c, c, size[0] // 2, size[1] // 2] = 1.0
        return kernel


class OneByOneCornerFusion(reparam.Fusion):
    def pad_to(self, kernel, size):
        return torch.nn.functional.pad(kernel, [0, size[1] - kernel.shape[3], 0, size[0] - kernel.shape[2]])


class OneByOneDroppedFusion(reparam.Fusion):
    def pad_to(self, kernel, size):
        return torch.zeros((*kernel.shape[:2], *size), dtype=kernel.dtype)


class IdentityCornerFusion(reparam.Fusion):
    """The identity's 1 written into the 3x3's top-left tap (a shifted copy of the input). Not
    in :data:`KNOWN_MISTAKES` on purpose: the self-tests plant it to show that a mistake outside
    the catalogue is still traced to its branch."""

    def identity_kernel(self, channels, groups, size, like):
        kernel = torch.zeros((channels, channels // groups, *size), dtype=like.dtype)
        for c in range(channels):
            kernel[c, c % (channels // groups), 0, 0] = 1.0
        return kernel


class InOneBlock(reparam.Fusion):
    """``mistake`` (a Fusion class) in block ``block`` only; every other block fused right."""

    def __init__(self, block: str, mistake: type[reparam.Fusion] = OneByOneCornerFusion):
        self.block, self.mistake = block, mistake

    def fuse_block(self, name, block):
        return (self.mistake() if name == self.block else reparam.Fusion()).fuse_block(name, block)


CONTROLS = {"running_mean ignored": MeanBlindFusion, "BN eps dropped": EpsBlindFusion}
KNOWN_MISTAKES = {
    **CONTROLS,
    "the identity branch missing": IdentityDroppedFusion,
    "the identity kernel written for groups=1 in a grouped conv": IdentityUngroupedFusion,
    "the 1x1 kernel padded into a corner instead of the centre tap": OneByOneCornerFusion,
    "the 1x1 branch missing": OneByOneDroppedFusion,
}
# Every planted fusion mistake (the self-tests plant these; tests/test_reparam_checks.py):
# the catalogue a failing block is matched against, plus one it must trace without a name.
PLANTED_MISTAKES = {**KNOWN_MISTAKES, "the identity's 1 in the top-left tap": IdentityCornerFusion}


def diagnose(train: nn.Module, conv: nn.Module, figures: BlockFigures, x_block: torch.Tensor) -> str:
    """Why a block's fused conv is wrong.

    First against the catalogue of known mistakes: the block fused with each one; a
    candidate within the block tolerance of one of them is named by it. Otherwise: a bias
    error (zero-input probe) or the branch whose contribution the kernel error follows.
    """
    block = figures.block
    tb32 = dict(reparam.rep_blocks(train))[block]
    tb = copy.deepcopy(tb32).double()
    fused = copy.deepcopy(conv).double()
    xb = x_block.double()
    with torch.no_grad():
        out = fused(xb).numpy()
        limit = tolerance(SECTION, "block_over_floor") * figures.floor
        for mistake, fusion in KNOWN_MISTAKES.items():
            wrong = fusion().fuse_block(block, tb32).conv().double()
            if rel_max_error(out, wrong(xb).numpy()) <= limit:
                return (f"block {block} computes what a fusion with {mistake} computes (within "
                        f"{tolerance(SECTION, 'block_over_floor'):g}x its floor)")
        zero = torch.zeros_like(xb[:1])
        bias_err = (fused(zero) - _branch_sum(tb, zero))[0, :, 0, 0]
        pre = _branch_sum(tb, xb)
        kernel_err = (fused(xb) - fused(zero)) - (pre - _branch_sum(tb, zero))
        scale = float(pre.abs().max()) or 1.0
        bias_rel = float(bias_err.abs().max()) / scale
        kernel_rel = float(kernel_err.abs().max()) / scale
        if bias_rel >= kernel_rel:
            return (f"the fused bias of {block} is off by {bias_rel:.3g} of the block's output scale while its "
                    f"kernel is off by {kernel_rel:.3g}: BN running_mean / beta not folded as "
                    "beta - running_mean * gamma / sqrt(running_var + eps)")
        # the error of a wrongly fused kernel follows the branch that was folded wrong
        linear = {}
        for branch in reparam.BRANCHES:
            mod = getattr(tb, branch)
            if mod is not None:
                linear[branch] = mod(xb) - mod(zero)
        e = kernel_err.flatten()
        cos = {b: float(torch.dot(e, v.flatten()) / (e.norm() * v.norm() + 1e-300)) for b, v in linear.items()}
        best = max(cos, key=lambda b: abs(cos[b]))
        groups = getattr(cast(nn.Module, tb.conv_kxk).conv, "groups", 1)
        hint = {"identity": f"the identity written as a 3x3 kernel (centre tap, {groups} group(s)) missing or wrong",
                "conv_1x1": "the 1x1 kernel not zero-padded to the 3x3's centre tap, or its BN not folded",
                "conv_kxk": "the BN scale gamma / sqrt(running_var + eps) folded wrongly (eps dropped?)"}[best]
        return (f"the fused kernel of {block} is off by {kernel_rel:.3g} of the block's output scale; the error "
                f"follows the {best} branch (cosine {cos[best]:+.2f}): {hint}")


def block_input(train: nn.Module, x: torch.Tensor, block: str) -> torch.Tensor:
    """The float32 training form's input to ``block`` on ``x`` (for diagnosis)."""
    got: dict[str, torch.Tensor] = {}
    target = dict(reparam.rep_blocks(train))[block]
    h = target.register_forward_pre_hook(lambda m, a: got.setdefault("x", a[0].detach().clone()))
    try:
        with torch.no_grad():
            train(x)
    finally:
        h.remove()
    return got["x"]


# --- per-model study (cached: every check of a model shares one float64 pass) ----------------

@dataclass
class Study:
    card_id: str
    truth: TrainingTruth
    forms: dict[str, FormFigures]
    weights_digest: str


def eval_images(card: ModelCard, lab) -> torch.Tensor:
    n = int(tolerance(SECTION, "eval_images"))
    x, _ = lab.inputs(card, "eval", limit=n)
    return x


def timm_deploy(train: nn.Module) -> nn.Module:
    return deploy_form(train)


def deploy_for_export(train: nn.Module) -> nn.Module:
    """The deploy form the ONNX check exports: timm's, as a deployment pipeline would."""
    return timm_deploy(train)


def independent_deploy(train: nn.Module, fusion: reparam.Fusion | None = None) -> reparam.PlainRepVGG:
    return (fusion or reparam.Fusion()).fuse(train)


def study(card: ModelCard, lab) -> Study:
    from ..models import state_digest

    train = lab.reference(card)
    digest = state_digest(train)
    # kept for every model (logits and figures: a few MB): pytest runs one check over all
    # models before the next check, and each check reads the same study
    return lab.memo("reparam.study", card.id, lambda: _measure_study(card, lab, train, digest),
                    valid=lambda s: s.weights_digest == digest)


def _measure_study(card: ModelCard, lab, train: nn.Module, digest: str) -> Study:
    x = eval_images(card, lab)
    timm_form = timm_deploy(train)
    mine = independent_deploy(train)
    candidates = {"timm": (timm_form, deploy_convs(timm_form)), "independent": (mine, deploy_convs(mine))}
    for cause, fusion in CONTROLS.items():
        control = fusion().fuse(train)
        candidates[f"control: {cause}"] = (control, deploy_convs(control))
    truth, forms = measure(train, x, candidates)
    return Study(card.id, truth, forms, digest)


# --- judging ------------------------------------------------------------------------------

def over_tolerance(form: FormFigures) -> list[BlockFigures]:
    return [b for b in form.blocks if not b.ratio <= tolerance(SECTION, "block_over_floor")]


def passes(form: FormFigures) -> bool:
    """The verdict: end-to-end error within the floor multiple, cosine, and every block."""
    return (form.ratio <= tolerance(SECTION, "deploy_over_floor") and form.cosine >= tolerance(SECTION, "min_cosine")
            and not over_tolerance(form))

def judge(card_id: str, form: FormFigures, record, what: str, where: str,
          train: nn.Module | None = None, x: torch.Tensor | None = None,
          convs: Callable[[], ConvsByBlock] | None = None) -> None:
    """Gate a deploy form: end-to-end error vs the floor, cosine, and every block vs its floor.

    ``convs`` (called only on a failure) gives the form's fused conv per block, for diagnosis.
    """
    over = tolerance(SECTION, "deploy_over_floor")
    block_over = tolerance(SECTION, "block_over_floor")
    need_cos = tolerance(SECTION, "min_cosine")
    bad_blocks = over_tolerance(form)
    worst = max(form.blocks, key=lambda b: b.ratio, default=None)
    figures = {
        "rel_max_error": form.error, "noise_floor_fp64": form.floor, "error_over_floor": round(form.ratio, 3),
        "min_cosine": form.cosine, "top1_agreement_not_judged": form.top1, "blocks": len(form.blocks),
        "blocks_over_tolerance": len(bad_blocks),
        "worst_block": worst.block if worst else None,
        "worst_block_error_over_floor": round(worst.ratio, 3) if worst else None,
    }
    record(**figures)
    if passes(form):
        return
    first = bad_blocks[0] if bad_blocks else worst
    place = f"{where}; block {first.block}" if first else where
    if first is not None and bad_blocks:
        place += f" (first of {len(bad_blocks)} blocks over {block_over:g}x their floor: error {first.error:.3g}" \
                 f" = {first.ratio:.3g}x its floor {first.floor:.2g})"
    cause = f"block {first.block} does not reproduce its training branches" if first else "see the figures"
    fused = convs() if convs is not None and first is not None and bad_blocks else {}
    if first is not None and train is not None and x is not None and first.block in fused:
        cause = diagnose(train, fused[first.block], first, block_input(train, x, first.block))
    figures["first_bad_block"] = first.block if first else None
    record(first_bad_block=figures["first_bad_block"])
    raise CheckFailure(message(
        f"{what} of {card_id}: rel_max_error vs the float64 training form",
        f"{form.error:.3g} ({form.ratio:.3g}x the fp64 noise floor {form.floor:.2g}; min cosine {form.cosine:.9f})",
        f"<= {over:g}x floor and cosine >= {need_cos}", place, cause=cause), figures)


def check_bugs_would_show(card: ModelCard, lab: LabLike, record: Record) -> None:
    """The models' BN statistics are non-trivial enough that wrong fusions fail this suite."""
    s = study(card, lab)
    over = tolerance(SECTION, "deploy_over_floor")
    train = lab.reference(card)
    bns = [m for m in train.modules() if isinstance(m, nn.BatchNorm2d)]
    # eval-form BNs: running statistics are tensors
    mean_spread = max(float(cast(torch.Tensor, m.running_mean).abs().max()) for m in bns)
    var_spread = max(float((cast(torch.Tensor, m.running_var) - 1).abs().max()) for m in bns)
    figures = {"bn_max_abs_running_mean": mean_spread, "bn_max_abs_running_var_minus_1": var_spread,
               "noise_floor_fp64": s.truth.floor}
    hidden = []
    for cause in CONTROLS:
        f = s.forms[f"control: {cause}"]
        key = cause.replace(" ", "_")
        figures[f"control_{key}_error_over_floor"] = round(f.ratio, 1)
        figures[f"control_{key}_top1_agreement"] = f.top1
        figures[f"control_{key}_blocks_over_tolerance"] = len(over_tolerance(f))
        if passes(f):
            hidden.append(f"{cause} ({f.ratio:.3g}x floor, {len(over_tolerance(f))} blocks over)")
    record(**figures)
    check(not hidden, f"deliberately wrong fusions of {card.id} seen by the comparison", f"hidden: {', '.join(hidden)}",
          f"every control failing (> {over:g}x the fp64 noise floor, or a block over its own)",
          "lab.reference: BN statistics (harness/models.py randomise_bn + recalibrate_bn, or the checkpoint)",
          cause=f"BN statistics too close to timm's defaults (max |running_mean| {mean_spread:.3g}, "
                f"max |running_var - 1| {var_spread:.3g}): a fusion bug would pass unnoticed", figures=figures)


def check_timm_deploy(card: ModelCard, lab: LabLike, record: Record) -> None:
    s = study(card, lab)
    train = lab.reference(card)
    judge(card.id, s.forms["timm"], record, "timm deploy form", FUSION_CODE["timm"], train, s.truth.x,
          lambda: deploy_convs(timm_deploy(train)))


def check_independent_deploy(card: ModelCard, lab: LabLike, record: Record, fusion: reparam.Fusion | None = None) -> None:
    """``fusion``: the fusion under test (default harness.reparam.fusion.Fusion; self-tests plant bugs)."""
    train = lab.reference(card)
    if fusion is None:
        form = study(card, lab).forms["independent"]
    else:
        plain = independent_deploy(train, fusion)
        _, forms = measure(train, eval_images(card, lab), {"independent": (plain, deploy_convs(plain))})
        form = forms["independent"]
    judge(card.id, form, record, "independent deploy form", FUSION_CODE["independent"], train,
          eval_images(card, lab), lambda: deploy_convs(independent_deploy(train, fusion)))


def check_fusions_agree(card: ModelCard, lab: LabLike, record: Record) -> None:
    """timm's and the independent fusion write the same kernel and bias into every block."""
    s = study(card, lab)
    train = lab.reference(card)
    theirs, ours = deploy_convs(timm_deploy(train)), deploy_convs(independent_deploy(train))
    limit = tolerance(SECTION, "fusions_weight_rel")
    rows = []
    missing = sorted(set(ours) ^ set(theirs))
    for name in ours:
        if name not in theirs:
            continue
        a, b = theirs[name], ours[name]
        shape_ok = a.weight.shape == b.weight.shape and a.groups == b.groups and a.stride == b.stride \
            and a.padding == b.padding
        w = rel_max_error(a.weight.detach().numpy(), b.weight.detach().numpy()) if shape_ok else float("inf")
        # both deploy forms' convs have a bias (timm's reparam_conv, FusedConv.conv)
        bias = (rel_max_error(cast(torch.Tensor, a.bias).detach().numpy(), cast(torch.Tensor, b.bias).detach().numpy())
                if shape_ok else float("inf"))
        rows.append((name, w, bias, shape_ok))
    logits = rel_max_error(s.forms["timm"].logits, s.forms["independent"].logits)
    worst = max(rows, key=lambda r: max(r[1], r[2]), default=None)
    bad = [r for r in rows if not max(r[1], r[2]) <= limit]
    record(blocks_compared=len(rows), blocks_only_in_one=missing, worst_block=worst[0] if worst else None,
           worst_kernel_rel=worst[1] if worst else None, worst_bias_rel=worst[2] if worst else None,
           logits_rel_max_error=logits, blocks_differing=len(bad))
    if missing:
        raise CheckFailure(message(f"blocks fused by timm and harness/reparam/fusion.py for {card.id}",
                                   f"{len(missing)} only in one", "the same blocks", FUSION_CODE["timm"],
                                   cause=f"blocks {missing[:4]} fused by one implementation only"))
    over = tolerance(SECTION, "deploy_over_floor")
    floor = s.truth.floor
    record(logits_diff_over_floor=round(logits / floor, 3) if floor > 0 else None)
    if bad:
        name, w, bias_err, shape_ok = bad[0]
        raise CheckFailure(message(
            f"fused kernel/bias of {card.id} block {name}: timm vs harness/reparam/fusion.py (rel max diff)",
            f"kernel {w:.3g}, bias {bias_err:.3g}", f"<= {limit:g}",
            f"{FUSION_CODE['timm']} vs {FUSION_CODE['independent']}; block {name} (first of {len(bad)})",
            cause="conv geometry differs (shape/groups/stride/padding)" if not shape_ok else
                  "the two fusions disagree: the deploy-vs-training checks say which one is wrong"))
    check(logits <= over * floor, f"logits of {card.id}: timm deploy form vs harness/reparam/fusion.py (rel max diff)",
          f"{logits:.3g} ({logits / floor:.3g}x the fp64 noise floor {floor:.2g})", f"<= {over:g}x floor",
          f"{FUSION_CODE['timm']} vs {FUSION_CODE['independent']}",
          cause="the same kernels in both forms, yet different outputs: the deploy forward passes differ "
                "(padding, stride, activation or head)")


def check_deploy_is_plain(card: ModelCard, lab: LabLike, record: Record) -> None:
    """Only 3x3 convs (stem included), ReLU, pooling and the classifier; no branch or BN left."""
    train = lab.reference(card)
    n_blocks = len(reparam.rep_blocks(train))
    for label, model in (("timm", timm_deploy(train)), ("independent", independent_deploy(train))):
        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        not_3x3 = [f"{n} {tuple(m.kernel_size)}" for n, m in convs if tuple(m.kernel_size) != (3, 3)]
        left = [n for n, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) or any(n.endswith(b) for b in reparam.BRANCHES)
                and not isinstance(m, nn.Identity)]
        layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        record(**{f"{label}_convs": len(convs), f"{label}_not_3x3": not_3x3[:8], f"{label}_branch_or_bn_modules":
                  left[:8], "training_blocks": n_blocks})
        where = FUSION_CODE[label]
        check(not left, f"branch/BN modules left in the {label} deploy form of {card.id}", f"{len(left)} ({left[:4]})",
              "0", where, cause="a block was not re-parameterized: its conv_kxk/conv_1x1/identity or BN remains")
        check(not not_3x3, f"non-3x3 convolutions in the {label} deploy form of {card.id}", not_3x3[:4], "none",
              where, cause="the seed's deploy model is a single path of 3x3 convs, stem included")
        check(len(convs) == n_blocks, f"3x3 convs in the {label} deploy form of {card.id}", len(convs),
              f"{n_blocks} (one per training block, stem included)", where,
              cause="a block lost or gained a convolution in the fusion")
        check(len(layers) == n_blocks + 1 and isinstance(dict(model.named_modules())[layers[-1]], nn.Linear),
              f"layers of the {label} deploy form of {card.id}", layers[-2:], "the 3x3 convs then one Linear head",
              where, cause="the head is not one linear layer after global average pooling")


def _where_row(card: ModelCard, row: PublishedRow) -> str:
    return f"{card.file.name} models.{card.id} '{row.name}' ({'/'.join(row.sources)}, seed {row.seed})"


def check_deploy_params(card: ModelCard, lab: LabLike, record: Record, row: PublishedRow) -> None:
    assert row.params_m is not None  # the suite checks only rows that publish params
    train = lab.reference(card)
    ours, theirs = count_params(independent_deploy(train)), count_params(timm_deploy(train))
    measured = ours / 1e6
    ok, allowed = within_published(measured, row.params_m, tolerance("card", "params_rel"),
                                   tolerance("card", "params_last_digit_units"))
    record(params_m_independent=round(measured, 4), params_m_timm_deploy=round(theirs / 1e6, 4),
           params_m_published=row.params_m, params_rel_diff=round((measured - row.params_m) / row.params_m, 6))
    check(ours == theirs, f"deploy params of {card.id}: harness/reparam/fusion.py vs timm", ours, theirs,
          FUSION_CODE["independent"], cause="the two deploy forms differ in size")
    check(ok, f"deploy params of {card.id}", f"{measured:.4f}M", f"{row.params_m}M +-{allowed:.4g}M",
          _where_row(card, row), cause=f"the deploy form differs from '{row.name}' by "
                                       f"{(measured - row.params_m) / row.params_m:+.3%} (width/groups?)")


def check_deploy_flops(card: ModelCard, lab: LabLike, record: Record, row: PublishedRow) -> None:
    assert row.flops_g is not None  # the suite checks only rows that publish FLOPs
    train = lab.reference(card)
    size = row.input_size or card.input_size
    measured = flops_mod.conv_linear_macs(independent_deploy(train), size) / 1e9
    theirs = flops_mod.conv_linear_macs(timm_deploy(train), size) / 1e9
    ok, allowed = within_published(measured, row.flops_g, tolerance("card", "flops_rel"),
                                   tolerance("card", "flops_last_digit_units"))
    record(deploy_gmacs_independent=round(measured, 4), deploy_gmacs_timm=round(theirs, 4),
           flops_g_published=row.flops_g, flops_rel_diff=round((measured - row.flops_g) / row.flops_g, 6))
    check(ok, f"deploy FLOPs (MACs / 1e9) of {card.id} at {size}px", f"{measured:.4f} G",
          f"{row.flops_g} G +-{allowed:.4g}", _where_row(card, row),
          cause=f"{(measured - row.flops_g) / row.flops_g:+.2%} off the published 'FLOPs (B)'")


def check_deploy_onnx(card: ModelCard, lab: LabLike, record: Record) -> None:
    """timm's deploy form exported to ONNX; ONNX Runtime's output vs the float64 training form."""
    from .. import runtimes
    from ..export import exporter as export

    s = study(card, lab)
    train = lab.reference(card)
    res = export.exported(lab, card, model=deploy_for_export(train), tag="deploy-timm")
    sess = runtimes.spec(None).prepare(res.path, lab.settings.threads)
    out = sess.run_batched(s.truth.x.numpy(), batch_size=8)
    form = FormFigures("onnx", out, rel_max_error(out, s.truth.logits64), s.truth.floor,
                       min_cosine(out, s.truth.logits64), top1_agreement(out, s.truth.logits64))
    vs_torch = rel_max_error(out, s.forms["timm"].logits)
    record(onnx=str(res.path), opset_written=res.opset_written, ort_vs_torch_deploy_rel=vs_torch)
    judge(card.id, form, record, "ONNX Runtime output of the deploy form", f"{res.path} ({FUSION_CODE['onnx']})")


# --- the user's deploy checkpoint ------------------------------------------------------------

def load_deploy_checkpoint(path, template: reparam.PlainRepVGG) -> reparam.PlainRepVGG:
    """The user's deploy state dict (timm ``reparam_conv`` or official ``rbr_reparam`` names) in
    a plain model shaped like ``template``; a mismatch is an InputError naming the file."""
    sd = official_repvgg_to_timm(load_state_dict_file(path))
    want = {k: tuple(v.shape) for k, v in reparam.deploy_state_dict(template).items()}
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want and not k.endswith("num_batches_tracked")]
    misshaped = [f"{k}: file {tuple(sd[k].shape)} vs model {want[k]}" for k in want
                 if k in sd and tuple(sd[k].shape) != want[k]]
    if missing or unexpected or misshaped:
        parts = []
        for label, keys in (("mis-shaped", misshaped), ("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} (first: {', '.join(keys[:3])})")
        hint = ""
        if any(".conv_kxk." in k or ".rbr_dense." in k for k in list(sd) + unexpected):
            hint = "; it holds training-form branches: fuse it first (timm reparameterize_model / repvgg_model_convert)"
        raise InputError(path, "deploy checkpoint does not fit the deploy form: " + "; ".join(parts) + hint,
                         fix="save the re-parameterized model's state_dict (one reparam_conv / rbr_reparam per "
                             "block) for this model id")
    bad_dtype = [k for k in want if not sd[k].is_floating_point()]
    if bad_dtype:
        raise InputError(path, f"non-float tensors {bad_dtype[:3]}", fix="save float weights")
    return reparam.plain_from_deploy_state(template, {k: v.float() for k, v in sd.items()})


def check_deploy_checkpoint(card: ModelCard, lab: LabLike, record: Record, path) -> None:
    """The manifest's ``deploy_checkpoint`` (``path``) computes what the training form built
    from the manifest's ``checkpoint`` computes."""
    if lab.checkpoint_for(card) is None:
        manifest = lab.artifacts(card).manifest or "--artifacts"
        raise ConfigError(manifest, f"models.{card.id}.checkpoint",
                          "deploy_checkpoint is checked against the training form it was fused from, "
                          "and no checkpoint is named",
                          fix=f"add checkpoint = \"<training-form weights>\" to [models.{card.id}]")
    train = lab.reference(card)
    plain = load_deploy_checkpoint(path, independent_deploy(train))
    x = eval_images(card, lab)
    _, forms = measure(train, x, {"checkpoint": (plain, deploy_convs(plain))})
    record(deploy_checkpoint=str(path))
    judge(card.id, forms["checkpoint"], record, "deploy checkpoint", f"{path}", train, x, lambda: deploy_convs(plain))
