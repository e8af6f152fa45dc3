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
true-match distance ``p_j``; ``N_j = C(p_j) −`` (same-id entries ``<= p_j``) with ``C(p)`` the number of gallery
entries ``<= p``. Whatever the ranking, each distance is read a small, fixed number of times:

1. CPU, compiled (numba, the default when it imports; :mod:`agnet._rank_kernel`): per query row, the true matches
   are gathered through an id index built once (no Q×G id comparison) and sorted, and every gallery entry is
   placed among them exactly — ``idx = #{j : p_j < x}`` — by a monotone bucket table over the matches' range: only
   an entry whose bucket holds a match is compared with it (by one comparison when the bucket holds one match). The
   entries of ``idx <= j`` are those of a prefix of the buckets (a running sum over the buckets) plus the moves of
   the compared entries; that gives ``C(p_j)`` for all j; the same-id entries are taken out the same way. Rows with few candidates (entries ``<=`` the
   largest match) test blocks of entries at once and visit the candidates only; the others take two branch-light
   passes (the entries' buckets, vectorised; then their counts). Interleaved groups of rows go to
   ``torch.get_num_threads()`` Python threads on demand (the kernel releases the GIL; plain threads, not numba's
   ``parallel=True``, whose OpenMP layer kills a forked child that ranks again). The first call in a process takes
   about 1.3 s (it imports numba and loads the machine code cached by ``cache=True``; about 100 MB more memory); the
   first run after installing, or after the kernel changes, compiles it: about 16 s for the first distance dtype and
   8 s for the other (float32 / float64; measured on the suite's 2-core CPU);
2. CPU without numba (NumPy): the same counts from one bucket histogram per row (see :func:`_hist_round`): a
   monotone quantiser over the row's match range, one ``bincount``, and an exact split of each match's own bucket by
   comparing with that match — a fixed handful of passes over a cache-sized block of rows. When the candidates are a
   small share of the chunk (a good ranking), sorting just those is cheaper and is used instead;
3. elsewhere (CUDA): a row-batched ``torch.searchsorted`` of the whole chunk into the sorted match distances,
   ``scatter_add`` and a running sum — one pass, independent of the ranking too.

Memory is bounded by the chunk (the compiled kernel needs no chunk: a few gallery-sized buffers per thread); on a
GPU only the ranks of the true matches come back to the host.

Public API: :func:`evaluate` (→ :class:`RankResult`), :func:`cmc_map` (``(cmc, mAP)``), :func:`pairwise_distance`,
:func:`evaluate_features` (features → metrics in query chunks, never holding the whole Q×G matrix).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["RankResult", "cmc_map", "evaluate", "evaluate_features", "pairwise_distance"]

METRICS = ("euclidean", "cosine")
_CPU_CHUNK_ELEMENTS = 1 << 22  # distances per query chunk on CPU (16 MB of float32)
_GPU_CHUNK_ELEMENTS = 1 << 25
# How a chunk on CPU is ranked: "numba" (compiled kernel, the default when numba imports), "numpy" (the fallback),
# or "torch" (the code path CUDA takes). The tests switch it to cover all three.
# numba itself is imported on first use (it adds about half a second to an import of this module).
_CPU_PATH = "numba" if importlib.util.find_spec("numba") is not None else "numpy"


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

    def cams_np(self) -> np.ndarray:
        return self.cams.numpy()

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

    def index_np(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(order, uniq, counts, starts)`` as NumPy arrays (CPU index only)."""
        if not hasattr(self, "_np"):
            self._np = tuple(t.numpy() for t in (self.order, self.uniq, self.counts, self.starts))
        return self._np

    def members_np(self, q_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`members` in NumPy (CPU index only)."""
        order, uniq, counts, starts = self.index_np()
        b = q_ids.shape[0]
        if uniq.size == 0 or b == 0:
            return np.zeros((b, 0), np.int64), np.zeros((b, 0), np.bool_)
        slot = np.minimum(np.searchsorted(uniq, q_ids), uniq.size - 1)
        count = np.where(uniq[slot] == q_ids, counts[slot], 0)
        ar = np.arange(int(count.max()))
        valid = ar[None, :] < count[:, None]
        return order[np.where(valid, starts[slot][:, None] + ar[None, :], 0)], valid


# CPU path (NumPy): exact counts C[r, j] = #{g : d[r, g] <= p_j} by a per-row bucket histogram.
#
# Each row's distances are mapped by a monotone quantiser q(d) = clip(floor((d - lo)·s + base)) onto K buckets
# spanning the row's (unresolved) true-match distances, and counted with one bincount: an entry in a bucket below
# q(p_j) is < p_j, one in a bucket above it is > p_j (monotone rounding), so only p_j's own bucket is ambiguous.
# That bucket is split exactly: every entry is compared with the smallest match value of its bucket (a table
# look-up; +inf for buckets without a match, so the comparison is false there) and the entries above it are
# counted apart. A match that shares its bucket with a smaller *distinct* match value (rare with K ≫ P) is left
# to a next round whose grid spans only the unresolved values of that row; whatever is left after a few rounds,
# and ±inf matches, are counted directly (one comparison of the row). NaN goes to the top bucket, which never
# resolves a match, so a NaN entry is never counted. The work per entry is a fixed handful of vectorised passes
# over a cache-sized block of rows, whatever the ranking looks like.

_HIST_BUCKETS = 4096  # buckets per row
_HIST_BLOCK = 1 << 18  # entries per block of rows (the temporaries stay in cache)
_HIST_ROUNDS = 3
_SPARSE_BELOW = 0.25  # below this share of candidates per chunk, sort the candidates instead (float32)
_COMPACT_BELOW = 0.4  # below this share of entries under the top bucket, only those are gathered and counted


class _Workspace:
    """Reusable NumPy buffers for the CPU path: fresh multi-megabyte temporaries per block cost more in page
    faults (the allocator hands large blocks back to the OS) than the arithmetic on them."""

    def __init__(self):
        self._bufs: dict[tuple, np.ndarray] = {}

    def get(self, name: str, n: int, dtype) -> np.ndarray:
        key = (name, np.dtype(dtype).str)
        buf = self._bufs.get(key)
        if buf is None or buf.size < n:
            buf = self._bufs[key] = np.empty(n + n // 4 + 4096, dtype)
        return buf[:n]


def _quantise(x: np.ndarray, lo, hi, scale, base, top, out: np.ndarray) -> np.ndarray:
    """Bucket (as float) of each entry of x (rows × cols), NaN → top. Monotone in x, and the same float
    operations for the gallery entries and the match values, so equal values land in the same bucket."""
    if float(np.max(np.maximum(np.abs(lo), np.abs(hi)) * scale, initial=0)) < 2.0**20:
        np.multiply(x, scale, out=out)  # x·s + (base − lo·s): rounding costs well under a bucket here
        np.add(out, base - lo * scale, out=out)
    else:  # far from zero compared with the spread: subtract first
        np.subtract(x, lo, out=out)
        np.multiply(out, scale, out=out)
        np.add(out, base, out=out)
    np.clip(out, base - 1, top, out=out)
    if np.isnan(np.add.reduce(out, axis=None)):  # after clipping only a NaN can make the sum NaN
        np.copyto(out, np.broadcast_to(top, out.shape), where=np.isnan(out))
    return out


def _hist_round(d, rows, pv, todo, count, ws: _Workspace) -> None:
    """One histogram round over ``rows`` (sorted indices into d): resolves the entries of ``todo`` it can and
    writes their C into ``count``."""
    nb = rows.size
    ng = d.shape[1]
    k = _HIST_BUCKETS
    dt = d.dtype
    x = d[rows[0] : rows[0] + nb] if rows[-1] - rows[0] == nb - 1 else d[rows]
    act = todo[rows]
    vals = pv[rows]
    lo = np.where(act, vals, np.inf).min(1)
    hi = np.where(act, vals, -np.inf).max(1)
    span = hi.astype(np.float64) - lo.astype(np.float64)
    fi = np.finfo(dt)
    scale = np.clip((k - 3) / np.where(span > 0, span, 1.0), fi.tiny, fi.max).astype(dt)[:, None]
    base = (np.arange(nb) * k + 1).astype(dt)[:, None]  # exact integers: nb·K is kept far below 2**24
    top = base + (k - 2)
    lo, hi = lo[:, None], hi[:, None]
    # the match values still to resolve: row-major, so ascending within a row (pv is sorted), buckets too
    ar, ac = np.nonzero(act)
    qv = _quantise(vals, lo, hi, scale, base, top, np.empty(vals.shape, dt))[ar, ac].astype(np.intp)
    va = vals[ar, ac]
    first = np.ones(qv.size, bool)
    first[1:] = qv[1:] != qv[:-1]
    lut = np.full(nb * k, np.inf, dt)  # smallest match value of each bucket, +inf where none
    lut[qv[first]] = va[first]
    ok = (va == lut[qv]) & (qv != top[ar, 0].astype(np.intp))  # the top bucket holds the NaNs: never resolved
    n = nb * ng
    live = ws.get("live", n, np.bool_).reshape(nb, ng)
    np.less_equal(x, hi, out=live)  # farther than every match still to resolve (or NaN): never counted
    n_live = np.count_nonzero(live)
    if n_live < _COMPACT_BELOW * n:  # a good ranking: few entries are that close, gather and count only those
        idx = np.flatnonzero(live)
        per_row = np.diff(np.searchsorted(idx, np.arange(nb + 1) * ng))
        xv = (x.reshape(-1) if x.flags.c_contiguous else x.ravel()).take(idx)
        lo_, hi_, scale_, base_, top_ = (np.repeat(a[:, 0], per_row) for a in (lo, hi, scale, base, top))
        q = _quantise(xv, lo_, hi_, scale_, base_, top_, np.empty(n_live, dt)).astype(np.intp)
        above = xv > lut.take(q)  # in a match's bucket and farther than that match
        keys = np.sort(q)
        over = np.sort(q[above])
        c = (np.searchsorted(keys, qv, "right") - np.searchsorted(keys, (base - 1)[ar, 0].astype(np.intp))
             - (np.searchsorted(over, qv, "right") - np.searchsorted(over, qv, "left")))
    else:
        f = _quantise(x, lo, hi, scale, base, top, ws.get("f", n, dt).reshape(nb, ng))
        q32 = ws.get("q32", n, np.int32)
        np.copyto(q32.reshape(nb, ng), f, casting="unsafe")  # in range and >= 0: truncation is floor
        q = ws.get("q", n, np.intp)
        np.copyto(q, q32)
        t = ws.get("t", n, dt)
        np.take(lut, q, out=t)
        above = ws.get("above", n, np.bool_)
        np.greater(x.reshape(-1) if x.flags.c_contiguous else x.ravel(), t, out=above)  # > its bucket's match
        hist = np.bincount(q, minlength=nb * k)
        cum = np.cumsum(hist, out=ws.get("cum", nb * k, np.intp))
        prev_rows = cum[::k] - hist[::k]  # entries of the rows before
        c = cum[qv] - prev_rows[ar] - np.bincount(q[np.flatnonzero(above)], minlength=nb * k)[qv]
    r, j = rows[ar[ok]], ac[ok]
    count[r, j] = c[ok]
    todo[r, j] = False


def _count_le_np(d: np.ndarray, pv: np.ndarray, sel: np.ndarray, ws: _Workspace) -> np.ndarray:
    """C (B, M) int64: C[r, j] = #{g : d[r, g] <= pv[r, j]} where sel, 0 elsewhere (NaN entries never count)."""
    ng = d.shape[1]
    count = np.zeros(pv.shape, np.int64)
    finite = np.isfinite(pv)
    todo = sel & finite
    step = max(1, min(_HIST_BLOCK // max(ng, 1), (1 << 20) // _HIST_BUCKETS))
    with np.errstate(over="ignore", invalid="ignore"):  # huge values overflow to ±inf: clipped, still in order
        for _ in range(_HIST_ROUNDS):
            rows = np.flatnonzero(todo.any(1))
            for s in range(0, rows.size, step):
                _hist_round(d, rows[s : s + step], pv, todo, count, ws)
    rr, jj = np.nonzero(todo | (sel & ~finite))  # left over, and ±inf matches: compare the row directly
    for s in range(0, rr.size, 64):
        r, j = rr[s : s + 64], jj[s : s + 64]
        count[r, j] = np.count_nonzero(d[r] <= pv[r, j][:, None], axis=1)
    return count


# Few candidates (a good ranking): sorting just those is cheaper than the histogram.


def _keys_np(rows: np.ndarray, values: np.ndarray, tag: int) -> np.ndarray:
    bits = (values + np.float32(0.0)).view(np.int32)  # + 0.0 folds -0.0 onto 0.0
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # order-preserving: negative floats reversed
    return (rows.astype(np.int64) << 34) + (bits.astype(np.int64) << 2) + tag


def _neg_before_sparse_np(dn, pm, own_rows, own_vals, match_rows, match_vals, ws: _Workspace):
    """N_j for the ragged true matches of a float32 chunk by sorting only the *candidates* (entries <= the row's
    largest true-match distance): one sort of 64-bit keys (row, order-preserving bits of the distance, tag) over
    the candidates (tag 0), the same-id entries among them (tag 1, cancelling their candidate copy) and the true
    matches (tag 2, after equal distances: pessimistic ties). Cheaper than the histogram when candidates are few
    (a good ranking); its cost grows with them, so it is only taken below ``_SPARSE_BELOW``."""
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


def _neg_before_np(d, pv, npos, dm, same, junk, ws: _Workspace) -> np.ndarray:
    """N_j for the ragged true matches (row-major) of a chunk, on CPU: all entries <= p_j minus the same-id ones.

    d (B, G) distances; pv (B, M) sorted true-match distances (NaN → +inf), +inf padding past npos; dm (B, M2) the
    same-id entries' distances with ``same`` (valid) and ``junk`` (same id and camera) masks."""
    b, m = pv.shape
    sel = np.arange(m)[None, :] < npos[:, None]
    if d.dtype == np.float32 and d.size:
        pmax = np.where(npos > 0, pv[np.arange(b), np.maximum(npos - 1, 0)], np.nan)[:, None]
        n_cand = np.count_nonzero(d <= pmax)  # NaN is never a candidate
        if n_cand < _SPARSE_BELOW * d.size:
            own = same & (dm <= pmax)
            own_rows = np.broadcast_to(np.arange(b)[:, None], own.shape)[own]
            match_rows = np.broadcast_to(np.arange(b)[:, None], sel.shape)[sel]
            return _neg_before_sparse_np(d, pmax, own_rows, dm[own], match_rows, pv[sel], ws)
    c_all = _count_le_np(d, pv, sel, ws)
    # true matches <= p_j: the end of p_j's run of equal values; a NaN match (sorted as +inf) is never <= anything
    ar = np.broadcast_to(np.arange(m), (b, m))
    if m:
        last = np.append(pv[:, 1:] != pv[:, :-1], np.ones((b, 1), bool), axis=1)  # a run ends here …
        last |= ~np.append(sel[:, 1:], np.zeros((b, 1), bool), axis=1)  # … or the row's matches do
        ends = np.where(last, ar, m)
        run_end = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    else:
        run_end = ar
    nan_pos = (np.isnan(dm) & same & ~junk).sum(1)
    c_pos = run_end + 1 - np.where(np.isposinf(pv), nan_pos[:, None], 0)
    # junk <= p_j (few per query)
    jn = junk.sum(1)
    width = int(jn.max()) if jn.size else 0
    if width:
        order = np.argsort(~junk, axis=1, kind="stable")[:, :width]
        jv = np.take_along_axis(np.where(junk, dm, np.nan), order, axis=1)
        c_junk = (jv[:, None, :] <= pv[:, :, None]).sum(2)
    else:
        c_junk = 0
    return (c_all - c_pos - c_junk)[sel]


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
    if d.device.type == "cpu" and _CPU_PATH != "torch":
        fn = _match_ranks_nb if _CPU_PATH == "numba" and _kernel() is not None else _match_ranks_np
        out = fn(d.numpy(), q_ids.numpy(), None if q_cams is None else q_cams.numpy(), gal, ws)
        return tuple(torch.from_numpy(x) for x in out)
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
    own = valid & (dm <= pmax)  # same-id entries that could precede a match: their share is removed
    neg_before = _neg_before_dense(d, pv, pmax, dm, own, sel, start)
    j = torch.arange(total, device=dev) - start[row] + 1
    return (neg_before + j).to(torch.float64), row, npos


def _match_ranks_np(d: np.ndarray, q_ids: np.ndarray, q_cams: np.ndarray | None, gal: _GalleryIndex,
                    ws: _Workspace):
    """:func:`_match_ranks` on CPU, in NumPy throughout (small torch ops cost more than their work there)."""
    b = d.shape[0]
    gidx, valid = gal.members_np(q_ids)
    is_pos = valid if q_cams is None else valid & (gal.cams_np()[gidx] != q_cams[:, None])
    npos = is_pos.sum(1)
    total = int(npos.sum())
    if total == 0:
        return np.zeros(0), np.zeros(0, np.int64), npos
    dm = np.take_along_axis(d, gidx, axis=1)  # distances of the same-id entries (true matches and junk)
    pv = np.where(is_pos & ~np.isnan(dm), dm, np.inf)  # a NaN true match is treated as +inf
    pv.sort(axis=1)  # (B, M): the P sorted match distances, then +inf padding
    neg_before = _neg_before_np(d, pv, npos, dm, valid, valid & ~is_pos, ws)
    row = np.repeat(np.arange(b), npos)
    start = np.cumsum(npos) - npos
    j = np.arange(total) - start[row] + 1
    return (neg_before + j).astype(np.float64), row, npos


# CPU path (numba): agnet._rank_kernel ranks each row in one pass over it (see its docstring). Its knobs:
_NB_MAX_BUCKETS = 4096  # buckets per row at most (the tables stay in the core's cache) …
_NB_BUCKETS_PER_MATCH = 32  # … and this many per true match (rows with many candidates) …
_NB_BUCKETS_PER_MATCH_FEW = 4  # … or this many (rows with few candidates: the tables cost more than they save)
_NB_SCAN = 8  # matches sharing an entry's bucket: compared one by one up to this many, else bisection
_NB_FEW = 1 / 16  # rows whose sampled share of candidates is below this visit the candidates only
_NB_THREAD_MIN = 1 << 16  # distances per chunk below which one thread ranks it (starting threads costs more)
_NB_GROUPS_PER_THREAD = 8  # row groups (rows t, t + groups, …) per thread, taken on demand: a busy core does less


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (created if absent): tried, not guessed from permissions."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def numba_cache_dir() -> str | None:
    """Where numba can cache the compiled kernel: None where its own choice works (``__pycache__`` beside
    :mod:`agnet._rank_kernel`, or its per-user cache folder), else a folder of this user's under the temporary
    directory. Set as ``NUMBA_CACHE_DIR`` before numba is imported (a read-only checkout with an unwritable HOME,
    e.g. a container, would otherwise stop at numba's "no locator available" error). ``NUMBA_CACHE_DIR`` given by
    the user always wins."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if _writable(Path(__file__).resolve().parent / "__pycache__"):
        return None
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path("~").expanduser() / ".cache") / "numba"
    if not str(home_cache).startswith("~") and _writable(home_cache):
        return None
    # A folder of this user's alone: the cache's index is unpickled, so one another user could plant files in (a
    # shared /tmp on a cluster) must never be used. Created 0700; an existing one must be ours, private, no link.
    folder = Path(tempfile.gettempdir()) / f"agnet-numba-cache-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
            return str(folder)
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="agnet-numba-cache-")


def _kernel():
    """:mod:`agnet._rank_kernel`, imported on first use; None (and the NumPy path from then on, with a warning)
    if numba is installed but does not import."""
    global _CPU_PATH
    fallback = numba_cache_dir()
    if fallback is not None:
        os.environ["NUMBA_CACHE_DIR"] = fallback
        if "numba" in sys.modules:  # imported already: its config has read the environment
            sys.modules["numba"].config.CACHE_DIR = fallback
    try:
        from agnet import _rank_kernel
    except ImportError as e:
        warnings.warn(f"agnet.metrics: numba does not import ({e}); ranking with the NumPy path", stacklevel=3)
        _CPU_PATH = "numpy"
        return None
    return _rank_kernel


def _threads(n_rows: int, n_entries: int) -> int:
    """Threads for the kernel: torch's intra-op setting (the suite's one knob), capped by NUMBA_NUM_THREADS."""
    if n_entries < _NB_THREAD_MIN:
        return 1
    import numba  # imported with the kernel

    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, n_rows))


def _match_ranks_nb(d: np.ndarray, q_ids: np.ndarray, q_cams: np.ndarray | None, gal: _GalleryIndex, ws=None):
    """:func:`_match_ranks` on CPU by the compiled kernel: ``(ranks, row, npos)`` as NumPy arrays.

    Rows are split into interleaved groups (rows t, t + groups, …, so good and bad queries mix) that the threads
    take on demand (a thread on a busy core takes fewer); each call runs the kernel without the GIL on its group's
    rows and writes only their slices of the output. Plain Python threads
    rather than numba's ``parallel=True``: its OpenMP layer kills a forked child that ranks again
    ("fork() called from a process already using GNU OpenMP") and its fallback layer aborts on concurrent calls.
    """
    kernel = _kernel()
    d = np.ascontiguousarray(d)
    b = d.shape[0]
    order, uniq, counts, starts = gal.index_np()
    has_cams = q_cams is not None
    if has_cams:
        qc, gc = np.ascontiguousarray(q_cams, np.int64), gal.cams_np()
    else:
        qc, gc = np.zeros(b, np.int64), np.zeros(order.shape[0], np.int64)
    qi = np.ascontiguousarray(q_ids, np.int64)
    npos = kernel.num_matches(qi, qc, has_cams, uniq, counts, starts, order, gc)
    offsets = np.zeros(b + 1, np.int64)
    np.cumsum(npos, out=offsets[1:])
    ranks = np.empty(int(offsets[-1]), np.float64)
    if ranks.size:
        n = _threads(b, d.size)
        args = (d, qi, qc, has_cams, uniq, counts, starts, order, gc, offsets, ranks)
        knobs = (_NB_MAX_BUCKETS, _NB_BUCKETS_PER_MATCH, _NB_BUCKETS_PER_MATCH_FEW, _NB_SCAN, _NB_FEW)
        if n == 1:
            kernel.match_ranks(*args, 0, 1, *knobs)
        else:  # a pool per call (no thread outlives it: a later fork finds none) that hands out row groups on demand
            groups = min(b, _NB_GROUPS_PER_THREAD * n)
            with ThreadPoolExecutor(n) as pool:
                for f in [pool.submit(kernel.match_ranks, *args, t, groups, *knobs) for t in range(groups)]:
                    f.result()
    return ranks, np.repeat(np.arange(b), npos), npos


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
    if chunk is None and dev.type == "cpu" and _CPU_PATH == "numba" and d_all.is_contiguous() and _kernel():
        step = max(nq, 1)  # the kernel needs no chunking: one call per thread over the whole matrix
    else:
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
