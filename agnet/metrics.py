"""Re-ID retrieval metrics: CMC, mAP, mINP and the official VeRi (MATLAB) trapezoid AP, without sorting the gallery.

Protocol (``docs``: datasets-and-protocols §3): for query *q* every gallery entry with q's id AND q's camera is
*junk* and is removed from q's ranked list (this drops q's own copy on VeRi); with ``q_cams = g_cams = None``
nothing is removed (VehicleID). The *true matches* are the remaining same-id entries, *P* of them. A query with
``P == 0`` is skipped (not counted in any mean). Smaller distance = more similar.

With ``r_1 < r_2 < … < r_P`` the 1-based ranks of the true matches among the non-junk gallery:

* CMC@k = fraction of valid queries with ``r_1 <= k`` (length ``max_rank``; a gallery shorter than ``max_rank``
  simply keeps the last value, so the curve is always non-decreasing);
* AP = (1/P) Σ_j j / r_j (non-interpolated; fast-reid, torchreid, TransReID …); mAP = mean over valid queries;
* INP = P / r_P (fast-reid's mINP);
* official AP (``baseline_evaluation_FACT_776.m`` / ``compute_AP.m``, trapezoid rule): with precision
  ``p(n)`` after n non-junk entries and ``p(0) = 1``, AP = (1/P) Σ_j (p(r_j − 1) + p(r_j)) / 2 =
  (1/P) Σ_j ((j−1)/(r_j−1) [or 1 when r_j = 1] + j/r_j) / 2 — a single match at rank 2 gives 0.25 (vs 0.5).
  It is averaged over the *valid* queries like the other metrics (the MATLAB script averages over all queries,
  which on VeRi is the same thing: every VeRi query has a true match).

**Ties (pessimistic):** a non-junk negative at exactly the same distance as a true match is ranked *before* it.
Equal-distance true matches among themselves need no order (the j-th match is the j-th match). ``-0.0`` equals
``0.0``. NaN distances rank after everything (after ``+inf``); a NaN true-match distance is treated as ``+inf``.
(The MATLAB script and ``argsort``-based toolkits break ties by gallery index instead, so they can differ from this
module only when a negative ties a match exactly.)

**Algorithm (no per-query sort of the gallery).** The ranks above are all CMC and AP need, and
``r_j = j + N_j`` with ``N_j`` the number of non-junk negatives whose distance is ``<=`` the j-th smallest
true-match distance ``p_j``. Per chunk of queries:

1. gather each query's same-id gallery entries through an id index built once (no Q×G id comparison), split them
   into true matches and junk by camera, sort only the P true-match distances;
2. *candidates* = the entries with distance ``<=`` the query's largest true-match distance: anything farther
   cannot precede a match (for a trained model a few per cent of the gallery; every entry in the worst case);
3. float32: one sort of 64-bit keys ``(row, order-preserving bits of the distance, tag)`` over the candidates
   (tag 0), the same-id entries among them (tag 1, cancelling their candidate copy) and the true matches (tag 2,
   after equal distances → pessimistic ties); ``N_j`` = #tag 0 − #tag 1 before the j-th tag 2 of the row.
   Other dtypes (float64): a row-batched ``searchsorted`` of the whole chunk into the sorted match distances,
   ``scatter_add`` and a running sum — exact in float64, about 3× slower.

Memory is bounded by the chunk. On CPU the sparse step runs in NumPy (its vectorised sort and compaction beat
torch's several times there), elsewhere the same steps run in torch (CUDA).

Public API: :func:`evaluate` (→ :class:`RankResult`), :func:`cmc_map` (``(cmc, mAP)``), :func:`pairwise_distance`,
:func:`evaluate_features` (features → metrics in query chunks, never holding the whole Q×G matrix).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["RankResult", "cmc_map", "evaluate", "evaluate_features", "pairwise_distance"]

METRICS = ("euclidean", "cosine")
_CPU_CHUNK_ELEMENTS = 1 << 22  # distances per query chunk on CPU (16 MB of float32)
_GPU_CHUNK_ELEMENTS = 1 << 25
_NUMPY_ON_CPU = True  # sparse path with NumPy on CPU (the tests switch it off to cover the torch version too)


@dataclass(frozen=True)
class RankResult:
    """Retrieval metrics of one query set against one gallery.

    ``cmc`` (``max_rank``,) float64 and the means are over the ``num_valid`` queries that have at least one true
    match; per-query arrays have length ``num_queries`` with NaN / -1 / 0 for skipped queries.
    """

    cmc: np.ndarray
    mAP: float
    num_queries: int
    num_valid: int
    mINP: float
    official_mAP: float | None
    ap: np.ndarray  # (Q,) float64 non-interpolated AP, NaN where skipped
    first_match_rank: np.ndarray  # (Q,) int64 1-based rank of the first true match among non-junk, -1 where skipped
    num_matches: np.ndarray  # (Q,) int64 number of true matches P (0 = skipped)
    official_ap: np.ndarray | None = None  # (Q,) float64 trapezoid AP, NaN where skipped; None unless requested

    @property
    def rank1(self) -> float:
        return float(self.cmc[0])


# --------------------------------------------------------------------------------------------------------------
# Inputs


def _tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    a = np.ascontiguousarray(x)
    if a.dtype == object:
        raise TypeError(f"{name}: expected a numeric array, got dtype object")
    with warnings.catch_warnings():  # read-only arrays (e.g. from pandas) are fine: nothing here writes to them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def _labels(x, name: str, n: int) -> torch.Tensor:
    t = _tensor(x, name)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(t.shape)}")
    if t.is_complex() or (t.is_floating_point() and not bool(torch.all(t == torch.round(t)))):
        raise TypeError(f"{name}: labels must be integers")
    return t.to(torch.int64)


def _check_cams(q_cams, g_cams) -> None:
    if (q_cams is None) != (g_cams is None):
        raise ValueError("pass both q_cams and g_cams (VeRi: junk removal) or neither (VehicleID: no junk)")


def _prepare_labels(q_ids, g_ids, q_cams, g_cams, nq: int, ng: int, dev: torch.device):
    """Validated query ids/cameras on ``dev`` and the gallery index: ``(q_ids, q_cams or None, gallery)``."""
    qi = _labels(q_ids, "q_ids", nq).to(dev)
    gi = _labels(g_ids, "g_ids", ng)
    qc = None if q_cams is None else _labels(q_cams, "q_cams", nq).to(dev)
    gc = None if g_cams is None else _labels(g_cams, "g_cams", ng)
    return qi, qc, _GalleryIndex(gi, gc, dev)


def _resolve_device(device, *tensors, prefer_cuda: bool = True) -> torch.device:
    """``device`` if given, else the first non-CPU tensor's device, else CUDA when available (``prefer_cuda``)."""
    if device is not None:
        return torch.device(device)
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "cpu":
            return t.device
    return torch.device("cuda" if prefer_cuda and torch.cuda.is_available() else "cpu")


def _chunk_rows(chunk: int | None, n_gallery: int, device: torch.device) -> int:
    if chunk is not None:
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        return int(chunk)
    budget = _GPU_CHUNK_ELEMENTS if device.type == "cuda" else _CPU_CHUNK_ELEMENTS
    return max(1, budget // max(1, n_gallery))


# --------------------------------------------------------------------------------------------------------------
# Core: ranks of the true matches of a chunk of queries


class _GalleryIndex:
    """Gallery entries grouped by id (built once), so a query's same-id entries are a gather, not a Q×G scan."""

    def __init__(self, g_ids: torch.Tensor, g_cams: torch.Tensor | None, device: torch.device):
        ids = g_ids.to(device)
        self.order = torch.argsort(ids, stable=True)
        self.uniq, self.counts = torch.unique_consecutive(ids[self.order], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.cams = None if g_cams is None else g_cams.to(device)

    def members(self, q_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) ids → gallery indices (B, M) of the same-id entries and their validity mask (B, M)."""
        b = q_ids.shape[0]
        if self.uniq.numel() == 0 or b == 0:
            z = torch.zeros((b, 0), dtype=torch.int64, device=q_ids.device)
            return z, z.bool()
        slot = torch.searchsorted(self.uniq, q_ids).clamp_max_(self.uniq.numel() - 1)
        count = torch.where(self.uniq[slot] == q_ids, self.counts[slot], 0)
        m = int(count.max())
        ar = torch.arange(m, device=q_ids.device)
        valid = ar[None, :] < count[:, None]
        pos = torch.where(valid, self.starts[slot][:, None] + ar[None, :], 0)
        return self.order[pos], valid


# Sparse path. Keys: (row << 34) | (order-preserving int32 of the float32 value << 2) | tag, so one sort orders
# by query, then distance, then tag: 0 = candidate (any entry <= the query's largest true-match distance),
# 1 = same-id entry among the candidates (cancels its candidate copy), 2 = true match (after equal distances:
# pessimistic ties). The ranks follow from counting tags before each tag 2.
# Written twice with the same steps: NumPy on CPU (its vectorised sort and compaction are several times faster
# than torch's there) and torch elsewhere (CUDA).


def _keys_np(rows: np.ndarray, values: np.ndarray, tag: int) -> np.ndarray:
    bits = (values + np.float32(0.0)).view(np.int32)  # + 0.0 folds -0.0 onto 0.0
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # order-preserving: negative floats reversed
    return (rows.astype(np.int64) << 34) + (bits.astype(np.int64) << 2) + tag


def _keys_torch(rows: torch.Tensor, values: torch.Tensor, tag: int) -> torch.Tensor:
    bits = (values + 0.0).view(torch.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (rows << 34) + (bits.to(torch.int64) << 2) + tag


class _Workspace:
    """Reusable NumPy buffers for the CPU sparse path: fresh multi-megabyte temporaries per chunk cost more in
    page faults (the allocator hands large blocks back to the OS) than the arithmetic on them."""

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int, dtype) -> np.ndarray:
        buf = self._bufs.get(name)
        if buf is None or buf.size < n:
            buf = self._bufs[name] = np.empty(n + n // 4 + 4096, dtype)
        return buf[:n]


def _neg_before_sparse_np(dn, pm, own_rows, own_vals, match_rows, match_vals, ws: _Workspace):
    """NumPy version of :func:`_neg_before_sparse` (same steps), in place in ``ws`` where possible."""
    b, g = dn.shape
    mask = ws.get("mask", b * g, np.bool_).reshape(b, g)
    np.less_equal(dn, pm, out=mask)  # NaN is never a candidate
    flat = np.flatnonzero(mask)
    k = flat.size
    n = k + own_vals.size + match_vals.size
    keys = ws.get("keys", n, np.int64)
    seg = keys[:k]
    vals = ws.get("vals", k, np.float32)
    np.take(dn.reshape(-1), flat, out=vals)  # (-0.0 needs no folding here: it only has to fold for the matches)
    bits = vals.view(np.int32)
    tmp = ws.get("tmp", k, np.int32)
    np.right_shift(bits, 31, out=tmp)
    np.bitwise_and(tmp, 0x7FFFFFFF, out=tmp)
    np.bitwise_xor(bits, tmp, out=bits)  # order-preserving int32: negative floats reversed
    np.copyto(seg, bits)
    np.left_shift(seg, 2, out=seg)
    # candidates per row: flat is sorted, so the row boundaries are a binary search away
    per_row = np.diff(np.searchsorted(flat, np.arange(b + 1) * g)) - np.bincount(own_rows, minlength=b)
    np.floor_divide(flat, g, out=flat)  # candidate rows
    np.left_shift(flat, 34, out=flat)
    np.add(seg, flat, out=seg)
    del flat
    keys[k : k + own_vals.size] = _keys_np(own_rows, own_vals, 1)
    keys[k + own_vals.size :] = _keys_np(match_rows, match_vals, 2)
    keys.sort()
    np.bitwise_and(keys, 3, out=keys)  # tags in sorted order
    flags = ws.get("flags", n, np.bool_)
    at = np.flatnonzero(np.equal(keys, 2, out=flags))  # the true matches, in the ragged order
    ones = np.searchsorted(np.flatnonzero(np.equal(keys, 1, out=flags)), at)  # tag 1 before each match
    # before a match: (#tag 0 − #tag 1) = position − (#tag 2 before = its index) − 2·#tag 1
    neg = at - np.arange(at.size) - 2 * ones
    neg -= (np.cumsum(per_row) - per_row)[match_rows]  # the rows before
    return neg


def _neg_before_sparse(d, pmax, own_rows, own_vals, match_rows, match_vals, ws: _Workspace) -> torch.Tensor:
    """N_j for the ragged true matches (row-major, sorted within the row) of a float32 chunk."""
    b, g = d.shape
    if d.device.type == "cpu" and _NUMPY_ON_CPU:
        return torch.from_numpy(_neg_before_sparse_np(d.numpy(), pmax.numpy(), own_rows.numpy(), own_vals.numpy(),
                                                      match_rows.numpy(), match_vals.numpy(), ws))
    flat = torch.nonzero((d <= pmax).reshape(-1)).squeeze(1)  # NaN is never a candidate
    rows = torch.div(flat, g, rounding_mode="floor")
    keys = torch.cat([
        _keys_torch(rows, torch.take(d, flat), 0),
        _keys_torch(own_rows, own_vals, 1),
        _keys_torch(match_rows, match_vals, 2),
    ])
    tag = torch.sort(keys).values & 3
    at = torch.nonzero(tag == 2).squeeze(1)
    ones = torch.cumsum(tag == 1, 0)
    neg = at - torch.arange(at.numel(), device=at.device) - 2 * ones[at]
    per_row = torch.bincount(rows, minlength=b) - torch.bincount(own_rows, minlength=b)
    return neg - (torch.cumsum(per_row, 0) - per_row)[match_rows]


def _neg_before_dense(d, pv, pmax, dm, own, sel, start):
    """Same N_j by a row-batched ``searchsorted`` over the whole chunk (any float dtype): non-candidates go to a
    spare last column, the same-id entries' share is subtracted, a per-row running sum gives N_j."""
    b, m = pv.shape
    dev = d.device
    binned = torch.zeros((b, m + 1), dtype=torch.int64, device=dev)
    one = torch.ones((), dtype=torch.int64, device=dev)
    pos = torch.searchsorted(pv, d.contiguous())
    pos.masked_fill_(~(d <= pmax), m)
    binned.scatter_add_(1, pos, one.expand_as(pos))
    del pos
    own_pos = torch.searchsorted(pv, dm.contiguous())
    own_pos.masked_fill_(~own, m)
    binned.scatter_add_(1, own_pos, (-one).expand_as(own_pos))
    counts = binned[:, :m][sel]
    csum = torch.cumsum(counts, 0)
    row = torch.arange(b, device=dev)[:, None].expand(b, m)[sel]
    return csum - (csum - counts)[start.clamp_max(counts.numel() - 1)][row]


def _match_ranks(d: torch.Tensor, q_ids: torch.Tensor, q_cams: torch.Tensor | None, gal: _GalleryIndex,
                 ws: _Workspace):
    """Ranks of the true matches of each query of a chunk, as a ragged row-major list.

    d (B, G) floating distances on the working device. Returns ``ranks`` (T,) float64 — per query the 1-based
    ranks r_1 <= … <= r_P of its true matches among its non-junk gallery — ``row`` (T,) int64 the query (row of
    the chunk) of each, and ``npos`` (B,) int64 the number of true matches P per query (T = Σ P).
    """
    b = d.shape[0]
    dev = d.device
    gidx, valid = gal.members(q_ids)
    is_pos = valid if q_cams is None else valid & (gal.cams[gidx] != q_cams[:, None])
    npos = is_pos.sum(1)
    total = int(npos.sum())
    if total == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty.to(torch.float64), empty, npos

    dm = d.gather(1, gidx)  # distances of the same-id entries (true matches and junk)
    pv = torch.where(is_pos, dm, torch.inf)
    pv = torch.where(torch.isnan(pv), torch.inf, pv)  # a NaN true match is treated as +inf
    pv = torch.sort(pv, dim=1).values  # (B, M): the P sorted match distances, then +inf padding
    m = pv.shape[1]
    sel = torch.arange(m, device=dev)[None, :] < npos[:, None]
    rows = torch.arange(b, device=dev)
    row = rows[:, None].expand(b, m)[sel]  # (T,) query of each true match, row-major
    start = torch.cumsum(npos, 0) - npos  # offset of each query's first match in the ragged list
    pmax = pv.gather(1, (npos - 1).clamp_min(0)[:, None])  # (B, 1) largest true-match distance
    pmax = torch.where(npos[:, None] > 0, pmax, torch.nan)  # a skipped query has no candidates
    own = valid & (dm <= pmax)  # same-id entries among the candidates: their share is removed below
    # Candidates: every entry <= pmax of its row; anything farther (or NaN) comes after the last true match.
    if d.dtype == torch.float32:
        own_rows = rows[:, None].expand_as(dm)[own]
        neg_before = _neg_before_sparse(d, pmax, own_rows, dm[own], row, pv[sel], ws)
    else:
        neg_before = _neg_before_dense(d, pv, pmax, dm, own, sel, start)
    j = torch.arange(total, device=dev) - start[row] + 1
    return (neg_before + j).to(torch.float64), row, npos


def _finish(parts: list, num_queries: int, max_rank: int, official: bool) -> RankResult:
    """Per-query metrics from the chunks' ragged ranks, in NumPy (deterministic sums), then the means."""
    if parts:
        ranks, query, npos = (np.concatenate(x) for x in zip(*parts, strict=True))
    else:
        ranks, query, npos = np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    valid = npos > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            "no query has a true match in the gallery (same id, and a different camera when cameras are given); "
            "for VehicleID pass q_cams=g_cams=None instead of constant cameras"
        )
    start = np.cumsum(npos) - npos  # each query's first entry in the ragged list (queries in order)
    j = (np.arange(ranks.size) - start[query] + 1).astype(np.float64)
    prec = j / ranks  # precision at each true match
    p = np.where(valid, npos, 1).astype(np.float64)

    def per_query_mean(x: np.ndarray) -> np.ndarray:
        return np.where(valid, np.bincount(query, weights=x, minlength=num_queries) / p, np.nan)

    ap = per_query_mean(prec)
    oap = None
    if official:
        before = np.where(ranks > 1, (j - 1) / np.maximum(ranks - 1, 1), 1.0)  # precision just before the hit
        oap = per_query_mean((before + prec) / 2)
    first_idx = np.minimum(start, max(ranks.size - 1, 0))
    last_idx = np.clip(start + npos - 1, 0, max(ranks.size - 1, 0))
    first = np.where(valid, ranks[first_idx], -1).astype(np.int64)
    inp = np.where(valid, npos / np.where(valid, ranks[last_idx], 1.0), np.nan)
    hist = np.bincount(np.minimum(first[valid], max_rank + 1) - 1, minlength=max_rank + 1)[:max_rank]
    return RankResult(
        cmc=np.cumsum(hist, dtype=np.float64) / num_valid,
        mAP=float(np.mean(ap[valid])),
        num_queries=num_queries,
        num_valid=num_valid,
        mINP=float(np.mean(inp[valid])),
        official_mAP=float(np.mean(oap[valid])) if official else None,
        ap=ap,
        first_match_rank=first,
        num_matches=npos,
        official_ap=oap,
    )


def _chunk_result(ranks: torch.Tensor, row: torch.Tensor, npos: torch.Tensor, offset: int) -> tuple:
    """A chunk's ragged ranks, their (global) query indices and P per query, as NumPy arrays."""
    return ranks.cpu().numpy(), row.cpu().numpy() + offset, npos.cpu().numpy()


# --------------------------------------------------------------------------------------------------------------
# Public API


def evaluate(
    distmat,
    q_ids,
    g_ids,
    q_cams=None,
    g_cams=None,
    max_rank: int = 50,
    official_ap: bool = False,
    *,
    chunk: int | None = None,
    device=None,
) -> RankResult:
    """CMC, mAP, mINP (and optionally the official trapezoid mAP) from a (Q, G) distance matrix.

    ``distmat``: NumPy array or torch tensor, smaller = more similar; float32 takes the fast path (float16/bfloat16
    are widened to it exactly, float64 is evaluated in float64 on the slower row-batched path). ``q_ids`` (Q,),
    ``g_ids`` (G,) integer ids; ``q_cams``/``g_cams`` integer cameras or both None (no junk removal). ``chunk``:
    queries per step (default: about 4 M distances on CPU, 32 M on GPU). ``device``: where to compute (default: the
    tensor's device, else CUDA when available, else CPU). Raises ValueError if no query has a true match.
    """
    _check_cams(q_cams, g_cams)
    max_rank = int(max_rank)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    d_all = _tensor(distmat, "distmat")
    if d_all.dim() != 2:
        raise ValueError(f"distmat must be 2-D (Q, G), got shape {tuple(d_all.shape)}")
    if not d_all.is_floating_point():
        d_all = d_all.to(torch.float64)
    elif d_all.dtype in (torch.float16, torch.bfloat16):
        d_all = d_all.to(torch.float32)
    nq, ng = d_all.shape
    dev = _resolve_device(device, d_all)
    qi, qc, gal = _prepare_labels(q_ids, g_ids, q_cams, g_cams, nq, ng, dev)
    ws = _Workspace()
    step = _chunk_rows(chunk, ng, dev)
    parts = []
    with torch.inference_mode():
        for s in range(0, nq, step):
            d = d_all[s : s + step].to(dev, non_blocking=True)
            ranks, row, npos = _match_ranks(d, qi[s : s + step], None if qc is None else qc[s : s + step], gal, ws)
            parts.append(_chunk_result(ranks, row, npos, s))
    return _finish(parts, nq, max_rank, official_ap)


def cmc_map(
    distmat,
    q_ids,
    g_ids,
    q_cams=None,
    g_cams=None,
    max_rank: int = 50,
    *,
    chunk: int | None = None,
    device=None,
    official_ap: bool = False,
) -> tuple[np.ndarray, float]:
    """``(cmc, mAP)`` — a thin wrapper of :func:`evaluate` (``official_ap=True`` only costs time here)."""
    r = evaluate(distmat, q_ids, g_ids, q_cams, g_cams, max_rank, official_ap, chunk=chunk, device=device)
    return r.cmc, r.mAP


def _features(x, name: str, device: torch.device) -> torch.Tensor:
    t = _tensor(x, name)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32)


class _Distance:
    """Distances of query chunks to the whole gallery, computed the same way by pairwise_distance and
    evaluate_features (with equal chunks they agree bit for bit)."""

    def __init__(self, gf: torch.Tensor, metric: str, normalize: bool):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.gf = gf
        self.unit = metric == "cosine" or normalize
        self.metric = metric
        if self.unit:
            self.g_scale = 1.0 / gf.norm(dim=1).clamp_min(1e-12)
        else:
            self.g_sq = (gf * gf).sum(1)

    def __call__(self, qf: torch.Tensor) -> torch.Tensor:
        s = qf @ self.gf.T
        if self.unit:
            q_scale = 1.0 / qf.norm(dim=1).clamp_min(1e-12)
            s.mul_(q_scale[:, None]).mul_(self.g_scale[None, :])  # cosine similarity
            return s.mul_(-1.0).add_(1.0) if self.metric == "cosine" else s.mul_(-2.0).add_(2.0)
        return s.mul_(-2.0).add_(self.g_sq[None, :]).add_((qf * qf).sum(1)[:, None])


def pairwise_distance(query_feats, gallery_feats, metric: str = "euclidean", normalize: bool = True, *,
                      chunk: int | None = None, device=None) -> torch.Tensor:
    """(Q, G) float32 distance matrix (torch tensor on ``device``) between query and gallery features.

    * ``"euclidean"`` returns the **squared** Euclidean distance ``|q|² + |g|² − 2 q·g`` (same ranking as the
      Euclidean distance); with ``normalize=True`` (default) on L2-normalised features, i.e. ``2 − 2 cos``.
    * ``"cosine"`` returns ``1 − cos`` (features are always normalised; ``normalize`` is ignored).

    Normalised Euclidean is exactly twice the cosine distance here, so the two rank identically. Values are not
    clamped: rounding may leave tiny negatives for (near-)identical vectors. Features are cast to float32;
    ``chunk`` bounds the temporaries (query rows per matrix product). ``device``: default the features' device
    (CPU for NumPy input — unlike :func:`evaluate`, the result is handed back, so it is not moved to CUDA
    unasked).
    """
    dev = _resolve_device(device, query_feats, gallery_feats, prefer_cuda=False)
    with torch.no_grad():  # not inference_mode: the result is an ordinary tensor for the caller
        qf = _features(query_feats, "query_feats", dev)
        gf = _features(gallery_feats, "gallery_feats", dev)
        if qf.shape[1] != gf.shape[1]:
            raise ValueError(f"feature dimensions differ: {qf.shape[1]} vs {gf.shape[1]}")
        dist = _Distance(gf, metric, normalize)
        step = _chunk_rows(chunk, gf.shape[0], dev)
        out = torch.empty((qf.shape[0], gf.shape[0]), dtype=torch.float32, device=dev)
        for s in range(0, qf.shape[0], step):
            out[s : s + step] = dist(qf[s : s + step])
    return out


def evaluate_features(
    query_feats,
    gallery_feats,
    q_ids,
    g_ids,
    q_cams=None,
    g_cams=None,
    max_rank: int = 50,
    official_ap: bool = False,
    *,
    metric: str = "euclidean",
    normalize: bool = True,
    chunk: int | None = None,
    device=None,
) -> RankResult:
    """Features → metrics, one query chunk at a time: equals ``evaluate(pairwise_distance(...), ...)`` but holds
    only a (chunk, G) block of distances at once. Extra memory ≈ one float32 copy of the features when they are
    not already float32 on ``device``, plus the block. ``device`` as in :func:`evaluate` (default: the features'
    device if not CPU, else CUDA when available, else CPU); ``metric``/``normalize`` as in
    :func:`pairwise_distance`."""
    _check_cams(q_cams, g_cams)
    max_rank = int(max_rank)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    dev = _resolve_device(device, query_feats, gallery_feats)
    parts = []
    with torch.inference_mode():
        qf = _features(query_feats, "query_feats", dev)
        gf = _features(gallery_feats, "gallery_feats", dev)
        if qf.shape[1] != gf.shape[1]:
            raise ValueError(f"feature dimensions differ: {qf.shape[1]} vs {gf.shape[1]}")
        nq, ng = qf.shape[0], gf.shape[0]
        qi, qc, gal = _prepare_labels(q_ids, g_ids, q_cams, g_cams, nq, ng, dev)
        ws = _Workspace()
        dist = _Distance(gf, metric, normalize)
        step = _chunk_rows(chunk, ng, dev)
        for s in range(0, nq, step):
            d = dist(qf[s : s + step])
            ranks, row, npos = _match_ranks(d, qi[s : s + step], None if qc is None else qc[s : s + step], gal, ws)
            parts.append(_chunk_result(ranks, row, npos, s))
    return _finish(parts, nq, max_rank, official_ap)
