"""The registry: the 24 seed models load, and malformed cards fail naming file, key and type."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.zoo import ZOO_DIR, UnknownModelError, load_family_file, load_zoo, select

SEED_IDS = """hrnet_w18_small_v1 hrnet_w18_small_v2 hrnet_w18 hrnet_w30 hrnet_w32 hrnet_w40 hrnet_w44
hrnet_w48 hrnet_w64 resnest50 resnest101 resnest200 resnest269 repvgg_a0 repvgg_a1 repvgg_a2 repvgg_b0
repvgg_b1 repvgg_b1g2 repvgg_b1g4 repvgg_b2 repvgg_b2g4 repvgg_b3 repvgg_b3g4""".split()


def test_registry_holds_exactly_the_seed_models():
    zoo = load_zoo()
    assert sorted(zoo) == sorted(SEED_IDS)
    assert [c.id for c in select(zoo, tier="smoke")] == ["hrnet_w18_small_v1", "repvgg_a0", "resnest50"]
    assert len(select(zoo, tier="full")) == 24


def test_every_model_has_a_published_row_with_params():
    for card in load_zoo().values():
        assert any(r.params_m for r in card.published), card.id


def test_resnest_cards_use_ecenter_crop_at_their_size():
    zoo = load_zoo()
    for mid, size in {"resnest50": 224, "resnest101": 256, "resnest200": 320, "resnest269": 416}.items():
        pre = zoo[mid].preprocess
        assert (pre.pipeline, pre.crop, pre.interpolation, zoo[mid].input_size) == ("ecenter_crop", size, "bicubic", size)


def test_hrnet_rows_cover_every_source():
    sources = {s for r in load_zoo()["hrnet_w18"].published for s in r.sources}
    assert sources == {"official", "mmcls", "timm", "ppcls"}
    ssld = [r for r in load_zoo()["hrnet_w18"].published if r.weights == "ssld"]
    assert ssld, "the ppcls ssld rows belong to the registry"


def _broken_copy(tmp_path: Path, old: str, new: str) -> Path:
    target = tmp_path / "hrnet.toml"
    shutil.copy(ZOO_DIR / "hrnet.toml", target)
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    return target


def test_wrong_type_names_file_key_and_expected_type(tmp_path):
    f = _broken_copy(tmp_path, "input_size = 224", 'input_size = "224"')
    with pytest.raises(ConfigError) as e:
        load_family_file(f)
    msg = str(e.value)
    assert str(f) in msg and "models.hrnet_w18_small_v1.input_size" in msg and "expected int" in msg


def test_missing_key_and_unknown_key_are_named(tmp_path):
    f = _broken_copy(tmp_path, 'timm_arch = "hrnet_w18_small"\n', "")
    with pytest.raises(ConfigError, match=r"models.hrnet_w18_small_v1.timm_arch.*missing required key"):
        load_family_file(f)
    f = _broken_copy(tmp_path, "input_size = 224", "input_size = 224\ninput_sise = 224")
    with pytest.raises(ConfigError, match=r"input_sise.*unknown key"):
        load_family_file(f)


def test_bad_published_figure_type(tmp_path):
    f = _broken_copy(tmp_path, "params_m = 13.2", 'params_m = "13.2M"')
    with pytest.raises(ConfigError, match=r"published\[0\].params_m.*expected int or float"):
        load_family_file(f)


def test_unknown_flops_convention_is_named_with_the_known_ones(tmp_path):
    f = _broken_copy(tmp_path, 'flops_convention = "macs_gib"', 'flops_convention = "macs_gb"')
    with pytest.raises(ConfigError, match=r"published\[\d+\].flops_convention.*'macs_gb' is not one of "
                                          r"\['macs_gib', 'macs_1e9_deploy', 'mmcv'"):
        load_family_file(f)


def test_every_tolerance_why_is_short():
    """A tolerance's why holds the measurement and the command that re-measures it; the history
    belongs in commit messages (issue 16)."""
    import tomllib

    data = tomllib.loads((ZOO_DIR.parent / "tolerances.toml").read_text(encoding="utf-8"))
    long = []

    def walk(table, prefix=""):
        for key, value in table.items():
            if isinstance(value, dict) and "why" in value:
                if len(value["why"]) > 450:
                    long.append(f"{prefix}{key} ({len(value['why'])} characters)")
            elif isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(data)
    assert not long, f"why strings over 450 characters in fixtures/tolerances.toml: {long}"


def test_invalid_toml_names_the_file(tmp_path):
    f = _broken_copy(tmp_path, "[models.hrnet_w18]", "[models.hrnet_w18")
    with pytest.raises(ConfigError, match="not valid TOML") as e:
        load_family_file(f)
    assert str(f) in str(e.value)


def test_unknown_model_id_lists_valid_ids():
    with pytest.raises(UnknownModelError) as e:
        select(load_zoo(), ["hrnet_w18", "resnet50"])
    assert "resnet50" in str(e.value) and "repvgg_b3g4" in str(e.value)


def test_unknown_model_id_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x(model_card):\n    pass\n")
    result = pytester.runpytest("-p", "harness.plugin", "--models", "nope", "--no-results")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown model id(s) ['nope']; valid ids: hrnet_w18_small_v1" in result.stderr.str()
