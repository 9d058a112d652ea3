"""Preprocessing parity suite: what the runtime feeds the model is what the card's pipeline feeds it.

- the deploy-side config (manifest ``preprocess`` JSON, else the config derived from the
  card) against the card's torchvision reference, on natural images plus geometry probes;
- timm's own eval transform against the card (a third view; differences are expected
  failures declared in fixtures/expectations.toml);
- ResNeSt: ECenterCrop(S) vs Resize(S+32)+CenterCrop(S): identical on an (S+32)^2 square,
  measured elsewhere (pixels and predictions vs a noise floor);
- properties on any image (hypothesis): any size, aspect, mode, EXIF orientation.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.plugin import family
from harness.preprocess import checks as pc
from harness.preprocess import images

pytestmark = pytest.mark.preprocess


@pytest.fixture(scope="session")
def natural(lab):
    """The lab's evaluation images (embedded unless --imagenet), loaded once per session (the
    tests run model by model, so a module fixture would load them again for every model)."""
    return pc.natural_images(lab)


def _parity(card, natural):
    imgs, names = natural
    return pc.parity_set(imgs, card.preprocess, names)


def test_deploy_config_matches_card_reference(model_card, lab, natural, record):
    cfg = pc.deploy_config_for(model_card, lab)
    pc.check_deploy_config(model_card, cfg, _parity(model_card, natural), record,
                           model=lambda: lab.reference(model_card), lab=lab)


def test_timm_eval_transform_matches_card_reference(model_card, lab, natural, record):
    pc.check_timm_transform(model_card, _parity(model_card, natural), record,
                            model=lambda: lab.reference(model_card), lab=lab)


@family("resnest")
def test_ecenter_crop_identical_to_resize_center_crop_on_square(model_card, natural, record):
    pc.check_ecenter_square_identity(model_card, natural[0][:4], record)


@family("resnest")
def test_ecenter_crop_vs_resize_center_crop_figures(model_card, lab, natural, record):
    imgs, names = natural
    side = model_card.preprocess.crop + 32
    probes = [(n, im) for n, im in pc.parity_set(imgs, model_card.preprocess, names)
              if im.size != (side, side)]  # the exact case has its own test
    pc.check_ecenter_vs_resize_crop(model_card, probes, record, model=lab.reference(model_card), lab=lab)


# --- properties -----------------------------------------------------------------------------

@st.composite
def any_image(draw, max_side: int = 2500, max_aspect: int = 24):
    """Any mode, 1x1 to ~6 megapixels, any aspect up to ``max_aspect``:1 (beyond it, Resize(256)
    blows a 1-px-wide image up to a 256 x 6000+ px one: slow, not different). Short sides are
    drawn by class, large ones rarely (one such example costs seconds: decode, PNG round trip)."""
    mode = draw(st.sampled_from(images.IMAGE_MODES))
    size_class = draw(st.sampled_from(("tiny",) * 3 + ("medium",) * 4 + ("big",) * 2 + ("large",)))
    short = draw({"tiny": st.integers(1, 16), "medium": st.integers(17, 300), "big": st.integers(301, 1200),
                  "large": st.integers(1201, max_side)}[size_class])
    long = draw(st.integers(short, min(max_side, short * max_aspect)))
    width, height = (short, long) if draw(st.booleans()) else (long, short)
    seed = draw(st.integers(0, 2**32 - 1))
    orientation = draw(st.one_of(st.none(), st.integers(1, 8)))
    return mode, width, height, seed, orientation


_PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_PROPERTY_SETTINGS
@given(spec=any_image())
def test_any_image_reference_equals_matching_config(model_card, lab, spec):
    pc.check_synthetic_image(model_card.preprocess, spec, where=model_card.id, memo=lab)
