"""fixtures/expectations.toml entries bound to host classes and to the suite's own artifacts."""
from __future__ import annotations

import types
from pathlib import Path

import pytest

from harness import plugin
from harness.errors import ConfigError


def _lab(paths: dict | None = None):
    manifest = types.SimpleNamespace(for_model=lambda mid: types.SimpleNamespace(paths=paths or {}))
    return types.SimpleNamespace(manifest=manifest, manifest_error=None)


CARD = types.SimpleNamespace(id="hrnet_w18_small_v1")
ENTRY = {"test": "test_int8_kernels_match_simulation", "params": "*", "reason": "r",
         "host_class": ["x86-avx2", "x86-avx512"], "suite_artifacts_only": True}


@pytest.mark.parametrize("cls, applies", [("x86-avx2", True), ("x86-avx512", True), ("x86-avx512-vnni", False),
                                          ("arm-dotprod", False)])
def test_host_class_entry_holds_only_on_its_classes(cls, applies):
    assert plugin._expectation_applies(ENTRY, cls, _lab(), CARD) is applies


def test_suite_artifacts_only_entry_never_covers_a_users_file():
    assert plugin._expectation_applies(ENTRY, "x86-avx2", _lab(), CARD)
    assert not plugin._expectation_applies(ENTRY, "x86-avx2", _lab({"int8_onnx": Path("mine.onnx")}), CARD)


def test_an_entry_that_names_no_suite_test_is_reported():
    entries = [{"test": "test_export_matches_torch", "params": "*", "reason": "r"},
               {"test": "test_export_matches_torhc", "params": "*", "reason": "r"}]  # a typo
    lines = plugin.unmatched_expectations(entries, [], plugin.suite_test_names(), every_model=False)
    assert len(lines) == 1 and "test_export_matches_torhc" in lines[0] and "no test function" in lines[0]


def test_an_entry_matching_no_case_is_reported_only_when_every_model_was_collected():
    entry = {"test": "test_flops_match_published", "params": "resnest50-gone-*", "reason": "r"}
    cases = [("test_flops_match_published", "resnest50-timm-000-x")]
    defined = {"test_flops_match_published"}
    assert plugin.unmatched_expectations([entry], cases, defined, every_model=False) == []  # maybe another model
    [line] = plugin.unmatched_expectations([entry], cases, defined, every_model=True)
    assert "resnest50-gone-*" in line and "none of the collected cases" in line
    hit = {**entry, "params": "resnest50-timm-*"}
    assert plugin.unmatched_expectations([hit], cases, defined, every_model=True) == []


def test_the_shipped_expectations_all_name_a_suite_test():
    assert plugin.unmatched_expectations(plugin._load_expectations(), [], plugin.suite_test_names(), False) == []


def test_entries_without_filters_hold_everywhere():
    plain = {"test": "t", "params": "*", "reason": "r"}
    assert plugin._expectation_applies(plain, "x86-avx512-vnni", _lab({"onnx": Path("a.onnx")}), CARD)


def test_the_shipped_kernel_expectation_is_bound_to_hosts_without_vnni():
    entries = [e for e in plugin._load_expectations() if e["test"] == "test_int8_kernels_match_simulation"]
    assert entries and all(e.get("suite_artifacts_only") and e.get("host_class") for e in entries)
    assert not any("vnni" in h for e in entries for h in e["host_class"])


def test_malformed_host_class_is_a_config_error_naming_the_key(tmp_path, monkeypatch):
    bad = tmp_path / "expectations.toml"
    bad.write_text('[[xfail]]\ntest = "t"\nparams = "*"\nreason = "r"\nhost_class = 3\n')
    monkeypatch.setattr(plugin, "EXPECTATIONS", bad)
    with pytest.raises(ConfigError) as e:
        plugin._load_expectations()
    assert "xfail[0].host_class" in str(e.value)
