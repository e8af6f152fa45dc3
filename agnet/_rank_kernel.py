"""Compiled CPU kernel of :mod:`agnet.metrics` (numba): the ranks of each query's true matches, one pass per row.

Imported by :mod:`agnet.metrics` only if numba imports; without it the NumPy path there is used (same results).
The functions are compiled on first use and cached on disk (``cache=True``: numba's ``__pycache__`` next to this
file, or its per-user cache directory when that is read-only); :data:`agnet.metrics` documents the cost.

Per query row ``r`` of a chunk (the same-id gallery entries come from the id index of ``metrics._GalleryIndex``:
``order[starts[s] : starts[s] + counts[s]]`` for the slot ``s`` of the query's id in ``uniq``):

1. the true matches (same id, other camera when cameras are given) are gathered and sorted: ``p_0 <= … <= p_{k-1}``
   (a NaN match is ``+inf``), ``hi = p_{k-1}``;
2. a bucket table over the finite range ``[lo, hi_f]`` of the matches: ``bucket(x) = clamp(floor((x - lo)·s), 0,
   K - 1)`` computed in float64 with the same operations for matches and gallery entries, so it is monotone
   (``x <= y`` ⇒ ``bucket(x) <= bucket(y)``); ``tab[b] = #{i : bucket(p_i) < b}``;
3. one pass over the row: an entry ``x`` that is not ``<= hi`` (NaN, or beyond every match) is skipped; otherwise
   ``idx = #{i : p_i < x}`` is found exactly — every match in a lower bucket is ``< x`` and every match in a higher
   one ``> x`` (monotone buckets), so only the matches of x's own bucket, ``tab[b] … tab[b+1] - 1``, are compared
   (a scan, or a binary search when there are more than ``scan`` of them) — and ``hist[idx] += 1``. Then
   ``x <= p_j`` ⇔ ``idx <= j``, so the running sum of ``hist`` up to ``j`` counts the entries ``<= p_j``
   (ties pessimistic: an entry equal to ``p_j`` is counted);
4. the same-id entries (true matches and junk) are taken back out with the same rule, leaving ``N_j`` = non-junk
   negatives ``<= p_j``, and the rank of the j-th match (1-based) is ``j + N_j``.

``±inf`` entries and matches need no special case: the clamp puts them in the end buckets and the exact comparison
inside a bucket orders them; a NaN entry fails ``x <= hi`` and is never counted. When the finite matches span no
range (one match, all equal, only infinities) or the span is not representable (overflow, subnormal), ``K = 1`` and
step 3 degenerates to the search within one bucket — still exact.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def num_matches(q_ids, q_cams, has_cams, uniq, counts, starts, order, g_cams):
    """(B,) int64: the number of true matches of each query (same id; other camera when ``has_cams``)."""
    b = q_ids.shape[0]
    npos = np.zeros(b, np.int64)
    for r in range(b):
        s = np.searchsorted(uniq, q_ids[r])
        if s < uniq.shape[0] and uniq[s] == q_ids[r]:
            c = 0
            for t in range(starts[s], starts[s] + counts[s]):
                if not (has_cams and g_cams[order[t]] == q_cams[r]):
                    c += 1
            npos[r] = c
    return npos


@nb.njit(cache=True, nogil=True)
def match_ranks(d, q_ids, q_cams, has_cams, uniq, counts, starts, order, g_cams, offsets, out, first_row, row_step,
                max_buckets, per_match, scan):
    """Write the 1-based ranks of the true matches of rows ``first_row, first_row + row_step, …`` of ``d`` (B, G)
    into ``out[offsets[r] : offsets[r + 1]]`` (ascending; ``offsets`` from :func:`num_matches`)."""
    b, g = d.shape
    m = 0
    for s in range(counts.shape[0]):
        m = max(m, counts[s])
    p = np.empty(max(m, 1), d.dtype)
    hist = np.empty(m + 1, np.int64)
    nt = max_buckets + _SPREAD  # the buckets, then the far entries' counters
    tab = np.empty(nt + 1, np.int64)
    amb = np.empty(nt, np.bool_)
    cnt = np.zeros(nt, np.int64)
    key = np.empty(g, np.int32)
    consts = np.empty(3, d.dtype)  # lo, scale, top in the distances' own float type
    for r in range(first_row, b, row_step):
        k = offsets[r + 1] - offsets[r]
        if k == 0:
            continue
        row = d[r]
        s = np.searchsorted(uniq, q_ids[r])
        lo_m, hi_m = starts[s], starts[s] + counts[s]
        # 1. the true matches, sorted (NaN → +inf)
        i = 0
        for t in range(lo_m, hi_m):
            gi = order[t]
            if has_cams and g_cams[gi] == q_cams[r]:
                continue
            y = row[gi]
            p[i] = y if y == y else np.inf
            i += 1
        ps = p[:k]
        ps.sort()
        hi = ps[k - 1]
        # 2. buckets over the finite range of the matches
        a = 0
        while a < k and ps[a] == -np.inf:
            a += 1
        z = k - 1
        while z >= 0 and ps[z] == np.inf:
            z -= 1
        nbk = 1
        consts[0] = 0.0
        consts[1] = 0.0
        if a < z:
            span = np.float64(ps[z]) - np.float64(ps[a])
            want = min(max_buckets, per_match * k)
            if want > 1 and 0.0 < span < np.inf:
                consts[1] = want / span
                if 0.0 < consts[1] < np.inf:  # representable in the distances' type
                    nbk = want
                    consts[0] = ps[a]
                else:
                    consts[1] = 0.0
        consts[2] = nbk - 1
        lo, scale, top, zero = consts[0], consts[1], consts[2], consts[1] * 0
        for u in range(nbk + _SPREAD + 1):
            tab[u] = 0
        for u in range(nbk + _SPREAD):
            amb[u] = False
        for u in range(k):
            t = (ps[u] - lo) * scale
            t = t if t > zero else zero
            t = t if t < top else top
            bk = np.int32(t)
            tab[bk + 1] += 1
            amb[bk] = True
        for u in range(nbk):
            tab[u + 1] += tab[u]
        for u in range(nbk + 1, nbk + _SPREAD + 1):
            tab[u] = k  # far entries: after every match (never counted)
        # 3a. the bucket of every entry (vectorised); NaN and entries beyond every match go to a far counter,
        # spread over _SPREAD of them so that runs of far entries do not wait on one counter
        far = np.int32(nbk)
        for gi in range(g):
            x = row[gi]
            t = (x - lo) * scale
            t = t if t > zero else zero
            t = t if t < top else top
            key[gi] = np.int32(t) if x <= hi else far + np.int32(gi & (_SPREAD - 1))
        # 3b. count them per bucket; an entry in a bucket that holds a match is placed among those exactly:
        # idx = #{p < x}, moved from the bucket's first index tab[kk] (where the bucket count puts it) to idx
        for u in range(k + 1):
            hist[u] = 0
        for gi in range(g):
            kk = key[gi]
            cnt[kk] += 1
            if amb[kk]:
                x = row[gi]
                i0 = tab[kk]
                idx = i0
                e = tab[kk + 1]
                if e - idx > scan:  # many matches in one bucket: bisection
                    while idx < e:
                        mid = (idx + e) >> 1
                        if ps[mid] < x:
                            idx = mid + 1
                        else:
                            e = mid
                else:
                    while idx < e and ps[idx] < x:
                        idx += 1
                if idx != i0:
                    hist[idx] += 1
                    hist[i0] -= 1
        for u in range(nbk + _SPREAD):
            hist[tab[u]] += cnt[u]
            cnt[u] = 0
        # 4. the same-id entries (true matches and junk) out again, by the same rule
        for t in range(lo_m, hi_m):
            x = row[order[t]]
            if x <= hi:
                tt = (x - lo) * scale
                tt = tt if tt > zero else zero
                tt = tt if tt < top else top
                bk = np.int32(tt)
                hist[_lower_bound(ps, x, tab[bk], tab[bk + 1], scan)] -= 1
        neg = 0
        off = offsets[r]
        for j in range(k):
            neg += hist[j]
            out[off + j] = j + 1 + neg


_SPREAD = 8  # far-entry counters (a power of two)


@nb.njit(cache=True, nogil=True)
def _lower_bound(ps, x, i, e, scan):
    """The first index in [i, e) whose match is >= x (e if none): a scan up to ``scan`` matches, else bisection."""
    if e - i > scan:
        while i < e:
            mid = (i + e) >> 1
            if ps[mid] < x:
                i = mid + 1
            else:
                e = mid
        return i
    while i < e and ps[i] < x:
        i += 1
    return i
