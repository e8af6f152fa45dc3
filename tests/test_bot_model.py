"""BoT's network settings (issue 25): last stride, BNNeck (in BoT and in AGNet's ID branch), the bot architecture,
and the batch-hard triplet / label-smoothing losses: each on when configured, the AGNet network unchanged when off."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from agnet.losses import LossWeights, batch_hard_triplet, hardest_pairs, identity_loss, pairwise_euclidean, total_loss
from agnet.model import AGNet, BoT, branch_descriptors, build_model, build_trunk


def settings(**overrides):
    base = {"architecture": "agnet", "backbone": "resnet18_narrow", "last_stride": 2, "bnneck": False,
            "embedding_dim": 32}
    return SimpleNamespace(**{**base, **overrides})


@pytest.mark.parametrize("backbone, size, maps", [("resnet18_narrow", 64, {2: 2, 1: 4}), ("resnet50", 256, {2: 8, 1: 16})])
def test_last_stride_one_keeps_layer3_resolution(backbone, size, maps):
    for stride, side in maps.items():
        trunk = build_trunk(backbone, last_stride=stride).eval()
        with torch.no_grad():
            x = torch.randn(1, 3, size, size)
            x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
            out = trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(x))))
        assert out.shape[-2:] == (side, side), (backbone, stride)


def test_last_stride_changes_no_weight_and_two_is_the_network_as_before():
    torch.manual_seed(0)
    before = build_trunk("resnet18_narrow").state_dict()
    torch.manual_seed(0)
    after = build_trunk("resnet18_narrow", last_stride=1).state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_build_model_with_every_trick_off_is_todays_agnet_bit_for_bit():
    torch.manual_seed(3)
    old = AGNet(build_trunk("resnet18_narrow"), 7, 5, 4, 32).state_dict()
    torch.manual_seed(3)
    new = build_model(settings(), 7, 5, 4).state_dict()
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)


def test_agnet_bnneck_triplet_reads_before_the_bn_and_id_after_it():
    torch.manual_seed(0)
    plain = build_model(settings(), 7, 5, 4).train()
    out = plain(torch.randn(6, 3, 48, 48))
    assert out["f_triplet"] is out["e_id"] and plain.id_head.bias is not None  # off: one feature for both
    torch.manual_seed(0)
    model = build_model(settings(bnneck=True), 7, 5, 4)
    assert model.id_head.bias is None
    assert not model.id_embedding.bn.bias.requires_grad and torch.equal(model.id_embedding.bn.bias, torch.zeros(32))
    model.eval()
    out = model(torch.randn(6, 3, 48, 48))
    torch.testing.assert_close(out["e_id"], model.id_embedding.bn(out["f_triplet"]), rtol=0, atol=0)
    torch.testing.assert_close(out["id_logits"], out["e_id"] @ model.id_head.weight.t())
    assert torch.equal(branch_descriptors(out)["ID"], out["e_id"])


def test_bot_network_shapes_and_its_test_descriptor_is_the_post_bnneck_feature():
    torch.manual_seed(0)
    model = build_model(settings(architecture="bot", bnneck=True, last_stride=1), 9, 5, 4)
    assert isinstance(model, BoT) and not hasattr(model, "verify")
    assert model.id_head.bias is None and not model.bnneck.bias.requires_grad
    model.train()
    model(torch.randn(8, 3, 40, 40))  # running statistics move away from (0, 1)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 40, 40))
    assert out["f_triplet"].shape == out["e_id"].shape == (4, 128) and out["id_logits"].shape == (4, 9)
    expected = F.batch_norm(out["f_triplet"], model.bnneck.running_mean, model.bnneck.running_var,
                            model.bnneck.weight, model.bnneck.bias, training=False, eps=model.bnneck.eps)
    torch.testing.assert_close(out["e_id"], expected)
    assert not torch.allclose(out["e_id"], out["f_triplet"])
    assert branch_descriptors(out).keys() == {"ID"}  # no Attr is made up
    assert torch.equal(branch_descriptors(out)["ID"], out["e_id"])
    no_neck = build_model(settings(architecture="bot"), 9, 5, 4).eval()
    with torch.no_grad():
        out = no_neck(torch.randn(2, 3, 40, 40))
    assert no_neck.bnneck is None and torch.equal(out["e_id"], out["f_triplet"])


def test_batch_hard_mining_picks_the_farthest_positive_and_nearest_negative():
    # identities 0, 0, 0, 1, 1, 2 on a line: distances are |x_i - x_j|
    x = torch.tensor([[0.0], [1.0], [5.0], [2.5], [9.0], [4.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    far, near, valid = hardest_pairs(pairwise_euclidean(x), labels)
    assert far.tolist() == [2, 2, 0, 4, 3, 0]  # anchor 5 has no positive: not valid
    assert near.tolist() == [3, 3, 5, 1, 2, 2]
    assert valid.tolist() == [True, True, True, True, True, False]
    loss = batch_hard_triplet(x, labels, margin=0.3)
    d = [(5 - 0) - 2.5, (5 - 1) - 1.5, (5 - 0) - 1.0, (9 - 2.5) - 1.5, (9 - 2.5) - (9 - 5)]
    assert loss.item() == pytest.approx(sum(max(0.0, v + 0.3) for v in d) / 5, rel=1e-5)
    far_enough = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
    assert batch_hard_triplet(far_enough, torch.tensor([0, 0, 1, 1]), 0.3).item() == 0.0  # margin met: no loss


def test_triplet_gradient_is_finite_for_identical_features():
    x = torch.ones(4, 8, requires_grad=True)
    batch_hard_triplet(x, torch.tensor([0, 0, 1, 1]), 0.3).backward()
    assert torch.isfinite(x.grad).all()


def test_label_smoothing_on_the_identity_loss_only_when_configured():
    logits, target = torch.randn(5, 7), torch.tensor([0, 1, 2, 3, 4])
    assert torch.equal(identity_loss(logits, target), F.cross_entropy(logits, target))
    smoothed = identity_loss(logits, target, 0.1)
    log_p = logits.log_softmax(1)
    by_hand = -(0.9 * log_p.gather(1, target[:, None]).squeeze(1) + 0.1 * log_p.mean(1)).mean()
    torch.testing.assert_close(smoothed, by_hand)


def _outputs(attribute_heads: bool):
    torch.manual_seed(1)
    out = {"id_logits": torch.randn(4, 3), "e_id": torch.randn(4, 6), "f_triplet": torch.randn(4, 6)}
    if attribute_heads:
        out.update(color_logits=torch.randn(4, 2), type_logits=torch.randn(4, 2))
    return out


def test_total_loss_adds_triplet_and_smoothing_only_when_on_and_works_without_attribute_heads():
    batch = {"class_id": torch.tensor([0, 0, 1, 2]), "color_id": torch.tensor([0, 1, -1, 0]),
             "type_id": torch.tensor([1, 1, 0, -1]), "same": torch.tensor([True, False]),
             "hard": torch.tensor([False, True])}
    weights = LossWeights(category=1.0, attributes=0.5, verify=1.0)
    verify = torch.randn(2, 2)
    out = _outputs(True)
    plain = total_loss(out, batch, verify, weights, "ce", None)
    assert plain["triplet"].item() == 0.0
    tricks = total_loss(out, batch, verify, weights, "ce", None, id_label_smoothing=0.1,
                        triplet={"weight": 2.0, "margin": 0.3})
    triplet = batch_hard_triplet(out["f_triplet"], batch["class_id"], 0.3)
    assert tricks["triplet"].item() == pytest.approx(triplet.item())
    assert tricks["category"].item() == pytest.approx(identity_loss(out["id_logits"], batch["class_id"], 0.1).item())
    expected = tricks["category"] + 0.5 * (plain["color"] + plain["type"]) + plain["verify"] + 2.0 * triplet
    assert tricks["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    off = total_loss(out, batch, verify, weights, "ce", None, triplet={"weight": 0.0, "margin": 0.3})
    assert torch.equal(off["total"], plain["total"])
    bot = total_loss(_outputs(False), batch, None, LossWeights(1.0, 0.0, 0.0), None, None,
                     triplet={"weight": 1.0, "margin": 0.3})
    assert bot["color"].item() == bot["type"].item() == bot["verify"].item() == 0.0
    assert bot["total"].item() == pytest.approx((bot["category"] + bot["triplet"]).item())
