"""The artifacts manifest: paths resolve against its folder; bad entries are clear errors."""
from __future__ import annotations

import pytest

from harness import manifest
from harness.errors import ConfigError, InputError
from harness.zoo import load_zoo

IDS = list(load_zoo())


def write(tmp_path, text):
    p = tmp_path / "artifacts.toml"
    p.write_text(text)
    return p


def test_relative_paths_resolve_against_the_manifest(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "a.pth").write_bytes(b"x")
    m = manifest.load(write(tmp_path, '[models.repvgg_a0]\ncheckpoint = "w/a.pth"\n'), IDS)
    assert m.for_model("repvgg_a0").get("checkpoint") == (tmp_path / "w" / "a.pth").resolve()
    assert m.for_model("hrnet_w18").get("onnx") is None


def test_unknown_model_id(tmp_path):
    with pytest.raises(ConfigError, match=r"models.resnet50.*unknown model id.*valid ids: hrnet_w18_small_v1"):
        manifest.load(write(tmp_path, '[models.resnet50]\nonnx = "x.onnx"\n'), IDS)


def test_unknown_key(tmp_path):
    with pytest.raises(ConfigError, match=r"models.repvgg_a0.onnx_file.*unknown key.*known keys"):
        manifest.load(write(tmp_path, '[models.repvgg_a0]\nonnx_file = "x.onnx"\n'), IDS)


def test_non_string_path(tmp_path):
    with pytest.raises(ConfigError, match=r"models.repvgg_a0.onnx.*expected a path string"):
        manifest.load(write(tmp_path, "[models.repvgg_a0]\nonnx = 3\n"), IDS)


def test_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        manifest.load(write(tmp_path, "[models.repvgg_a0\n"), IDS)


def test_missing_file_is_an_error_of_that_entry_only(tmp_path):
    m = manifest.load(write(tmp_path, '[models.repvgg_a0]\nonnx = "gone.onnx"\n'), IDS)
    with pytest.raises(InputError) as e:
        m.for_model("repvgg_a0").get("onnx")
    assert "gone.onnx" in str(e.value) and "artifacts.toml" in str(e.value) and "onnx" in str(e.value)
