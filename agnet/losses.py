"""Losses of AGNet: attribute and category cross-entropy (Eq. 2, 4), ALS (Eq. 6-7), total (Eq. 8).

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


@dataclass(frozen=True)
class LossWeights:
    """λ1 (category), λ2 (colour + type), λ3 (verification) of Eq. 8."""

    category: float
    attributes: float
    verify: float


def total_loss(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], verify_logits: torch.Tensor,
               weights: LossWeights, verification: str, als: dict[str, float]) -> dict[str, torch.Tensor]:
    """Eq. 8: λ1·ℓ_category + λ2·(ℓ_color + ℓ_type) + λ3·ℓ_verify; returns every term and ``total``.

    ``verification`` is ``"als"`` (Eq. 6-7 with ``als`` = {theta, alpha, beta}) or ``"ce"`` (β = 0; ``als`` is not
    read and may be None). A term whose weight is 0 is still reported (for the logs) but contributes nothing.
    """
    terms = {
        "category": F.cross_entropy(outputs["id_logits"], batch["class_id"]),
        "color": masked_cross_entropy(outputs["color_logits"], batch["color_id"]),
        "type": masked_cross_entropy(outputs["type_logits"], batch["type_id"]),
    }
    if verification == "als":
        theta, alpha, beta = als["theta"], als["alpha"], als["beta"]
    else:  # plain cross-entropy: the ALS term is weighted 0 (its constants are fixed, not read)
        theta, alpha, beta = 0.0, 1.0, 0.0
    terms["verify"] = als_loss(verify_logits, batch["same"], batch["hard"], theta, alpha, beta)
    terms["total"] = (
        weights.category * terms["category"]
        + weights.attributes * (terms["color"] + terms["type"])
        + weights.verify * terms["verify"]
    )
    return terms
