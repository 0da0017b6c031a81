/* The running top-k of the CPU selection kernels (included by indexer.c): candidates above a threshold, compacted
 * to the best k when the buffer fills, ranked by (score, key position) so that later keys win ties. */
#ifndef SL_TOPK_H
#define SL_TOPK_H

#include "simd.h"

#define NV (PW / VW) /* vectors per 16-key panel of scores */

/* Candidates of one query's running top-k. The order is (score, key position): of equal scores the later key
 * ranks higher, so the selection does not depend on the order keys arrive in (blocked prefill, split decoding and
 * row top-k select the same keys). A key enters when it ranks above (thr, thr_idx). */
typedef struct {
    float *val;
    int32_t *idx;
    int n, limit; /* candidates held; compaction point (2k + 32 the first time, the full buffer after) */
    float thr;
    int32_t thr_idx;
} topk_state;

/* The m-th largest (1-based) of a[0..n), by quickselect with branch-free out-of-place three-way partitions
 * (ping-ponging between a and tmp, both destroyed): data-dependent branches would mispredict half the time. */
static float kth_largest(float *a, float *tmp, int n, int m) {
    int lo = 0, hi = n, r = m - 1;
    float *src = a, *dst = tmp;
    while (hi - lo > 1) {
        const float x0 = src[lo], x1 = src[lo + (hi - lo) / 2], x2 = src[hi - 1];
        const float p = x0 > x1 ? (x1 > x2 ? x1 : (x0 > x2 ? x2 : x0)) : (x0 > x2 ? x0 : (x1 > x2 ? x2 : x1));
        int g = lo, l = hi - 1;
        for (int i = lo; i < hi; i++) {
            const float x = src[i];
            const int gt = x > p, lt = x < p;
            dst[l + ((g - l) & -gt)] = x; /* arithmetic select: gcc turns `gt ? g : l` back into a branch */
            g += gt, l -= lt;
        }
        if (r < g) hi = g;
        else if (r <= l) return p;
        else lo = l + 1;
        float *t = src;
        src = dst, dst = t;
    }
    return src[lo];
}

/* The m-th largest (1-based) of distinct ints a[0..n) (a and tmp destroyed), as kth_largest. */
static int32_t kth_largest_i32(int32_t *a, int32_t *tmp, int n, int m) {
    int lo = 0, hi = n, r = m - 1;
    int32_t *src = a, *dst = tmp;
    while (hi - lo > 1) {
        const int32_t p = src[lo + (hi - lo) / 2];
        int g = lo, l = hi - 1;
        for (int i = lo; i < hi; i++) {
            const int32_t x = src[i];
            const int gt = x > p, lt = x < p;
            dst[l + ((g - l) & -gt)] = x;
            g += gt, l -= lt;
        }
        if (r < g) hi = g;
        else if (r <= l) return p;
        else lo = l + 1;
        int32_t *t = src;
        src = dst, dst = t;
    }
    return src[lo];
}

/* Keeps the k best of st's n candidates exactly: all above the k-th largest value v, then, of those equal to v,
 * the latest keys. */
static void topk_compact_exact(topk_state *st, int k, float *tmp) {
    const int n = st->n;
    memcpy(tmp, st->val, sizeof(float) * (size_t)n);
    const float v = kth_largest(tmp, tmp + n, n, k);
    int32_t *eq = (int32_t *)tmp, cut = INT32_MAX; /* positions of the candidates equal to v */
    int ngt = 0, neq = 0;
    for (int i = 0; i < n; i++) {
        ngt += st->val[i] > v;
        if (st->val[i] == v) eq[neq++] = st->idx[i], cut = st->idx[i] < cut ? st->idx[i] : cut;
    }
    const int need = k - ngt; /* 1 <= need <= neq */
    if (need < neq) cut = kth_largest_i32(eq, eq + neq, neq, need);
    int m = 0;
    for (int i = 0; i < n; i++) {
        const float x = st->val[i];
        const int keep = (x > v) | ((x == v) & (st->idx[i] >= cut));
        st->val[m] = x, st->idx[m] = st->idx[i];
        m += keep;
    }
    st->n = m, st->thr = v, st->thr_idx = cut; /* a later key scoring v still outranks (v, cut) */
}

#define NBINS 512

/* Drops candidates that cannot be in the top k, cheaply: a histogram of the values over [min, max] finds the
 * bin holding the k-th largest; everything in the bins above and in it is kept (k plus a few), the rest dropped,
 * and the threshold becomes the smallest kept value, which is at most the k-th largest, so no top-k candidate is
 * ever lost. Falls back to the exact quickselect when one bin holds too many values (heavy ties). */
static void topk_compact(topk_state *st, int k, int cap, float *tmp) {
    const int n = st->n;
    float mn = st->val[0], mx = st->val[0];
    int i0 = 1;
    vf vmn = v_set1(mn), vmx = vmn;
    for (; i0 + VW <= n; i0 += VW) {
        const vf x = v_load(st->val + i0);
        vmn = v_min(vmn, x), vmx = v_max(vmx, x);
    }
    float lov[VW], hiv[VW];
    v_store(lov, vmn), v_store(hiv, vmx);
    for (int u = 0; u < VW; u++) mn = lov[u] < mn ? lov[u] : mn, mx = hiv[u] > mx ? hiv[u] : mx;
    for (int i = i0; i < n; i++) mn = st->val[i] < mn ? st->val[i] : mn, mx = st->val[i] > mx ? st->val[i] : mx;
    const float scale = (NBINS - 1) / (mx - mn);
    st->limit = cap;
    if (!(scale < INFINITY)) return topk_compact_exact(st, k, tmp); /* all equal, or a range that overflows */
    int32_t *hist = (int32_t *)tmp, *bin = hist + NBINS;
    memset(hist, 0, sizeof(int32_t) * NBINS);
    for (int i = 0; i < n; i++) bin[i] = (int32_t)((st->val[i] - mn) * scale); /* vectorised */
    for (int i = 0; i < n; i++) hist[bin[i]]++;
    int top = NBINS - 1, c = hist[top];
    while (c < k) c += hist[--top];
    if (c > (k + cap) / 2) return topk_compact_exact(st, k, tmp);
    int m = 0;
    float lo = INFINITY;
    int32_t lo_idx = INT32_MAX; /* the earliest kept key scoring lo: every kept candidate ranks at least as high */
    for (int i = 0; i < n; i++) {
        const float x = st->val[i];
        const int32_t j = st->idx[i];
        const int keep = bin[i] >= top;
        st->val[m] = x, st->idx[m] = j;
        if (keep && (x < lo || (x == lo && j < lo_idx))) lo = x, lo_idx = j;
        m += keep;
    }
    st->n = m, st->thr = lo, st->thr_idx = lo_idx, st->limit = cap;
}

/* Bit i set when key base + i (score lane i) ranks above (thr, thr_idx) and its score is finite (+-inf and NaN
 * are never allowed, as in the reference). */
static inline uint32_t above_mask(const vf *s, float thr, int32_t thr_idx, int64_t base) {
    const int64_t d = thr_idx - base; /* lanes after d hold later keys than thr_idx */
    const uint32_t later = d < 0 ? 0xFFFFu : d >= PW - 1 ? 0u : (0xFFFFu << (d + 1)) & 0xFFFFu;
#ifdef SL_AVX512
    const __m512 t = _mm512_set1_ps(thr), inf = _mm512_set1_ps(INFINITY);
    const uint32_t gt = _mm512_cmp_ps_mask(s[0], t, _CMP_GT_OQ), eq = _mm512_cmp_ps_mask(s[0], t, _CMP_EQ_OQ);
    const uint32_t fin = _mm512_cmp_ps_mask(s[0], inf, _CMP_LT_OQ) & _mm512_cmp_ps_mask(s[0], -inf, _CMP_GT_OQ);
#else
    const __m256 t = _mm256_set1_ps(thr), inf = _mm256_set1_ps(INFINITY), ninf = _mm256_set1_ps(-INFINITY);
    uint32_t gt = 0, eq = 0, fin = 0;
    for (int v = 0; v < 2; v++) {
        gt |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(s[v], t, _CMP_GT_OQ)) << (8 * v);
        eq |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(s[v], t, _CMP_EQ_OQ)) << (8 * v);
        fin |= (uint32_t)_mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(s[v], inf, _CMP_LT_OQ),
                                                          _mm256_cmp_ps(s[v], ninf, _CMP_GT_OQ))) << (8 * v);
    }
#endif
    return (gt | (eq & later)) & fin;
}

/* Appends sc[i] for the set bits i of mask; compacts when fewer than 16 free slots remain. */
static inline void topk_insert(topk_state *st, const float *sc, uint32_t mask, int64_t base, int k, int cap,
                               float *tmp) {
    while (mask) {
        const int i = __builtin_ctz(mask);
        st->val[st->n] = sc[i], st->idx[st->n] = (int32_t)(base + i), st->n++;
        mask &= mask - 1;
    }
    if (st->n > st->limit - PW) topk_compact(st, k, cap, tmp);
}

/* Appends the finite entries of sc[0..n) above the threshold. */
static inline void topk_filter(topk_state *st, const float *sc, int n, int64_t base, int k, int cap, float *tmp) {
    uint32_t mask = 0;
    if (n == PW) {
        vf s[NV];
        for (int v = 0; v < NV; v++) s[v] = v_load(sc + v * VW);
        mask = above_mask(s, st->thr, st->thr_idx, base);
    } else {
        for (int i = 0; i < n; i++) {
            const float x = sc[i];
            const int above = (x > st->thr) | ((x == st->thr) & (base + i > st->thr_idx));
            mask |= (uint32_t)(above & (x < INFINITY) & (x > -INFINITY)) << i;
        }
    }
    if (mask) topk_insert(st, sc, mask, base, k, cap, tmp);
}

/* Writes the kept keys in ascending key order (a bitmap pass over their words), then -1 padding. */
static void topk_finish(topk_state *st, int k, uint64_t *bits, float *tmp, int64_t *out) {
    if (st->n > k) topk_compact_exact(st, k, tmp);
    int64_t lo_word = INT64_MAX, hi_word = -1;
    for (int i = 0; i < st->n; i++) {
        const int64_t s = st->idx[i];
        bits[s >> 6] |= (uint64_t)1 << (s & 63);
        lo_word = imin(lo_word, s >> 6), hi_word = imax(hi_word, s >> 6);
    }
    int c = 0;
    for (int64_t wd = lo_word; wd <= hi_word; wd++) {
        uint64_t b = bits[wd];
        bits[wd] = 0;
        while (b) {
            out[c++] = (wd << 6) + __builtin_ctzll(b);
            b &= b - 1;
        }
    }
    for (; c < k; c++) out[c] = -1;
}

static int topk_cap(int k) { return 4 * k + 2 * PW; }

/* An empty running top-k starting at threshold thr (every key ranking above it enters). */
static void topk_start(topk_state *st, int k, float thr) {
    st->n = 0, st->limit = 2 * k + 2 * PW, st->thr = thr, st->thr_idx = INT32_MIN;
}

/* A value at most the r-th largest of a[0..n) and near it, cheaply: the smallest value in the histogram bins (over
 * [min, max]) from the one holding the r-th largest up; the exact quickselect when the range is degenerate
 * (all equal, infinite or NaN). Uses tmp for NBINS + n ints (or 2n floats). */
static float rth_largest_below(const float *a, int n, int r, float *tmp) {
    vf vmn = v_set1(a[0]), vmx = vmn;
    int i = 0;
    for (; i + VW <= n; i += VW) vmn = v_min(vmn, v_load(a + i)), vmx = v_max(vmx, v_load(a + i));
    float lov[VW], hiv[VW], mn = a[0], mx = a[0];
    v_store(lov, vmn), v_store(hiv, vmx);
    for (int u = 0; u < VW; u++) mn = lov[u] < mn ? lov[u] : mn, mx = hiv[u] > mx ? hiv[u] : mx;
    for (; i < n; i++) mn = a[i] < mn ? a[i] : mn, mx = a[i] > mx ? a[i] : mx;
    const float scale = (NBINS - 1) / (mx - mn);
    if (!(scale > 0.0f && scale < INFINITY)) {
        memcpy(tmp, a, sizeof(float) * (size_t)n);
        return kth_largest(tmp, tmp + n, n, r);
    }
    int32_t *hist = (int32_t *)tmp, *bin = hist + NBINS;
    memset(hist, 0, sizeof(int32_t) * NBINS);
    for (i = 0; i < n; i++) { /* vectorised; clamped: a NaN score (not in min/max) lands in bin 0 */
        const int32_t b = (int32_t)((a[i] - mn) * scale);
        bin[i] = b < 0 ? 0 : b > NBINS - 1 ? NBINS - 1 : b;
    }
    for (i = 0; i < n; i++) hist[bin[i]]++;
    int top = NBINS - 1, c = hist[top];
    while (c < r) c += hist[--top];
    float lo = INFINITY;
    for (i = 0; i < n; i++) lo = bin[i] >= top && a[i] < lo ? a[i] : lo;
    return lo;
}

#endif
