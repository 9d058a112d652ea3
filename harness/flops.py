"""FLOPs under each published table's stated convention.

Conventions (the ``flops_convention`` of a published row, validated against
``harness.zoo.FLOPS_CONVENTIONS`` when the card loads):

- ``macs_gib``: conv + linear multiply-accumulates / 2^30 (official HRNet "flops(G)").
- ``macs_1e9_deploy``: conv + linear MACs of the *deploy* (re-parameterized) form / 1e9
  (RepVGG "FLOPs (B)").
- ``mmcv``: mmcv's ``get_model_complexity_info`` rules (mmcls tables): conv MACs plus one op
  per output for a bias, BN 2 ops per element (affine), ReLU/pool/upsample one op per
  element, linear MACs without bias; / 1e9.
- ``paddle``, ``paddle_page``, ``timm_card``: no counter reproduces these yet; measured
  ratios are reported and the comparisons are declared xfail in fixtures/expectations.toml.

Counting uses ``torch.utils.flop_counter`` for MACs (conv/linear count 2 x MACs there) and
forward hooks for the mmcv rules.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def conv_linear_macs(model: nn.Module, size: int) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return int(fc.get_total_flops() // 2)


def mmcv_flops(model: nn.Module, size: int) -> int:
    """mmcv's flops counter rules, re-implemented as forward hooks on leaf modules."""
    total = [0]

    def conv_hook(m: nn.Conv2d, inp, out):
        per_position = int(np.prod(m.kernel_size)) * m.in_channels * (m.out_channels // m.groups)
        active = out.shape[0] * int(np.prod(out.shape[2:]))
        total[0] += per_position * active + (m.out_channels * active if m.bias is not None else 0)

    def linear_hook(m: nn.Linear, inp, out):
        total[0] += int(np.prod(inp[0].shape)) * out.shape[-1]

    def norm_hook(m, inp, out):
        total[0] += int(np.prod(inp[0].shape)) * (2 if getattr(m, "affine", False) else 1)

    def elem_out_hook(m, inp, out):
        total[0] += int(out.numel())

    def elem_in_hook(m, inp, out):
        total[0] += int(inp[0].numel())

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_hook(norm_hook))
        elif isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU)):
            hooks.append(m.register_forward_hook(elem_out_hook))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            hooks.append(m.register_forward_hook(elem_in_hook))
        elif isinstance(m, nn.Upsample):
            hooks.append(m.register_forward_hook(elem_out_hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def flops_under(convention: str, model: nn.Module, deploy_model: nn.Module | None, size: int) -> float | None:
    """The model's FLOPs in the table's unit, or None where no counter reproduces it."""
    if convention == "macs_gib":
        return conv_linear_macs(model, size) / 2 ** 30
    if convention == "macs_1e9_deploy":
        return conv_linear_macs(deploy_model if deploy_model is not None else model, size) / 1e9
    if convention == "mmcv":
        return mmcv_flops(model, size) / 1e9
    return None


def reference_count(model: nn.Module, size: int) -> float:
    """Plain conv+linear GMACs (1e9): the figure reported next to an unreproduced convention."""
    return conv_linear_macs(model, size) / 1e9
