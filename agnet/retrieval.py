"""A query's top-k gallery matches under the evaluation's own distance and junk rule.

The report's retrieval figure (Fig. 8) uses this instead of ranking on its own; the split comes
from :func:`agnet.protocols.query_gallery`, the junk rule from :func:`agnet.protocols.junk`, the distance from
:func:`agnet.metrics.pairwise_distance`.
"""

from __future__ import annotations

import numpy as np
import torch

from agnet.metrics import pairwise_distance
from agnet.protocols import junk


def top_k(query: torch.Tensor, gallery: torch.Tensor, k: int, *, distance: str = "euclidean",
          q_ids=None, g_ids=None, q_cams=None, g_cams=None) -> list[np.ndarray]:
    """Per query row: the ``k`` nearest gallery positions (stable on ties) by ``distance``
    (``pairwise_distance``: Euclidean on L2-normalised features, or cosine). With cameras given,
    gallery images of the query's vehicle seen by the query's camera (VeRi junk) are skipped."""
    dist = pairwise_distance(query, gallery, metric=distance).numpy()
    return rank_gallery(dist, g_ids, k, q_ids=q_ids, q_cams=q_cams, g_cams=g_cams)


def rank_gallery(dist: np.ndarray, g_ids, k: int, *, q_ids=None, q_cams=None, g_cams=None) -> list[np.ndarray]:
    """:func:`top_k` on a ready distance matrix (Q, G)."""
    dist = np.asarray(dist)
    junk_rule = q_cams is not None and g_cams is not None
    if junk_rule:
        if q_ids is None or g_ids is None:
            raise ValueError("the junk rule needs the query and gallery vehicle ids")
        q_ids, g_ids = np.asarray(q_ids), np.asarray(g_ids)
        q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    picks = []
    for q in range(dist.shape[0]):
        order = np.argsort(dist[q], kind="stable")
        if junk_rule:
            skip = junk(q_ids[q : q + 1], q_cams[q : q + 1], g_ids, g_cams)[0]
            order = order[~skip[order]]
        picks.append(order[:k])
    return picks
