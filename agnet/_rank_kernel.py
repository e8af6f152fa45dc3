"""Compiled CPU kernel of :mod:`agnet.metrics` (numba): the ranks of each query's true matches, one pass per row.

Imported by :mod:`agnet.metrics` only if numba imports; without it the NumPy path there gives the same results.
The functions are compiled on first use and cached on disk (``cache=True``: ``__pycache__`` next to this file, or
numba's per-user cache directory when that is read-only); :mod:`agnet.metrics` says what the first call costs.

Per query row of a chunk (its same-id gallery entries come from the id index of ``metrics._GalleryIndex``:
``order[starts[s] : starts[s] + counts[s]]`` for the slot ``s`` of the query's id in ``uniq``):

1. the true matches (same id; another camera when cameras are given) are gathered, a NaN one as ``+inf``;
   ``hi`` = the largest;
2. buckets over the finite range ``[lo, hi_f]`` of the matches: ``bucket(x) = clamp((x - lo)·s, 0, K - 1)`` rounded
   down, in the distances' own float type with the same operations for matches and gallery entries, so it is
   monotone (``x <= y`` ⇒ ``bucket(x) <= bucket(y)``); ``K = min(max_buckets, per_match·k)`` (``per_match_few`` on
   a row with few candidates). ``tab[b] = #{i : bucket(p_i) < b}`` (a count and a running sum); ``amb[b]``: bucket b
   holds a match. The matches are sorted by a counting sort on their buckets, then within buckets (an insertion
   sort, linear unless matches crowd a bucket; then, as with one bucket, an ordinary sort): ``p_0 <= … <= p_{k-1}``;
3. every entry ``x`` gets ``idx = #{i : p_i < x}``, exactly: a match in a lower bucket is ``< x`` and one in a
   higher bucket ``> x`` (monotone buckets), so ``idx = tab[bucket(x)]`` unless x's bucket holds matches; then the
   first of them decides (one comparison, no branch) unless the bucket holds more match values (rare: a scan, or
   bisection beyond ``scan`` of them). An entry that is not ``<= hi`` (NaN, or beyond every match) is never counted.
   ``x <= p_j`` ⇔ ``idx <= j``, so the entries ``<= p_j`` are those of idx up to j — ties pessimistic: an entry
   equal to ``p_j`` counts. They are counted as the entries of every bucket up to the last one whose ``tab`` is
   ``<= j`` (a running count over the buckets, ``reach``: ``tab`` ascends, so these buckets are a prefix) plus a
   small histogram ``hist`` of the moves of the entries placed past ``tab[b]``. Two ways, same counts: a row whose
   share of candidates (entries ``<= hi``) in a sample of ``_SAMPLE`` entries is below ``few`` tests blocks of
   ``_BLOCK`` entries at once (vectorised) and visits the candidates of the blocks that hold one; any other row
   takes two branch-light passes — the key of every entry (its bucket, or one of ``_SPREAD`` spare counters for the
   far ones so they do not queue on one counter; vectorised), then the count per key, listing without a branch the
   entries of buckets that hold matches (a few percent of them; about 6 % on random features). A listed entry of a
   bucket of one match moves one index up when above it (a comparison added to ``hist``, no branch); those of
   buckets of several matches (rare) are placed as above;
4. the same-id entries (true matches and junk) are taken back out by the same rule, leaving ``N_j`` = non-junk
   negatives ``<= p_j``; the rank of the j-th match (1-based) is ``j + N_j``.

``±inf`` entries and matches need no special case: the clamp puts them into the end buckets and the exact
comparison inside a bucket orders them. When the finite matches span no range (one match, all equal, only
infinities) or the span is not representable (overflow, a scale that overflows the float type), ``K = 1``: step 3
is the comparison with the matches alone — still exact. Keys are unsigned (no negative-index fix-ups in the loops);
a row holds fewer than 2**31 entries.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_SPREAD = 8  # counters for the entries beyond every match (a power of two)
_BLOCK = 32  # entries tested at once on the candidates-only way
_SAMPLE = 256  # entries of a row sampled to choose the way of step 3


@nb.njit(cache=True, nogil=True)
def num_matches(q_ids, q_cams, has_cams, uniq, counts, starts, order, g_cams):
    """(B,) int64: the number of true matches of each query (same id; another camera when ``has_cams``)."""
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
def _lower_bound(ps, x, i, e, scan):
    """First index in [i, e) whose match is >= x (e if none): a scan of up to ``scan`` matches, else bisection."""
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


@nb.njit(cache=True, nogil=True, inline="always")
def _position(x, lo, scale, zero, top):
    """``(x - lo)·scale`` clamped to ``[0, top]`` in the distances' float type (monotone in x; NaN → 0): its integer
    part is x's bucket."""
    t = (x - lo) * scale
    t = t if t > zero else zero
    return t if t < top else top


@nb.njit(cache=True, nogil=True, inline="always")
def _exact_index(ps, x, i0, e, scan):
    """``#{p < x}`` for an entry of a bucket holding the matches ``ps[i0:e]`` (``i0`` matches lie below it)."""
    idx = i0 + np.int64(ps[i0] < x)  # the bucket holds a match: usually that one decides
    if (idx != i0) & (idx < e):  # rare: more matches in this bucket, below x
        idx = _lower_bound(ps, x, idx, e, scan)
    return idx


@nb.njit(cache=True, nogil=True)
def match_ranks(d, q_ids, q_cams, has_cams, uniq, counts, starts, order, g_cams, offsets, out, first_row, row_step,
                max_buckets, per_match, per_match_few, scan, few):
    """Write the 1-based ranks of the true matches of rows ``first_row, first_row + row_step, …`` of ``d`` (B, G)
    into ``out[offsets[r] : offsets[r + 1]]``, ascending (``offsets``: running sum of :func:`num_matches`)."""
    b, g = d.shape
    m = 0
    for s in range(counts.shape[0]):
        m = max(m, counts[s])
    max_buckets = max(max_buckets, 1)
    p = np.empty(max(m, 1), d.dtype)  # the matches as gathered …
    q = np.empty(max(m, 1), d.dtype)  # … and sorted
    mb = np.empty(max(m, 1), np.int32)  # bucket of each gathered match
    hist = np.empty(m + 1, np.int64)
    nt = max_buckets + _SPREAD  # the buckets, then the far entries' counters
    tab = np.empty(nt + 1, np.int32)
    amb = np.empty(nt, np.bool_)
    fill = np.zeros(nt, np.int32)
    cnt = np.zeros(nt, np.int32)
    key = np.empty(g, np.uint32)
    first = np.full(nt, np.inf, d.dtype)  # the match of a bucket holding exactly one, else +inf
    multi = np.zeros(nt, np.bool_)  # the bucket holds two or more matches
    listed = np.empty(g, np.int32)  # entries of buckets holding matches
    reach = np.empty(m + 1, np.int64)  # reach[i]: entries of the buckets up to the last one of tab = i (0 where
    # no bucket has tab = i: several matches share a bucket; the final loop's running maximum fills those in)
    consts = np.zeros(4, d.dtype)  # lo, scale, top, 0 in the distances' own float type
    for r in range(first_row, b, row_step):
        k = offsets[r + 1] - offsets[r]
        if k == 0:
            continue
        row = d[r]
        s = np.searchsorted(uniq, q_ids[r])
        first_member, end_member = starts[s], starts[s] + counts[s]
        # 1. the true matches (NaN → +inf), their largest value and the range of the finite ones
        i = 0
        hi = -np.inf
        lo_f = np.inf
        hi_f = -np.inf
        for t in range(first_member, end_member):
            gi = order[t]
            if has_cams and g_cams[gi] == q_cams[r]:
                continue
            y = row[gi]
            y = np.inf if np.isnan(y) else y
            p[i] = y
            i += 1
            hi = max(hi, y)
            if -np.inf < y < np.inf:
                lo_f = min(lo_f, y)
                hi_f = max(hi_f, y)
        # few candidates (a share of the row below ``few`` in a sample) or many: the way of step 3, and so the
        # number of buckets — many buckets make fewer entries share a bucket with a match, but cost per row
        n_sample = min(g, _SAMPLE)
        cand = 0
        for gi in range(n_sample):
            cand += row[gi] <= hi
        sparse = cand < few * n_sample
        # 2. buckets over the finite range of the matches
        nbk = 1
        consts[0] = 0.0
        consts[1] = 0.0
        if lo_f < hi_f:
            span = np.float64(hi_f) - np.float64(lo_f)
            want = min(max_buckets, (per_match_few if sparse else per_match) * k)
            if want > 1 and span < np.inf:
                consts[1] = want / span
                if 0.0 < consts[1] < np.inf:  # representable in the distances' type
                    nbk = want
                    consts[0] = lo_f
                else:
                    consts[1] = 0.0
        consts[2] = nbk - 1
        lo, scale, top, zero = consts[0], consts[1], consts[2], consts[3]
        for u in range(nbk + _SPREAD + 1):
            tab[u] = 0
        for u in range(nbk + _SPREAD):
            amb[u] = False
        for u in range(k):
            # the same operations as for the gallery entries (monotone buckets); NaN only for ±inf when scale is 0:
            # then bucket 0, the only one
            bk = np.int32(_position(p[u], lo, scale, zero, top))
            mb[u] = bk
            tab[bk + 1] += 1
            amb[bk] = True
        for u in range(nbk):
            tab[u + 1] += tab[u]
        for u in range(nbk + 1, nbk + _SPREAD + 1):
            tab[u] = k  # far entries: after every match, never counted
        # the matches sorted: by bucket (a counting sort on tab), then within buckets (insertion sort, linear
        # unless matches share buckets); one bucket: an ordinary sort
        ps = q[:k]
        if nbk == 1:
            ps[:] = p[:k]
            ps.sort()
        else:
            crowd = 0
            for u in range(k):
                bk = mb[u]
                ps[tab[bk] + fill[bk]] = p[u]
                fill[bk] += 1
                crowd = max(crowd, fill[bk])
            for u in range(k):
                fill[mb[u]] = 0
            if crowd > 16:  # a crowded bucket: insertion sort would be quadratic there
                ps.sort()
            else:
                for u in range(1, k):
                    v = ps[u]
                    j = u - 1
                    while j >= 0 and ps[j] > v:
                        ps[j + 1] = ps[j]
                        j -= 1
                    ps[j + 1] = v
        for u in range(k + 1):
            hist[u] = 0
            reach[u] = 0
        for u in range(k):  # a bucket's matches: exactly one (its value in ``first``) or more (``multi``)
            bk = mb[u]
            if tab[bk + 1] - tab[bk] == 1:
                first[bk] = ps[tab[bk]]
            else:
                multi[bk] = True
        # 3. idx = #{p < x} of every entry: bucket b's count goes to tab[b] (``reach``, below), and an entry of a
        # bucket holding matches is moved from tab[b] to its exact idx (``hist``)
        if sparse:  # few candidates: visit those only
            for blk in range(0, g, _BLOCK):
                end_blk = min(blk + _BLOCK, g)
                c = 0
                for gi in range(blk, end_blk):  # vectorised test of a block: most hold no candidate
                    c += row[gi] <= hi
                if c == 0:
                    continue
                for gi in range(blk, end_blk):
                    x = row[gi]
                    if x <= hi:
                        kk = np.uint32(np.int32(_position(x, lo, scale, zero, top)))
                        cnt[kk] += 1
                        if amb[kk]:
                            i0 = tab[kk]
                            hist[_exact_index(ps, x, i0, tab[kk + 1], scan)] += 1
                            hist[i0] -= 1
        else:  # many: two branch-light passes
            far = np.int32(nbk)
            for gi in range(g):  # the key of every entry (vectorised)
                x = row[gi]
                t = _position(x, lo, scale, zero, top)
                key[gi] = np.uint32(np.int32(t) if x <= hi else np.int32(far + (gi & (_SPREAD - 1))))
            na = 0
            for gi in range(g):  # count per key; the entries of buckets holding matches (rare) listed, no branch
                kk = key[gi]
                cnt[kk] += 1
                listed[na] = gi
                na += amb[kk]
            nm = 0
            for u in range(na):  # a bucket of one match: an entry above it moves one index up (no branch) …
                gi = listed[u]
                kk = key[gi]
                i0 = tab[kk]
                up = np.int64(first[kk] < row[gi])
                hist[i0] -= up
                hist[i0 + 1] += up
                listed[nm] = gi
                nm += multi[kk]
            for u in range(nm):  # … a bucket of several: placed by comparison
                gi = listed[u]
                kk = key[gi]
                i0 = tab[kk]
                hist[_exact_index(ps, row[gi], i0, tab[kk + 1], scan)] += 1
                hist[i0] -= 1
        run = 0
        for u in range(nbk + _SPREAD):  # running count of the buckets; tab is ascending, so reach[i] ends up
            run += cnt[u]  # as the count up to the last bucket of tab = i (no read-modify-write chain)
            reach[tab[u]] = run
            cnt[u] = 0
        for u in range(k):
            first[mb[u]] = np.inf
            multi[mb[u]] = False
        # 4. the same-id entries (true matches and junk) out again, by the same rule
        for t in range(first_member, end_member):
            x = row[order[t]]
            if x <= hi:
                bk = np.int32(_position(x, lo, scale, zero, top))
                hist[_lower_bound(ps, x, tab[bk], tab[bk + 1], scan)] -= 1
        neg = 0
        base = 0
        off = offsets[r]
        for j in range(k):  # entries of idx <= j: the buckets up to the last of tab <= j, then the moves
            base = max(base, reach[j])
            neg += hist[j]
            out[off + j] = j + 1 + base + neg
