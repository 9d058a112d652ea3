"""An independent RepVGG re-parameterization, written from the seed's description.

The seed (004): each block's 3x3 conv+BN, 1x1 conv+BN and identity+BN branches are each
fused (BN absorbed into a conv with bias), the 1x1 kernel zero-padded to 3x3 and the
identity written as a 3x3 kernel, and the three kernels and biases summed: the deploy
model is a single path of 3x3 convs.

Why a second fusion beside ``timm.utils.reparameterize_model``: a check that compares
timm's fused model with timm's training model cannot tell a shared mistake from a correct
result. This one reads only the branch modules' tensors (conv weights, BN statistics and
affine parameters) and writes them into a model of its own, :class:`PlainRepVGG`: an
``nn.Sequential`` of ``Conv2d(3x3) + ReLU`` per block, then average pooling and the
classifier. Writing into timm's deploy structure instead would reuse timm's deploy
``forward`` (its padding, the order of attention and activation): a plain model shares
nothing with timm but the input tensors, and it is what the seed calls the deploy model,
one path of 3x3 convs that any runtime imports.

Every step is one method of :class:`Fusion`, so a self-test can plant a bug in exactly one
step (a subclass) and show that the checks name the block it breaks.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

BRANCHES = ("conv_kxk", "conv_1x1", "identity")


@dataclass
class FusedConv:
    """One block's deploy convolution (``block`` is its dotted name in the training form)."""

    block: str
    weight: torch.Tensor  # (out, in / groups, k, k)
    bias: torch.Tensor  # (out,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def conv(self) -> nn.Conv2d:
        out_chs, in_per_group, kh, kw = self.weight.shape
        conv = nn.Conv2d(in_per_group * self.groups, out_chs, (kh, kw), stride=self.stride, padding=self.padding,
                         dilation=self.dilation, groups=self.groups, bias=True,
                         dtype=self.weight.dtype)
        assert conv.bias is not None  # bias=True
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            conv.bias.copy_(self.bias)
        return conv


class PlainRepVGG(nn.Module):
    """The deploy model: one ``Conv2d(3x3) + ReLU`` per block, global average pool, linear.

    ``block_names[i]`` is the training-form block that ``features[i]`` replaces.
    """

    def __init__(self, convs: list[FusedConv], fc: nn.Linear):
        super().__init__()
        self.block_names = [c.block for c in convs]
        self.features = nn.Sequential(*[nn.Sequential(c.conv(), nn.ReLU()) for c in convs])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def convs(self) -> Iterator[tuple[str, nn.Conv2d]]:
        for name, stage in zip(self.block_names, self.features):
            yield name, cast(nn.Conv2d, cast(nn.Sequential, stage)[0])  # Sequential(conv, ReLU), see __init__


class UnsupportedBlock(ValueError):
    """The training form has a part the plain deploy form cannot express (e.g. an SE block)."""


def _is_rep_block(m: nn.Module) -> bool:
    return all(hasattr(m, b) for b in BRANCHES) and isinstance(getattr(m, "conv_kxk", None), nn.Module)


def rep_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The training form's multi-branch blocks in forward order (stem, then stages)."""
    return [(n, m) for n, m in model.named_modules() if _is_rep_block(m)]


def _conv_and_bn(branch: nn.Module, where: str) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv, bn = getattr(branch, "conv", None), getattr(branch, "bn", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise UnsupportedBlock(f"{where}: expected a conv + BN branch, got {type(branch).__name__}")
    _no_extra_ops(bn, where)
    return conv, bn


def _no_extra_ops(bn: nn.Module, where: str) -> None:
    # timm's BatchNormAct2d carries an activation and a dropout: both must be identities for
    # the branch to be linear (RepVGG applies ReLU only after the sum)
    for part in ("act", "drop"):
        sub = getattr(bn, part, None)
        if sub is not None and not isinstance(sub, nn.Identity):
            raise UnsupportedBlock(f"{where}.{part} is {type(sub).__name__}: a branch must be linear to be fused")


class Fusion:
    """The seed's recipe. Override one method to plant a bug in one step."""

    def fold_bn(self, kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        """BN(conv(x)) = conv'(x) + b': scale each output kernel by gamma / sqrt(var + eps)."""
        # eval-form BN: running statistics are tensors (a BN without them is not foldable)
        var, mean = cast(torch.Tensor, bn.running_var), cast(torch.Tensor, bn.running_mean)
        std = torch.sqrt(var + bn.eps)
        scale = bn.weight / std
        return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - mean * scale

    def pad_to(self, kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Zero-pad a small kernel to ``size``, centred (a 1x1 lands on the 3x3's middle tap)."""
        dh, dw = size[0] - kernel.shape[2], size[1] - kernel.shape[3]
        return F.pad(kernel, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])

    def identity_kernel(self, channels: int, groups: int, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """x as a grouped conv: output channel c reads input channel c, which is position
        ``c % (channels / groups)`` inside its group's slice of the weight."""
        per_group = channels // groups
        kernel = torch.zeros((channels, per_group, *size), dtype=like.dtype, device=like.device)
        for c in range(channels):
            kernel[c, c % per_group, size[0] // 2, size[1] // 2] = 1.0
        return kernel

    def fuse_block(self, name: str, block: nn.Module) -> FusedConv:
        attn = getattr(block, "attn", None)
        if attn is not None and not isinstance(attn, nn.Identity):
            raise UnsupportedBlock(f"{name}.attn is {type(attn).__name__}: the plain deploy form has no SE block")
        act = getattr(block, "act", None)
        if not isinstance(act, nn.ReLU):
            raise UnsupportedBlock(f"{name}.act is {type(act).__name__}: the plain deploy form applies ReLU")
        conv3, bn3 = _conv_and_bn(cast(nn.Module, block.conv_kxk), f"{name}.conv_kxk")
        # Conv2d: 2-tuples (a str padding, 'same'/'valid', is not expected in timm's RepVGG blocks)
        size = cast("tuple[int, int]", conv3.kernel_size)
        padding3 = cast("tuple[int, int]", conv3.padding)
        weight, bias = self.fold_bn(conv3.weight, bn3)
        if block.conv_1x1 is not None:
            conv1, bn1 = _conv_and_bn(cast(nn.Module, block.conv_1x1), f"{name}.conv_1x1")
            if conv1.groups != conv3.groups or conv1.stride != conv3.stride:
                raise UnsupportedBlock(f"{name}: 1x1 and 3x3 branches differ in groups or stride")
            # centred zero-padding is exact only when both branches see the same output grid:
            # the 3x3 pads (k-1)/2 more than the 1x1 (timm and the official repo: 1 and 0)
            padding1 = cast("tuple[int, int]", conv1.padding)
            if any(p3 - p1 != (k - 1) // 2 for p3, p1, k in zip(padding3, padding1, size)):
                raise UnsupportedBlock(f"{name}: paddings {conv3.padding} (3x3) and {conv1.padding} (1x1) do not "
                                       "centre the 1x1 on the 3x3")
            k1, b1 = self.fold_bn(conv1.weight, bn1)
            weight, bias = weight + self.pad_to(k1, size), bias + b1
        if block.identity is not None:
            bn_id = block.identity
            if not isinstance(bn_id, nn.BatchNorm2d):
                raise UnsupportedBlock(f"{name}.identity is {type(bn_id).__name__}, expected a BN")
            _no_extra_ops(bn_id, f"{name}.identity")
            kid, bid = self.fold_bn(self.identity_kernel(conv3.in_channels, conv3.groups, size, conv3.weight), bn_id)
            weight, bias = weight + kid, bias + bid
        return FusedConv(name, weight.detach().clone(), bias.detach().clone(), cast("tuple[int, int]", conv3.stride),
                         padding3, cast("tuple[int, int]", conv3.dilation), conv3.groups)

    def fuse(self, model: nn.Module) -> PlainRepVGG:
        """The plain deploy model of a timm RepVGG (ByobNet) training form, in its dtype."""
        blocks = rep_blocks(model)
        if not blocks:
            raise UnsupportedBlock(f"{type(model).__name__} has no RepVGG blocks ({'/'.join(BRANCHES)} branches)")
        _expect_plain_tail(model)
        with torch.no_grad():
            convs = [self.fuse_block(n, b) for n, b in blocks]
        src = cast(nn.Linear, cast(Any, model).get_classifier())  # timm's ByobNet: its head.fc
        fc = nn.Linear(src.in_features, src.out_features, bias=src.bias is not None, dtype=src.weight.dtype)
        fc.load_state_dict(src.state_dict())
        return PlainRepVGG(convs, fc).eval()


def _expect_plain_tail(model: nn.Module) -> None:
    """Outside the blocks, ByobNet must hold nothing but average pooling and the classifier."""
    final = getattr(model, "final_conv", None)
    if final is not None and not isinstance(final, nn.Identity):
        raise UnsupportedBlock(f"final_conv is {type(final).__name__}: not a RepVGG tail")
    pool = getattr(getattr(model, "head", None), "global_pool", None)
    pool_type = getattr(pool, "pool_type", "avg")
    if pool_type != "avg":
        raise UnsupportedBlock(f"head.global_pool is {pool_type!r}, the plain deploy form averages")


def fuse(model: nn.Module) -> PlainRepVGG:
    """The seed's fusion of ``model`` (a timm RepVGG training form), as a plain model."""
    return Fusion().fuse(model)


# --- naming: the plain model's tensors under timm's and the official repo's deploy names --

def deploy_state_dict(plain: PlainRepVGG, names: str = "timm") -> dict[str, torch.Tensor]:
    """The deploy form as a state dict: ``timm`` (``<block>.reparam_conv.*``, ``head.fc.*``)
    or ``official`` (``stage<k>.<i>.rbr_reparam.*``, ``linear.*``) names."""
    if names not in ("timm", "official"):
        raise ValueError(f"names must be 'timm' or 'official', got {names!r}")
    out: dict[str, torch.Tensor] = {}
    for block, conv in plain.convs():
        prefix = block if names == "timm" else _official_block(block)
        branch = "reparam_conv" if names == "timm" else "rbr_reparam"
        assert conv.bias is not None  # FusedConv.conv: bias=True
        out[f"{prefix}.{branch}.weight"] = conv.weight.detach().clone()
        out[f"{prefix}.{branch}.bias"] = conv.bias.detach().clone()
    head = "head.fc" if names == "timm" else "linear"
    out[f"{head}.weight"] = plain.fc.weight.detach().clone()
    out[f"{head}.bias"] = cast(torch.Tensor, plain.fc.bias).detach().clone()  # RepVGG's classifier has a bias
    return out


def _official_block(block: str) -> str:
    if block == "stem":
        return "stage0"
    m = re.fullmatch(r"stages\.(\d+)\.(\d+)", block)
    if not m:
        raise ValueError(f"no official name for block {block!r}")
    return f"stage{int(m.group(1)) + 1}.{m.group(2)}"


def plain_from_deploy_state(template: PlainRepVGG, sd: Mapping[str, torch.Tensor]) -> PlainRepVGG:
    """A copy of ``template`` holding a timm-named deploy state dict's tensors (shapes checked
    by the caller)."""
    import copy

    plain = copy.deepcopy(template)
    with torch.no_grad():
        for block, conv in plain.convs():
            assert conv.bias is not None  # FusedConv.conv: bias=True
            conv.weight.copy_(sd[f"{block}.reparam_conv.weight"])
            conv.bias.copy_(sd[f"{block}.reparam_conv.bias"])
        plain.fc.weight.copy_(sd["head.fc.weight"])
        cast(torch.Tensor, plain.fc.bias).copy_(sd["head.fc.bias"])  # RepVGG's classifier has a bias
    return plain
