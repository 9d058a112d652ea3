"""The deploy preprocessing config: strict validation (file, key, expected type), derivation
from cards and from timm's data config, the example files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import manifest as manifest_mod
from harness.errors import ConfigError, InputError
from harness.preprocess import checks as pc
from harness.preprocess import deploy as dp
from harness.testing import FakeLab
from harness.zoo import load_zoo

ZOO = load_zoo()
EXAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "deploy_preprocess"
GOOD = {"pipeline": "resize_then_crop", "resize": 256, "crop": 224, "interpolation": "bilinear",
        "color": "RGB", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}


def write(tmp_path, data, name="pre.json") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return p


def load_error(tmp_path, data) -> ConfigError:
    p = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        dp.load(p)
    assert str(p) in str(e.value)  # every error names the file
    return e.value


def test_good_config_loads(tmp_path):
    cfg = dp.load(write(tmp_path, GOOD))
    assert cfg.resize == 256 and cfg.crop_offset_rounding == "half_even" and cfg.source.endswith("pre.json")
    assert dp.differing_keys(cfg, dp.config_from_card(ZOO["hrnet_w18"])) == []


@pytest.mark.parametrize("key", ["pipeline", "crop", "interpolation", "color", "mean", "std", "resize"])
def test_missing_key_is_named(tmp_path, key):
    e = load_error(tmp_path, {k: v for k, v in GOOD.items() if k != key})
    assert e.key == key and "missing" in e.problem


@pytest.mark.parametrize("key, value, expected", [
    ("resize", 256.0, "an integer"), ("resize", "256", "an integer"), ("resize", True, "an integer"),
    ("crop", [224], "an integer"), ("mean", [0.5, 0.5], "a list of 3 numbers"),
    ("std", "58.4", "a list of 3 numbers"), ("mean", [1, 2, None], "a list of 3 numbers"),
    ("interpolation", 2, "a string"), ("color", None, "a string"), ("pipeline", ["resize_then_crop"], "a string"),
])
def test_wrong_type_names_key_and_expected_type(tmp_path, key, value, expected):
    e = load_error(tmp_path, {**GOOD, key: value})
    assert e.key == key and f"expected {expected}" in e.problem and type(value).__name__ in e.problem


@pytest.mark.parametrize("key, value, words", [
    ("interpolation", "area", "not one of"), ("color", "rgb", "not one of"), ("pipeline", "squash", "not one of"),
    ("crop", 0, ">= 1"), ("std", [58.4, 0, 57.4], "positive"), ("crop_offset_rounding", "banker", "not one of"),
])
def test_bad_value_is_named(tmp_path, key, value, words):
    e = load_error(tmp_path, {**GOOD, key: value})
    assert e.key == key and words in e.problem


def test_unknown_key_and_misplaced_geometry_key(tmp_path):
    assert load_error(tmp_path, {**GOOD, "to_rgb": True}).key == "to_rgb"
    e = load_error(tmp_path, {**GOOD, "crop_fraction": 0.875})
    assert e.key == "crop_fraction" and "does not apply to pipeline 'resize_then_crop'" in e.problem
    ctr = {**{k: v for k, v in GOOD.items() if k != "resize"}, "pipeline": "crop_then_resize"}
    assert load_error(tmp_path, ctr).key == "crop_fraction"
    assert load_error(tmp_path, {**ctr, "crop_fraction": 1.5}).key == "crop_fraction"


def test_invalid_json_and_missing_file(tmp_path):
    e = load_error(tmp_path, '{"pipeline": "resize_then_crop",}')
    assert "not valid JSON" in e.problem and "line 1" in e.problem
    assert "expected a JSON object" in load_error(tmp_path, "[1, 2]").problem
    with pytest.raises(ConfigError, match="not found"):
        dp.load(tmp_path / "absent.json")


def test_dump_round_trips(tmp_path):
    for cid in ("hrnet_w18", "resnest200"):
        cfg = dp.config_from_card(ZOO[cid])
        back = dp.load(dp.dump(cfg, tmp_path / f"{cid}.json"))
        assert back.to_dict() == cfg.to_dict()


def test_config_from_card_reproduces_card_numbers():
    r50 = dp.config_from_card(ZOO["resnest50"])
    assert (r50.pipeline, r50.crop_fraction, r50.crop, r50.interpolation) == ("crop_then_resize", 0.875, 224, "bicubic")
    assert dp.config_from_card(ZOO["resnest200"]).crop_fraction == 320 / 352
    hr = dp.config_from_card(ZOO["repvgg_a0"])
    assert (hr.resize, hr.crop, hr.color) == (256, 224, "RGB") and hr.mean[0] == pytest.approx(123.675)


def test_config_from_timm_follows_timm_eval_rule():
    cfg = dp.config_from_timm({"input_size": (3, 256, 256), "interpolation": "bilinear", "crop_pct": 0.875,
                               "crop_mode": "center", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}, "t")
    assert cfg.resize == 292  # floor(256 / 0.875): timm's resnest101e, where ECenterCrop(256) implies 288
    with pytest.raises(ValueError, match="squash"):
        dp.config_from_timm({"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.9,
                             "crop_mode": "squash", "mean": (0, 0, 0), "std": (1, 1, 1)}, "t")


def test_with_keys_moves_pipeline_with_its_size_key():
    hr, r50 = dp.config_from_card(ZOO["hrnet_w18"]), dp.config_from_card(ZOO["resnest50"])
    assert dp.differing_keys(hr, r50) == ["pipeline", "resize", "crop_fraction", "interpolation"]
    moved = dp.with_keys(hr, r50, ("pipeline", "resize", "crop_fraction"))
    assert moved.pipeline == "crop_then_resize" and moved.crop_fraction == 0.875 and moved.resize is None
    with pytest.raises(ConfigError):
        dp.with_keys(hr, r50, ("pipeline",))  # a pipeline without its size key is no config


@pytest.mark.parametrize("name, card_ids", [
    ("resize256_crop224_bilinear", ["hrnet_w18_small_v1", "hrnet_w64", "repvgg_a0", "repvgg_b3g4"]),
    ("ecenter224_bicubic", ["resnest50"]), ("ecenter256_bicubic", ["resnest101"]),
    ("ecenter320_bicubic", ["resnest200"]), ("ecenter416_bicubic", ["resnest269"]),
])
def test_example_configs_equal_their_cards(name, card_ids):
    cfg = dp.load(EXAMPLES / f"{name}.json")
    for cid in card_ids:
        assert dp.differing_keys(cfg, dp.config_from_card(ZOO[cid])) == [], cid


def test_example_manifest_names_existing_configs():
    m = manifest_mod.load(EXAMPLES / "example_manifest.toml", list(ZOO))
    for mid in m.models:
        cfg = dp.load(m.for_model(mid).get("preprocess"))
        assert dp.differing_keys(cfg, dp.config_from_card(ZOO[mid])) == [], mid


def test_deploy_config_for_uses_manifest_else_card(tmp_path):
    card = ZOO["hrnet_w18_small_v1"]
    assert pc.deploy_config_for(card, FakeLab(manifest=manifest_mod.empty())).source.startswith("config derived from hrnet.toml")
    cfg_path = write(tmp_path, {**GOOD, "interpolation": "bicubic"}, "hr.json")
    man = tmp_path / "m.toml"
    man.write_text(f'[models.hrnet_w18_small_v1]\npreprocess = "{cfg_path.name}"\n[models.repvgg_a0]\npreprocess = "gone.json"\n')
    lab = FakeLab(manifest=manifest_mod.load(man, list(ZOO)))
    got = pc.deploy_config_for(card, lab)
    assert got.interpolation == "bicubic" and got.source == str(cfg_path)
    with pytest.raises(InputError, match="gone.json"):  # named by the manifest, missing on disk
        pc.deploy_config_for(ZOO["repvgg_a0"], lab)
