"""ALS (Eq. 6-7) against hand-computed values, its reductions, and the total loss (Eq. 8)."""

from __future__ import annotations

import math

import pytest
import torch

from agnet.losses import LossWeights, als_epsilon, als_loss, masked_cross_entropy, total_loss

# One pair per ε case: same vehicle, hard negative (shared attributes), ordinary negative.
LOGITS = torch.tensor([[0.2, 1.0], [0.5, -0.3], [1.5, 0.0]])
SAME = torch.tensor([True, False, False])
HARD = torch.tensor([False, True, False])


def q_true(row: int) -> float:
    """Softmax probability of the true class of pair ``row``, computed by hand."""
    a, b = LOGITS[row].tolist()
    p_same = math.exp(b) / (math.exp(a) + math.exp(b))
    return p_same if SAME[row] else 1 - p_same


@pytest.mark.parametrize("row, epsilon", [(0, 1 - 0.3), (1, 0.3), (2, 0.0)])
def test_als_matches_hand_computation_for_each_epsilon_case(row, epsilon):
    theta, alpha, beta = 0.3, 0.1, 0.7
    q = q_true(row)
    expected = -math.log(q) - beta * epsilon * math.log(alpha + q)
    got = als_loss(LOGITS[row : row + 1], SAME[row : row + 1], HARD[row : row + 1], theta, alpha, beta)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_epsilon_cases():
    assert als_epsilon(SAME, HARD, 0.3).tolist() == pytest.approx([0.7, 0.3, 0.0])


def test_batch_value_is_the_mean_of_the_pairs():
    theta, alpha, beta = 0.2, 0.05, 1.0
    per_pair = [als_loss(LOGITS[i : i + 1], SAME[i : i + 1], HARD[i : i + 1], theta, alpha, beta) for i in range(3)]
    assert als_loss(LOGITS, SAME, HARD, theta, alpha, beta).item() == pytest.approx(torch.stack(per_pair).mean().item())


def test_beta_zero_is_plain_cross_entropy():
    expected = torch.nn.functional.cross_entropy(LOGITS, SAME.long())
    assert als_loss(LOGITS, SAME, HARD, 0.4, 0.1, 0.0).item() == pytest.approx(expected.item())


def test_theta_zero_ignores_attributes():
    """θ = 0: a hard negative costs exactly what an ordinary negative costs (the paper: ALS → Eq. 4)."""
    as_hard = als_loss(LOGITS[1:2], SAME[1:2], torch.tensor([True]), 0.0, 0.1, 1.0)
    as_plain = als_loss(LOGITS[1:2], SAME[1:2], torch.tensor([False]), 0.0, 0.1, 1.0)
    plain_ce = torch.nn.functional.cross_entropy(LOGITS[1:2], torch.tensor([0]))
    assert as_hard.item() == as_plain.item() == pytest.approx(plain_ce.item())


def test_hard_negatives_weigh_more_as_theta_grows():
    losses = [als_loss(LOGITS[1:2], SAME[1:2], HARD[1:2], t, 0.1, 1.0).item() for t in (0.0, 0.2, 0.5)]
    assert losses[0] < losses[1] < losses[2]


def test_masked_cross_entropy_ignores_missing_labels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    full = torch.nn.functional.cross_entropy(logits[:2], torch.tensor([0, 1]))
    assert masked_cross_entropy(logits, torch.tensor([0, 1, -1])).item() == pytest.approx(full.item())
    none = masked_cross_entropy(logits.requires_grad_(), torch.tensor([-1, -1, -1]))
    assert none.item() == 0.0 and none.requires_grad


def test_total_loss_weights_and_variants():
    torch.manual_seed(0)
    outputs = {"id_logits": torch.randn(4, 6), "color_logits": torch.randn(4, 3), "type_logits": torch.randn(4, 2)}
    batch = {"class_id": torch.tensor([0, 1, 2, 3]), "color_id": torch.tensor([0, -1, 2, 1]),
             "type_id": torch.tensor([1, 1, -1, 0]), "same": SAME[:2], "hard": HARD[:2]}
    als = {"theta": 0.3, "alpha": 0.1, "beta": 1.0}
    full = total_loss(outputs, batch, LOGITS[:2], LossWeights(0.5, 0.5, 1.0), "als", als)
    expected = 0.5 * full["category"] + 0.5 * (full["color"] + full["type"]) + full["verify"]
    assert full["total"].item() == pytest.approx(expected.item())
    ce = total_loss(outputs, batch, LOGITS[:2], LossWeights(0.5, 0.5, 1.0), "ce", als)
    assert ce["verify"].item() == pytest.approx(torch.nn.functional.cross_entropy(LOGITS[:2], SAME[:2].long()).item())
    only_id = total_loss(outputs, batch, LOGITS[:2], LossWeights(0.5, 0.0, 1.0), "ce", als)
    assert only_id["total"].item() == pytest.approx((0.5 * only_id["category"] + only_id["verify"]).item())


def test_masked_cross_entropy_needs_no_host_read_and_gives_unlabelled_rows_no_gradient():
    from agnet.train.hostreads import HostReadCounter

    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]], requires_grad=True)
    with HostReadCounter() as counter:
        loss = masked_cross_entropy(logits, torch.tensor([1, -1, 0]))
        loss.backward()
    assert counter.reads == []  # no bool(), .item() or boolean-mask indexing: nothing waits for a GPU
    assert logits.grad[1].abs().sum().item() == 0.0 and logits.grad[0].abs().sum().item() > 0
