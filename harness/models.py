"""Reference models: timm by architecture name, seeded from the model id; user checkpoints.

Without a checkpoint (the embedded default) timm's random init is degenerate: repvgg_a0
and hrnet_w18 predict one class for every image, and ResNeSt's zero-initialised last BN
(``zero_init_last``) kills every residual branch. So the default model is *recalibrated*:
BN affine parameters are mildly randomised, then BN statistics are re-estimated on the
embedded calibration images (train mode, ``momentum=None`` = cumulative average), then
eval. Checkpoint weights are used exactly as given.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import InputError
from .zoo import ModelCard


def seed_for(model_id: str) -> int:
    """A test's model depends on its id only, never on test order or selection."""
    return zlib.crc32(model_id.encode()) & 0x7FFFFFFF


def create_architecture(card: ModelCard) -> nn.Module:
    """The card's architecture with random (seeded) init, in eval mode."""
    import timm

    torch.manual_seed(seed_for(card.id))
    model: nn.Module
    if card.byob:
        from timm.models import byobnet

        # timm has no repvgg_b1g2: the same RepVGG block config timm uses, with the
        # card's widths and groups (official RepVGG groups every other layer: timm does too)
        cfg = byobnet.ByoModelCfg(
            blocks=byobnet._rep_vgg_bcfg(wf=tuple(card.byob["wf"]), groups=int(card.byob["groups"])),
            stem_type="rep", stem_chs=64)
        model = byobnet.ByobNet(cfg, num_classes=1000)
    else:
        model = timm.create_model(card.timm_arch, pretrained=False, num_classes=1000)
    return model.eval()


# --- checkpoints ------------------------------------------------------------------------

def load_state_dict_file(path: Path | str) -> dict[str, torch.Tensor]:
    """A checkpoint as a flat state dict, never unpickling arbitrary objects.

    ``.safetensors`` via safetensors; anything else via ``torch.load(weights_only=True)``.
    Common wrappers (``state_dict``, ``model``, ``module.`` prefixes) are unwrapped.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory, not a checkpoint file", fix="name the .pth / .safetensors file inside it")
    if not path.is_file():
        raise InputError(path, "checkpoint file not found", fix="check the path in the manifest or --weights-dir")
    if path.stat().st_size == 0:
        raise InputError(path, "is an empty file (0 bytes), not a checkpoint",
                         fix="save it again: torch.save(model.state_dict(), path) or safetensors")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any
        try:
            sd = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise InputError(path, f"not a valid safetensors file ({e})",
                             fix="re-save with safetensors.torch.save_file") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(
                path,
                f"refused to load: not a plain tensor checkpoint ({type(e).__name__}: {refusal_reason(e)})",
                fix="save only tensors: torch.save(model.state_dict(), path) or use .safetensors; "
                    "pickled objects are never unpickled") from None
        sd = obj
        for key in ("state_dict", "model", "model_ema", "module"):
            if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise InputError(path, "checkpoint is not a mapping of parameter names to tensors",
                             fix="save model.state_dict()")
    return {re.sub(r"^module\.", "", k): v for k, v in sd.items()}


def refusal_reason(e: BaseException, limit: int = 400) -> str:
    """What ``torch.load(weights_only=True)`` objected to, in whole sentences: the line naming
    the offending global ("Unsupported global: GLOBAL posix.system ...") rather than torch's
    preamble advising ``weights_only=False`` (which the harness never does)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    telling = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln or "WeightsUnpickler" in ln]
    text = " ".join(telling) if telling else (lines[0] if lines else type(e).__name__)
    text = text.replace("WeightsUnpickler error: ", "")
    if len(text) > limit:  # cut at a sentence end, never mid-sentence
        cut = text.rfind(". ", 0, limit)
        text = text[:cut + 1] if cut > 0 else text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def official_repvgg_to_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the official RepVGG repo's names (``stageN.i.rbr_*``, ``linear``) onto timm's ByobNet.

    stage0 is timm's stem; stage1..4 are ``stages.0..3``. Branches: ``rbr_dense`` ->
    ``conv_kxk``, ``rbr_1x1`` -> ``conv_1x1``, ``rbr_identity`` -> ``identity``,
    ``rbr_reparam`` -> ``reparam_conv`` (deploy form); ``linear`` -> ``head.fc``.
    """
    if not any(".rbr_" in k or k.startswith("linear.") for k in sd):
        return dict(sd)
    out = {}
    for k, v in sd.items():
        nk = re.sub(r"^stage0\.", "stem.", k)
        nk = re.sub(r"^stage([1-4])\.", lambda m: f"stages.{int(m.group(1)) - 1}.", nk)
        nk = (nk.replace("rbr_dense.", "conv_kxk.").replace("rbr_1x1.", "conv_1x1.")
                .replace("rbr_identity.", "identity.").replace("rbr_reparam.", "reparam_conv."))
        nk = re.sub(r"^linear\.", "head.fc.", nk)
        out[nk] = v
    return out


def load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Strict load with a report a user can act on: missing, unexpected, mis-shaped keys."""
    sd = official_repvgg_to_timm(sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    misshaped = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                parts.append(f"{len(keys)} {label} (first: {', '.join(keys[:4])})")
        raise InputError(source, "checkpoint does not fit the architecture: " + "; ".join(parts),
                         fix="check the model id / architecture the checkpoint was trained for")
    filled = {k: sd.get(k, own[k]) for k in own}
    model.load_state_dict(filled, strict=True)


def state_digest(model: nn.Module) -> str:
    """Content digest of the weights (for cache keys)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --- the embedded default: recalibration ------------------------------------------------

# The BN that ends a residual branch (timm zero-initialises it: ResNeSt's bn3; HRNet and
# RepVGG have none) gets weights x this gain. With gain 1 every branch adds as much as its
# shortcut and the recalibrated random resnest50 is chaotic: fp32 itself flipped top-1 on 29%
# of the eval images under +-2 grey levels of input noise, and per-layer int8 noise grew to a
# 4.8 dB logit SQNR. Trained ResNets keep these gains small; at 0.2 the flip rate is 11.5%
# (hrnet_w18_small_v1 24%, repvgg_a0 13.5%) and fp32 predicts 40 distinct classes, not 24.
RESIDUAL_BRANCH_GAIN = 0.2
# Part of every cached reference's key: a change here rebuilds the references.
RECIPE = f"bn-0.25/branch-{RESIDUAL_BRANCH_GAIN}"


def randomise_bn(model: nn.Module, seed: int, scale: float = 0.25) -> None:
    """Mildly randomise BN affine parameters (weight ~ 1 +- scale, bias ~ N(0, scale/2)).

    Mild on purpose: strong randomisation makes deep nets chaotic (fp32 vs fp64 differ by
    100%), and every tolerance here is set against a float64 noise floor.
    """
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                # timm zero-initialises the BN that ends a residual branch (ResNeSt's bn3):
                # those get a small gain, as trained ResNets have there (see RESIDUAL_BRANCH_GAIN)
                ends_branch = bool(torch.all(m.weight == 0))
                m.weight.copy_(1.0 + scale * (2 * torch.rand(m.weight.shape, generator=g) - 1))
                if ends_branch:
                    m.weight.mul_(RESIDUAL_BRANCH_GAIN)
                m.bias.copy_(0.5 * scale * torch.randn(m.bias.shape, generator=g))


def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Re-estimate BN running statistics on images: train mode, cumulative average."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m in bns:
        m.momentum = 0.1
    model.eval()


def batchnorm_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state of every BatchNorm (affine weights and running statistics): all that
    ``randomise_bn`` and ``recalibrate_bn`` change of the seeded architecture."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for k, v in m.state_dict().items():
                out[f"{name}.{k}" if name else k] = v.detach().contiguous().clone()
    return out


def load_batchnorm_tensors(model: nn.Module, tensors_file: Path, record_file: Path) -> str | None:
    """Put ``batchnorm_tensors`` from ``tensors_file`` into the freshly seeded ``model``; None when
    the whole state then has the digest ``record_file`` holds, else what differs (a message)."""
    import json

    from safetensors.torch import load_file

    tensors = load_file(str(tensors_file))
    if set(tensors) != set(batchnorm_tensors(model)):
        return f"holds other BatchNorm tensors than {type(model).__name__}'s ({len(tensors)} stored)"
    model.load_state_dict(tensors, strict=False)
    want = json.loads(record_file.read_text())["state_digest"]
    got = state_digest(model)
    if got != want:
        return f"gives state digest {got}, not the {want} it was built with (the seeded init differs here)"
    return None


def build_reference(card: ModelCard, checkpoint: Path | str | None = None,
                    calib: torch.Tensor | None = None, batch_size: int = 32) -> nn.Module:
    """The reference model in eval mode: checkpoint weights as given, else recalibrated init."""
    model = create_architecture(card)
    if checkpoint is not None:
        load_into(model, load_state_dict_file(checkpoint), checkpoint)
        return model.eval()
    randomise_bn(model, seed_for(card.id))
    if calib is not None and len(calib):
        recalibrate_bn(model, calib.split(batch_size))
    return model.eval()


def deploy_form(model: nn.Module) -> nn.Module:
    """timm's re-parameterized copy (RepVGG: one 3x3 conv per block); other models unchanged."""
    import copy

    from timm.utils import reparameterize_model

    return reparameterize_model(copy.deepcopy(model).eval())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
