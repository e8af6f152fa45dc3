"""Variants: each turns off exactly what its table row says, as config overrides only."""

from __future__ import annotations

import pytest
import torch

from agnet.config import load_config
from agnet.errors import ConfigError
from agnet.losses import LossWeights, total_loss
from agnet.model import AGNet, build_trunk
from agnet.train.settings import from_dict, resolve_settings
from tests.conftest import REPO


@pytest.fixture
def config():
    return load_config(REPO / "config.yaml")


def test_variants_differ_only_where_their_row_says(config):
    asl, ce, only_id = (resolve_settings(config, v) for v in ("agnet_asl", "agnet_ce", "only_id"))
    assert asl.verification_loss == "als" and asl.loss_weights == {"category": 0.5, "attributes": 0.5, "verify": 1.0}
    differing = {k for k, v in asl.to_dict().items() if ce.to_dict()[k] != v}
    assert differing == {"variant", "verification_loss"}
    differing = {k for k, v in ce.to_dict().items() if only_id.to_dict()[k] != v}
    assert differing == {"variant", "loss_weights"} and only_id.loss_weights["attributes"] == 0.0
    assert not only_id.uses_attributes and ce.uses_attributes and asl.uses_attributes


def _gradients(settings):
    torch.manual_seed(0)
    model = AGNet(build_trunk("resnet18_narrow"), 4, 3, 2, 16).train()
    out = model(torch.randn(8, 3, 32, 32))
    batch = {"class_id": torch.tensor([0, 1, 2, 3, 0, 2, 1, 3]), "color_id": torch.tensor([0, 1, 2, 0, 0, 2, 1, 1]),
             "type_id": torch.tensor([1, 0, 1, 0, 1, 1, 0, 1]), "same": torch.tensor([True, False, False, False]),
             "hard": torch.tensor([False, False, False, True])}
    terms = total_loss(out, batch, model.verify(out["e_id"][:4], out["e_id"][4:]),
                       LossWeights(**settings.loss_weights), settings.verification_loss, settings.als)
    terms["total"].backward()
    return model, terms


def test_only_id_sends_no_gradient_to_the_attribute_classifiers(config):
    model, _ = _gradients(resolve_settings(config, "only_id"))
    assert model.color_head.weight.grad.abs().sum() == 0 and model.type_head.weight.grad.abs().sum() == 0
    assert model.mask_conv.weight.grad.abs().sum() > 0  # the attention structure is still trained
    model, _ = _gradients(resolve_settings(config, "agnet_ce"))
    assert model.color_head.weight.grad.abs().sum() > 0


def test_als_changes_the_verification_loss_only_where_attributes_matter(config):
    _, ce = _gradients(resolve_settings(config, "agnet_ce"))
    _, asl = _gradients(resolve_settings(config, "agnet_asl"))
    assert asl["category"].item() == pytest.approx(ce["category"].item())
    assert asl["verify"].item() > ce["verify"].item()


def test_a_theta_sweep_is_just_config(config):
    config["variants"]["agnet_asl_theta0.4"] = {"verification_loss": "als", "als": {"theta": 0.4}}
    swept = resolve_settings(config, "agnet_asl_theta0.4")
    assert swept.als == {"theta": 0.4, "alpha": 0.1, "beta": 1.0}  # merged over the base recipe
    assert from_dict(swept.to_dict()) == swept


def test_unknown_variant_lists_the_defined_ones(config):
    with pytest.raises(ConfigError, match=r"unknown variant 'agnet_x' \(defined: agnet_asl, agnet_asl_shuffled, agnet_ce, agnet_ce_uniform, bot, bot_als, bot_attr, only_id\)"):
        resolve_settings(config, "agnet_x")
