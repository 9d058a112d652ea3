"""The official RepVGG conversion (``repvgg_model_convert`` of the ``repvgg-pytorch`` package: the
authors' fusion code, DingXiaoH/RepVGG, repackaged): a training-form checkpoint and its deploy
checkpoint, both in the official names (``stageN.i.rbr_*``, ``rbr_reparam``), given through the
manifest, pass the deploy-checkpoint check. The weights are the suite's seeded repvgg_a0
reference, copied into the official model, so nothing is downloaded."""
from __future__ import annotations

import pytest
import torch

from harness.lab import Lab, Settings
from harness.models import official_repvgg_to_timm
from harness.reparam import checks as reparamchecks
from harness.testing import Recorder

official = pytest.importorskip("repvgg_pytorch", reason="the official RepVGG code (pip install repvgg-pytorch)")


def official_from_timm(timm_model) -> torch.nn.Module:
    """The official RepVGG-A0 (training form) holding the timm model's weights, key by key."""
    model = official.get_RepVGG_func_by_name("RepVGG-A0")(deploy=False)
    sd = model.state_dict()
    to_timm = official_repvgg_to_timm({k: v for k, v in sd.items()})  # same order, timm names
    src = timm_model.state_dict()
    assert len(to_timm) == len(sd) and set(to_timm) <= set(src), sorted(set(to_timm) - set(src))[:5]
    model.load_state_dict({k: src[t] for k, t in zip(sd, to_timm)})
    return model.eval()


@pytest.mark.slow  # the deploy-checkpoint check measures every block on the eval images: ~90 s on 2 busy cores
def test_official_conversion_passes_the_deploy_checkpoint_check(repvgg, tmp_path):
    train = official_from_timm(repvgg.model)
    torch.save(train.state_dict(), tmp_path / "RepVGG-A0-train.pth")
    deploy = official.repvgg_model_convert(train, save_path=str(tmp_path / "RepVGG-A0-deploy.pth"))
    assert any(k.endswith("rbr_reparam.weight") for k in deploy.state_dict())
    with torch.no_grad():  # the authors' fusion, in their own model: the same function
        assert torch.allclose(deploy(repvgg.x), repvgg.model(repvgg.x), rtol=0, atol=1e-4 * repvgg.model(repvgg.x).abs().max())
    manifest = tmp_path / "artifacts.toml"
    manifest.write_text('[models.repvgg_a0]\ncheckpoint = "RepVGG-A0-train.pth"\n'
                        'deploy_checkpoint = "RepVGG-A0-deploy.pth"\n')
    lab = Lab(Settings(models=["repvgg_a0"], artifacts=manifest))
    card = lab.cards[0]
    path = lab.artifacts(card).get("deploy_checkpoint")
    rec = Recorder()
    reparamchecks.check_deploy_checkpoint(card, lab, rec, path)
    assert rec.figures["deploy_checkpoint"] == str(path)
