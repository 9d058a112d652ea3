"""Artifacts built with the real deployer tools (issue 18): each test makes a small file the way a
user's tool does (timm's ``onnx_export``, onnxsim, ONNX Runtime's optimized-model file,
``openvino.save_model``, the official RepVGG conversion, the official ResNeSt package) and checks
the suite's verdict on it, pass or the failure naming its cause.

Every test here carries the ``tools`` marker (added below, registered in ``pytest_configure``);
the ones that take minutes are also ``slow`` (nightly). A tool that is not installed skips its
tests through ``pytest.importorskip`` naming the package (``pip install -e '.[tools]'``).
Models are the smoke cards' seeded references (nothing downloaded); images are the embedded ones.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.lab import Lab, Settings

HERE = Path(__file__).parent
IMAGES = 4  # numerics: a few images keep a check to seconds


def pytest_configure(config):
    config.addinivalue_line("markers", "tools: artifacts built with real deployer tools (tests/tools/)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.tools)


@pytest.fixture(scope="session")
def tools_lab():
    return Lab(Settings(models=["repvgg_a0", "hrnet_w18_small_v1"]))


def _subject(lab, model_id: str, images: int = IMAGES) -> SimpleNamespace:
    card = next(c for c in lab.cards if c.id == model_id)
    x, _ = lab.inputs(card, "eval", limit=images)
    return SimpleNamespace(card=card, model=lab.reference(card), x=x)


@pytest.fixture(scope="session")
def repvgg(tools_lab):
    """repvgg_a0's seeded reference (eval mode) and a few embedded images."""
    return _subject(tools_lab, "repvgg_a0")


@pytest.fixture(scope="session")
def hrnet(tools_lab):
    return _subject(tools_lab, "hrnet_w18_small_v1")
