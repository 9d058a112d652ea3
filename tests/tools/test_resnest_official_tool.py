"""The official ResNeSt package (``resnest``, zhanghang1989/ResNeSt): its PyTorch models' state
dicts carry timm's ResNeSt-D names key for key (timm ported them), so an official checkpoint is
the card's reference checkpoint as it is. A resnest14d-sized official model (seeded init, one
Bottleneck per stage) loads through the harness's loader into timm's ``resnest14d`` and computes
the same logits; the nightly does the card's resnest50 through the manifest."""
from __future__ import annotations

import pytest
import timm
import torch

from harness.compare import rel_max_error
from harness.lab import Lab, Settings
from harness.models import load_into, load_state_dict_file, randomise_bn

resnest_torch = pytest.importorskip("resnest.torch", reason="the official ResNeSt package (pip install resnest)")

# fp32 summation order only: measured 0 (bit-identical) .. 1e-6 of the logit scale
REL_MAX = 1e-5


def official(layers, seed: int) -> torch.nn.Module:
    """An official ResNeSt-D (resnest50's recipe) with ``layers`` Bottlenecks per stage, seeded, BN
    affine and statistics mildly randomised so that no branch is dead."""
    from resnest.torch.resnet import Bottleneck, ResNet

    torch.manual_seed(seed)
    model = ResNet(Bottleneck, layers, radix=2, groups=1, bottleneck_width=64, deep_stem=True, stem_width=32,
                   avg_down=True, avd=True, avd_first=False)
    randomise_bn(model, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(m.num_features, generator=g))
    return model.eval()


def test_official_resnest14d_keys_equal_timms_and_it_loads_as_the_same_function(repvgg, tmp_path):
    model = official([1, 1, 1, 1], seed=14)
    theirs = timm.create_model("resnest14d").state_dict()
    assert list(model.state_dict()) == list(theirs)  # same names, same order
    path = tmp_path / "resnest14d-official.pth"
    torch.save(model.state_dict(), path)
    timm_model = timm.create_model("resnest14d")
    load_into(timm_model, load_state_dict_file(path), path)  # the harness's loader, weights_only=True
    x = repvgg.x  # any embedded 224 images
    with torch.no_grad():
        err = rel_max_error(timm_model.eval()(x).numpy(), model(x).numpy())
    assert err <= REL_MAX, err


@pytest.mark.slow
def test_official_resnest50_checkpoint_is_the_card_reference(tmp_path):
    model = official([3, 4, 6, 3], seed=50)
    torch.save(model.state_dict(), tmp_path / "resnest50-official.pth")
    manifest = tmp_path / "artifacts.toml"
    manifest.write_text('[models.resnest50]\ncheckpoint = "resnest50-official.pth"\n')
    lab = Lab(Settings(models=["resnest50"], artifacts=manifest))
    card = lab.cards[0]
    x, _ = lab.inputs(card, "eval", limit=4)
    with torch.no_grad():
        err = rel_max_error(lab.reference(card)(x).numpy(), model(x).numpy())
    assert err <= REL_MAX, err
