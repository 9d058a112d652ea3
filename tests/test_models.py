"""Reference models: seeding, safe checkpoint loading, key maps, the recalibrated default."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from harness import models
from harness.errors import InputError
from harness.zoo import load_zoo

ZOO = load_zoo()


def test_seed_depends_on_the_id_only():
    a = models.create_architecture(ZOO["repvgg_a0"])
    models.create_architecture(ZOO["hrnet_w18_small_v1"])  # another build in between
    b = models.create_architecture(ZOO["repvgg_a0"])
    assert models.state_digest(a) == models.state_digest(b)


def test_wrong_shape_checkpoint_lists_mis_shaped_keys(tmp_path):
    wrong = models.create_architecture(ZOO["repvgg_a1"]).state_dict()  # a wider model
    path = tmp_path / "repvgg_a0.pth"
    torch.save(wrong, path)
    with pytest.raises(InputError) as e:
        models.build_reference(ZOO["repvgg_a0"], checkpoint=path)
    msg = str(e.value)
    assert str(path) in msg and "mis-shaped" in msg and "stem.conv_kxk.conv.weight" in msg


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = models.create_architecture(ZOO["repvgg_a0"]).state_dict()
    sd["extra.weight"] = sd.pop("head.fc.weight")
    path = tmp_path / "ck.pth"
    torch.save(sd, path)
    with pytest.raises(InputError, match=r"1 missing \(first: head.fc.weight\); 1 unexpected \(first: extra.weight\)"):
        models.build_reference(ZOO["repvgg_a0"], checkpoint=path)


class Payload:
    def __reduce__(self):  # what a malicious pickle does: run code on load
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"w": Payload()}, f)
    with pytest.raises(InputError, match="refused to load: not a plain tensor checkpoint") as e:
        models.load_state_dict_file(path)
    assert str(path) in str(e.value) and "safetensors" in str(e.value)


def test_non_tensor_values_are_refused(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(InputError, match="not a mapping of parameter names to tensors"):
        models.load_state_dict_file(path)


def test_safetensors_and_wrapped_checkpoints_load(tmp_path):
    from safetensors.torch import save_file

    ref = models.create_architecture(ZOO["repvgg_a0"])
    sd = {k: v.clone() + 0.01 for k, v in ref.state_dict().items()}
    save_file(sd, str(tmp_path / "a.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "a.pth")
    for p in ("a.safetensors", "a.pth"):
        m = models.build_reference(ZOO["repvgg_a0"], checkpoint=tmp_path / p)
        assert torch.equal(m.state_dict()["head.fc.weight"], sd["head.fc.weight"])


def test_official_repvgg_names_map_onto_timm():
    timm_sd = models.create_architecture(ZOO["repvgg_a0"]).state_dict()
    inverse = {}
    for k, v in timm_sd.items():
        o = k.replace("stem.", "stage0.").replace("conv_kxk.", "rbr_dense.").replace("conv_1x1.", "rbr_1x1.")
        o = o.replace("identity.", "rbr_identity.").replace("head.fc.", "linear.")
        for i in range(4):
            o = o.replace(f"stages.{i}.", f"stage{i + 1}.")
        inverse[o] = v
    assert any(k.startswith("stage1.0.rbr_dense") for k in inverse)
    mapped = models.official_repvgg_to_timm(inverse)
    assert set(mapped) == set(timm_sd)


def test_raw_init_is_degenerate_and_recalibration_fixes_it(tmp_path):
    """Why the default recalibrates: raw timm init predicts one class for every image; the
    seeded default the lab builds (recalibrated, tests/conftest.py's shared cache) does not."""
    from harness.compare import distinct_top1
    from harness.lab import Lab, Settings

    card = ZOO["repvgg_a0"]
    lab = Lab(Settings(models=[card.id], cache_dir=tmp_path / "cache"))
    x, _ = lab.inputs(card, "eval", limit=48)  # raw init collapses on any images: 48 say so in seconds
    with torch.no_grad():
        raw = models.create_architecture(card)(x).numpy()
    recal = lab.reference_logits(card, "eval")  # the 200 images the card and quant suites judge
    assert distinct_top1(raw) <= 2
    assert distinct_top1(recal) >= 10
    assert np.isfinite(recal).all()


def test_residual_branch_ends_get_the_small_gain_and_nothing_else_does():
    """ResNeSt's zero-initialised bn3 (end of each residual branch) gets weights ~ gain x (1 +- 0.25);
    a default with gain 1 there is chaotic (see models.RESIDUAL_BRANCH_GAIN). HRNet and RepVGG
    have no such BN: their randomisation is unchanged."""
    gain = models.RESIDUAL_BRANCH_GAIN
    assert 0 < gain < 1 and str(gain) in models.RECIPE
    ends: dict[str, set[str]] = {}
    for model_id, expect_branch_ends in (("resnest50", True), ("repvgg_a0", False), ("hrnet_w18_small_v1", False)):
        model = models.create_architecture(ZOO[model_id])
        zero = {n for n, m in model.named_modules()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and torch.all(m.weight == 0)}
        assert bool(zero) == expect_branch_ends, model_id
        ends[model_id] = zero
        models.randomise_bn(model, models.seed_for(model_id))
        for n, m in model.named_modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                lo, hi = (0.75 * gain, 1.25 * gain) if n in zero else (0.75, 1.25)
                w = m.weight.detach()
                assert lo <= float(w.min()) and float(w.max()) <= hi, (model_id, n, float(w.min()), float(w.max()))
    assert len(ends["resnest50"]) == 16 and all(n.endswith("bn3") for n in ends["resnest50"])
