"""Losses of AGNet: attribute and category cross-entropy (Eq. 2, 4), ALS (Eq. 6-7), total (Eq. 8); and BoT's
(issue 25): label smoothing on the identity cross-entropy and the batch-hard triplet loss.

Verification classes: 0 = different vehicles, 1 = same vehicle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MISSING = -1  # label of an unlabelled attribute: ignored, never guessed


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled samples (targets == -1 are ignored); 0 if none is labelled.

    logits (N, K), targets (N,) int64. No data-dependent branch or boolean indexing: every sample's loss
    is computed (an unlabelled one against class 0) and masked out, so the value never has to be read
    on the host (a GPU step stays free of host synchronisation).
    """
    labelled = targets != MISSING
    per_sample = F.cross_entropy(logits, targets.clamp(min=0), reduction="none")
    weight = labelled.to(per_sample.dtype)
    return (per_sample * weight).sum() / weight.sum().clamp(min=1.0)


def als_epsilon(same: torch.Tensor, hard: torch.Tensor, theta: float) -> torch.Tensor:
    """Eq. 7: ε = θ for pairs of different vehicles sharing the attributes, 1 − θ for the same vehicle, else 0.

    same, hard: (P,) bool; ``hard`` means different ids with equal colour and type (both labelled).
    """
    zeros = torch.zeros(same.shape, dtype=torch.float32, device=same.device)
    return torch.where(same, zeros + (1.0 - theta), torch.where(hard, zeros + theta, zeros))


def als_loss(logits: torch.Tensor, same: torch.Tensor, hard: torch.Tensor, theta: float, alpha: float,
             beta: float) -> torch.Tensor:
    """Attribute-based label smoothing loss, Eq. 6, averaged over pairs.

    ℓ = Σ_i −p_i log q_i + β Σ_i −ε p_i log(α + q_i) with p the one-hot pair label and q = softmax(logits);
    for one pair this is −log q_y − β ε log(α + q_y). logits (P, 2), same/hard (P,) bool.
    With β = 0 it is the plain cross-entropy; with θ = 0 hard negatives weigh exactly like other negatives.
    """
    target = same.long()
    log_q = F.log_softmax(logits.float(), dim=1)
    log_q_y = log_q.gather(1, target[:, None]).squeeze(1)
    epsilon = als_epsilon(same, hard, theta)
    extra = -epsilon * torch.log(alpha + log_q_y.exp())
    return (-log_q_y + beta * extra).mean()


def hardest_pairs(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-hard mining (Hermans et al. 2017): per anchor, the farthest image of its identity (never itself) and
    the nearest image of another identity.

    dist (B, B) pairwise distances, labels (B,) int64 → (positive index (B,), negative index (B,), valid (B,) bool:
    the anchor has both a positive and a negative in the batch). No host read: masks, not boolean indexing.
    """
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & ~eye, ~same
    far = dist.masked_fill(~positive, float("-inf")).argmax(dim=1)
    near = dist.masked_fill(~negative, float("inf")).argmin(dim=1)
    return far, near, positive.any(dim=1) & negative.any(dim=1)


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """(B, D) → (B, B) Euclidean distances, float32; sqrt of a clamped squared distance (finite gradient at 0)."""
    x = features.float()
    squared = x.pow(2).sum(1)
    d2 = squared[:, None] + squared[None, :] - 2.0 * (x @ x.t())
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """BoT's triplet loss: mean over anchors of max(0, d(a, hardest p) − d(a, hardest n) + margin), on the
    Euclidean distances of ``features`` (B, D) (the feature before the BNNeck); anchors without a positive or a
    negative in the batch are left out (0 if none has both)."""
    dist = pairwise_euclidean(features)
    far, near, valid = hardest_pairs(dist.detach(), labels)
    d_pos = dist.gather(1, far[:, None]).squeeze(1)
    d_neg = dist.gather(1, near[:, None]).squeeze(1)
    weight = valid.to(dist.dtype)
    return (F.relu(d_pos - d_neg + margin) * weight).sum() / weight.sum().clamp(min=1.0)


@dataclass(frozen=True)
class LossWeights:
    """λ1 (category), λ2 (colour + type), λ3 (verification) of Eq. 8."""

    category: float
    attributes: float
    verify: float


def identity_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Identity cross-entropy (Eq. 4); with ``label_smoothing`` ε > 0 the target is (1 − ε)·one-hot + ε/K (BoT,
    Szegedy et al. 2016). logits (B, K), targets (B,) int64. ε = 0 is exactly the plain cross-entropy."""
    if label_smoothing:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    return F.cross_entropy(logits, targets)


def total_loss(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], verify_logits: torch.Tensor | None,
               weights: LossWeights, verification: str | None, als: dict[str, float] | None, *,
               id_label_smoothing: float = 0.0, triplet: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Eq. 8: λ1·ℓ_category + λ2·(ℓ_color + ℓ_type) + λ3·ℓ_verify (+ w·ℓ_triplet); returns every term and ``total``.

    ``verification`` is ``"als"`` (Eq. 6-7 with ``als`` = {theta, alpha, beta}) or ``"ce"`` (β = 0; ``als`` is not
    read and may be None). A term whose weight is 0 is still reported (for the logs) but contributes nothing; a
    model without attribute heads (BoT) or a batch without pairs (``verify_logits`` None) reports 0 for those
    terms. ``triplet`` = {weight, margin}: :func:`batch_hard_triplet` on ``outputs["f_triplet"]`` (off when None
    or weight 0); ``id_label_smoothing``: ε of :func:`identity_loss`.
    """
    zero = outputs["id_logits"].new_zeros(())
    terms = {
        "category": identity_loss(outputs["id_logits"], batch["class_id"], id_label_smoothing),
        "color": masked_cross_entropy(outputs["color_logits"], batch["color_id"]) if "color_logits" in outputs else zero,
        "type": masked_cross_entropy(outputs["type_logits"], batch["type_id"]) if "type_logits" in outputs else zero,
    }
    if verification == "als":
        theta, alpha, beta = als["theta"], als["alpha"], als["beta"]
    else:  # plain cross-entropy: the ALS term is weighted 0 (its constants are fixed, not read)
        theta, alpha, beta = 0.0, 1.0, 0.0
    if verify_logits is None:
        terms["verify"] = zero
    else:
        terms["verify"] = als_loss(verify_logits, batch["same"], batch["hard"], theta, alpha, beta)
    total = weights.category * terms["category"]
    if "color_logits" in outputs:
        total = total + weights.attributes * (terms["color"] + terms["type"])
    if verify_logits is not None:
        total = total + weights.verify * terms["verify"]
    use_triplet = triplet is not None and triplet["weight"] > 0
    terms["triplet"] = (batch_hard_triplet(outputs["f_triplet"], batch["class_id"], triplet["margin"])
                        if use_triplet else zero)
    if use_triplet:
        total = total + triplet["weight"] * terms["triplet"]
    terms["total"] = total
    return terms
