"""RepVGG re-parameterization suite: the deploy form (one 3x3 conv per block) is the model.

For every RepVGG variant: wrong fusions would be seen on this model (BN statistics are
non-trivial), timm's deploy form and an independent fusion (harness/reparam/fusion.py) each equal
the training form within a float64 noise floor and write the same kernels, the deploy form
is plain 3x3 convs with the published params and FLOPs, it exports to ONNX with the same
output, and a user's deploy checkpoint (manifest ``deploy_checkpoint``) matches the training
form it was fused from. Top-1 agreement is recorded, never judged.
"""
from __future__ import annotations

import pytest

from harness.plugin import rows_with
from harness.reparam import checks as reparamchecks

pytestmark = [pytest.mark.reparam, pytest.mark.zoo_family("repvgg")]  # every check here: RepVGG only


def test_fusion_bugs_would_show(model_card, lab, record):
    reparamchecks.check_bugs_would_show(model_card, lab, record)


def test_timm_deploy_equals_training_form(model_card, lab, record):
    reparamchecks.check_timm_deploy(model_card, lab, record)


def test_independent_deploy_equals_training_form(model_card, lab, record):
    reparamchecks.check_independent_deploy(model_card, lab, record)


def test_timm_and_independent_fusions_agree(model_card, lab, record):
    reparamchecks.check_fusions_agree(model_card, lab, record)


def test_deploy_form_is_plain_3x3(model_card, lab, record):
    reparamchecks.check_deploy_is_plain(model_card, lab, record)


@rows_with(lambda row: row.params_m is not None)
def test_deploy_params_match_published(model_card, published_row, lab, record):
    reparamchecks.check_deploy_params(model_card, lab, record, published_row)


@rows_with(lambda row: row.flops_g is not None and row.flops_convention == "macs_1e9_deploy")
def test_deploy_flops_match_published(model_card, published_row, lab, record):
    reparamchecks.check_deploy_flops(model_card, lab, record, published_row)


def test_deploy_onnx_matches_training_form(model_card, lab, record):
    reparamchecks.check_deploy_onnx(model_card, lab, record)


def test_deploy_checkpoint_matches_training_form(model_card, lab, record):
    path = lab.artifacts(model_card).get("deploy_checkpoint")
    if path is None:
        pytest.skip(f"no deploy_checkpoint for {model_card.id} in the manifest (--artifacts)")
    reparamchecks.check_deploy_checkpoint(model_card, lab, record, path)
