/* CPU kernels for DSA selection: the lightning-indexer tile, a running top-k, the fused indexer top-k (blocked
 * for prefill, split over keys for decoding), indexer scores, row top-k and the canonical-row check. Plain C11
 * with the vector type of `simd.h`; no Python or torch headers, loaded through ctypes. Threads come from the
 * caller: every kernel is called once per worker thread with a shared work counter and pulls items with an atomic
 * fetch-add, so the library carries no OpenMP runtime of its own (torch already loads one).
 *
 * Every vector loop here is lane-wise (a lane sums its own terms in a fixed order), so the AVX-512 and AVX2
 * builds compute bit-identical scores and selections.
 *
 * Layouts (fp32 C-contiguous): q [B,T,HP,DI] (HP = heads padded to a multiple of 4, padded heads have w = 0),
 * kp [B,NP,DI,16] (keys packed in 16-key panels, zero padded), k [B,S,DI] (rows, for the split kernel),
 * w [B,T,HP].
 */
#include "simd.h"

const char *sl_isa(void) { return SL_ISA; }

/* ---- indexer tile: one query (all HP heads) against one 16-key panel ---- */

#define NV (PW / VW) /* vectors per panel */

/* s[v] lane i = sum_j w[j] ReLU(q[j] . key v * VW + i) for the 16 keys of a panel, left in registers: per group of
 * 4 heads, 4 x NV accumulators over DI, each FMA lane-wise, then heads folded in order (so both builds give
 * bit-identical scores). */
static inline __attribute__((always_inline)) void score_vec(const float *qt, const float *wt, const float *panel,
                                                             int HP, int DI, vf *s) {
    const vf z = v_zero();
    for (int v = 0; v < NV; v++) s[v] = z;
    for (int g = 0; g < HP; g += 4) {
        const float *q0 = qt + (int64_t)g * DI;
        vf a[4][NV];
        for (int h = 0; h < 4; h++)
            for (int v = 0; v < NV; v++) a[h][v] = z;
        for (int d = 0; d < DI; d++) {
            vf kv[NV];
            for (int v = 0; v < NV; v++) {
                kv[v] = v_load(panel + d * PW + v * VW);
                V_KEEP(kv[v]); /* keep the row in registers: gcc would fold its load into all 4 FMAs */
            }
            for (int h = 0; h < 4; h++) {
                const vf b = v_set1(q0[h * DI + d]);
                for (int v = 0; v < NV; v++) a[h][v] = v_fma(b, kv[v], a[h][v]);
            }
        }
        for (int h = 0; h < 4; h++) {
            const vf w = v_set1(wt[g + h]);
            for (int v = 0; v < NV; v++) s[v] = v_fma(w, v_max(a[h][v], z), s[v]);
        }
    }
}

/* out16[i] = the panel's 16 scores (score_vec, stored). */
static void score_tile(const float *qt, const float *wt, const float *panel, int HP, int DI, float *out16) {
    vf s[NV];
    score_vec(qt, wt, panel, HP, DI, s);
    for (int v = 0; v < NV; v++) v_store(out16 + v * VW, s[v]);
}

/* ---- running top-k: candidates above a threshold, compacted to the best k when the buffer fills ---- */

typedef struct {
    float *val;
    int32_t *idx;
    int n, limit; /* candidates held; compaction point (2k + 32 the first time, the full buffer after) */
    float thr;
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

/* Keeps the k best of st's n candidates exactly (all above the k-th largest value, then enough equal to it). */
static void topk_compact_exact(topk_state *st, int k, float *tmp) {
    const int n = st->n;
    memcpy(tmp, st->val, sizeof(float) * (size_t)n);
    const float v = kth_largest(tmp, tmp + n, n, k);
    int ngt = 0;
    for (int i = 0; i < n; i++) ngt += st->val[i] > v;
    const int need = k - ngt;
    int m = 0, eq = 0;
    for (int i = 0; i < n; i++) {
        const float x = st->val[i];
        const int e = (x == v) & (eq < need), keep = (x > v) | e;
        st->val[m] = x, st->idx[m] = st->idx[i];
        m += keep, eq += e;
    }
    st->n = m, st->thr = v;
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
    for (int i = 0; i < n; i++) {
        const float x = st->val[i];
        const int keep = bin[i] >= top;
        st->val[m] = x, st->idx[m] = st->idx[i];
        lo = keep && x < lo ? x : lo;
        m += keep;
    }
    st->n = m, st->thr = lo, st->limit = cap;
}

/* Bit i set when lane i of the panel's scores beats the threshold and is finite (+inf and NaN are never allowed,
 * as in the reference). */
static inline uint32_t above_mask(const vf *s, float thr) {
#ifdef SL_AVX512
    return _mm512_cmp_ps_mask(s[0], _mm512_set1_ps(thr), _CMP_GT_OQ) &
           _mm512_cmp_ps_mask(s[0], _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
#else
    const __m256 t = _mm256_set1_ps(thr), inf = _mm256_set1_ps(INFINITY);
    const __m256 ka = _mm256_and_ps(_mm256_cmp_ps(s[0], t, _CMP_GT_OQ), _mm256_cmp_ps(s[0], inf, _CMP_LT_OQ));
    const __m256 kb = _mm256_and_ps(_mm256_cmp_ps(s[1], t, _CMP_GT_OQ), _mm256_cmp_ps(s[1], inf, _CMP_LT_OQ));
    return (uint32_t)_mm256_movemask_ps(ka) | ((uint32_t)_mm256_movemask_ps(kb) << 8);
#endif
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
        mask = above_mask(s, st->thr);
    } else {
        for (int i = 0; i < n; i++) mask |= (uint32_t)((sc[i] > st->thr) & (sc[i] < INFINITY)) << i;
    }
    if (mask) topk_insert(st, sc, mask, base, k, cap, tmp);
}

/* Scores one panel of query t and filters it into st without leaving registers unless a key gets in. */
static inline void score_filter(topk_state *st, const float *qt, const float *wt, const float *panel, int HP,
                                int DI, int n, int64_t base, int k, int cap, float *tmp) {
    vf s[NV];
    score_vec(qt, wt, panel, HP, DI, s);
    float sc[PW];
    if (n == PW) {
        const uint32_t mask = above_mask(s, st->thr);
        if (!mask) return;
        for (int v = 0; v < NV; v++) v_store(sc + v * VW, s[v]);
        topk_insert(st, sc, mask, base, k, cap, tmp);
        return;
    }
    for (int v = 0; v < NV; v++) v_store(sc + v * VW, s[v]);
    topk_filter(st, sc, n, base, k, cap, tmp);
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

/* ---- fused indexer top-k: items are (batch, query block), largest causal extent first ----
 *
 * A streaming top-k pays for every key that beats the running threshold, and early on almost every key does
 * (about k (1 + ln(n / k)) insertions plus the compactions they trigger). So each query first scores a sample,
 * every SAMPLE_STRIDE-th panel of its causal range, and starts the stream at the r-th largest sample score,
 * r = 1.5 k m / n + 8 (m sampled of n allowed keys): about 1.5 k keys overall beat that. The sampled panels are
 * not scored again. The start is a guess, checked at the end: when at least k keys beat it, every key of the top
 * k did (the k-th largest is above it) and the result is exact; otherwise (rare: a sample unlike the rest) the
 * query is streamed again from -inf. */

#define SAMPLE_STRIDE 8

static void topk_start(topk_state *st, int k, float thr) {
    st->n = 0, st->limit = 2 * k + 2 * PW, st->thr = thr;
}

/* Streams query t's panels [plo, phi] (descending) into st, skipping sampled panels when skip_sampled. */
static void stream_panels(topk_state *st, const float *qt, const float *wt, const float *kb, int HP, int DI,
                          int64_t plo, int64_t phi, int64_t lim, int skip_sampled, int k, int cap, float *tmp) {
    for (int64_t p = imin(phi, lim / PW); p >= plo; p--) {
        if (skip_sampled && p % SAMPLE_STRIDE == 0) continue;
        score_filter(st, qt, wt, kb + p * DI * PW, HP, DI, (int)imin(PW, lim - p * PW + 1), p * PW, k, cap, tmp);
    }
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

/* Scores the sampled panels of one query, sets the start threshold and inserts the sample; returns it. */
static float sample_start(topk_state *st, const float *qt, const float *wt, const float *kb, int HP, int DI,
                          int64_t lim, int k, int cap, float *sval, float *tmp) {
    float sc[PW];
    int m = 0;
    for (int64_t p = 0; p * PW <= lim; p += SAMPLE_STRIDE) {
        const int n = (int)imin(PW, lim - p * PW + 1);
        score_tile(qt, wt, kb + p * DI * PW, HP, DI, sc);
        memcpy(sval + m, sc, sizeof(float) * (size_t)n);
        m += n;
    }
    const int r = (int)(1.5 * k * m / (double)(lim + 1)) + 8;
    float thr = -INFINITY;
    if (m > r && r < k) /* else the sample cannot rule anything out */
        thr = nextafterf(rth_largest_below(sval, m, r, tmp), -INFINITY); /* keys equal to it still pass the filter */
    topk_start(st, k, thr);
    for (int i0 = 0; i0 < m; i0 += PW) /* the sample enters like the rest; chunk i0/PW = keys from i0*SAMPLE_STRIDE */
        topk_filter(st, sval + i0, m - i0 < PW ? m - i0 : PW, (int64_t)i0 * SAMPLE_STRIDE, k, cap, tmp);
    return thr;
}

int sl_indexer_topk(const float *q, const float *kp, const float *w, int64_t *out, int64_t B, int64_t T, int64_t S,
                    int HP, int DI, int causal, int k, int tq, int np_block, int64_t *counter) {
    const int64_t npan = (S + PW - 1) / PW, nqb = (T + tq - 1) / tq;
    const int cap = topk_cap(k);
    const int64_t smax = (npan / SAMPLE_STRIDE + 1) * PW; /* sampled keys of one query, at most */
    const size_t ntmp = 2 * (size_t)imax(cap, smax) + NBINS;
    float *val = malloc(sizeof(float) * (size_t)tq * cap), *tmp = malloc(sizeof(float) * ntmp);
    float *sval = malloc(sizeof(float) * (size_t)smax), *start = malloc(sizeof(float) * (size_t)tq);
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)tq * cap);
    uint64_t *bits = calloc((size_t)(S + 63) / 64 + 1, sizeof(uint64_t));
    topk_state *st = malloc(sizeof(topk_state) * (size_t)tq);
    if (!val || !tmp || !sval || !start || !idx || !bits || !st) {
        free(val), free(tmp), free(sval), free(start), free(idx), free(bits), free(st);
        return -1;
    }
    for (int64_t item = next_item(counter); item < B * nqb; item = next_item(counter)) {
        const int64_t b = item / nqb, t0 = (nqb - 1 - item % nqb) * tq, t1 = imin(T, t0 + tq);
        const float *kb = kp + b * npan * DI * PW;
        for (int64_t t = t0; t < t1; t++) {
            const int64_t lim = causal ? imin(S - 1, S - T + t) : S - 1;
            const float *qt = q + (b * T + t) * HP * DI, *wt = w + (b * T + t) * HP;
            st[t - t0] = (topk_state){val + (t - t0) * cap, idx + (t - t0) * cap, 0, 2 * k + 2 * PW, -INFINITY};
            start[t - t0] = lim < 0 ? -INFINITY : sample_start(&st[t - t0], qt, wt, kb, HP, DI, lim, k, cap, sval,
                                                                tmp);
        }
        const int64_t last = causal ? imin(S - 1, S - T + t1 - 1) : S - 1;
        for (int64_t phi = last / PW; last >= 0 && phi >= 0; phi -= np_block) {
            const int64_t plo = imax(0, phi - np_block + 1);
            for (int64_t t = t0; t < t1; t++) {
                const int64_t lim = causal ? imin(S - 1, S - T + t) : S - 1;
                if (lim < plo * PW) continue;
                const float *qt = q + (b * T + t) * HP * DI, *wt = w + (b * T + t) * HP;
                stream_panels(&st[t - t0], qt, wt, kb, HP, DI, plo, phi, lim, 1, k, cap, tmp);
            }
        }
        for (int64_t t = t0; t < t1; t++) {
            topk_state *s = &st[t - t0];
            /* exact unless fewer than k keys beat the guessed start (a compaction always leaves at least k) */
            if (start[t - t0] > -INFINITY && s->n < k) {
                const int64_t lim = causal ? imin(S - 1, S - T + t) : S - 1;
                const float *qt = q + (b * T + t) * HP * DI, *wt = w + (b * T + t) * HP;
                topk_start(s, k, -INFINITY);
                stream_panels(s, qt, wt, kb, HP, DI, 0, lim / PW, lim, 0, k, cap, tmp);
            }
            topk_finish(s, k, bits, tmp, out + (b * T + t) * k);
        }
    }
    free(val), free(tmp), free(sval), free(start), free(idx), free(bits), free(st);
    return 0;
}

/* ---- indexer scores written out: items are (batch, query block); out [B,T,S] gets -inf where not allowed ---- */

int sl_indexer_scores(const float *q, const float *kp, const float *w, float *out, int64_t B, int64_t T, int64_t S,
                      int HP, int DI, int causal, int tq, int np_block, int64_t *counter) {
    const int64_t npan = (S + PW - 1) / PW, nqb = (T + tq - 1) / tq;
    float sc[PW];
    for (int64_t item = next_item(counter); item < B * nqb; item = next_item(counter)) {
        const int64_t b = item / nqb, t0 = (nqb - 1 - item % nqb) * tq, t1 = imin(T, t0 + tq);
        const float *kb = kp + b * npan * DI * PW;
        for (int64_t t = t0; t < t1; t++) {
            const int64_t lim = causal ? imin(S - 1, S - T + t) : S - 1;
            float *row = out + (b * T + t) * S;
            for (int64_t s = imax(lim + 1, 0); s < S; s++) row[s] = -INFINITY;
        }
        for (int64_t plo = 0; plo < npan; plo += np_block) {
            const int64_t phi = imin(npan - 1, plo + np_block - 1);
            for (int64_t t = t0; t < t1; t++) {
                const int64_t lim = causal ? imin(S - 1, S - T + t) : S - 1;
                const float *qt = q + (b * T + t) * HP * DI, *wt = w + (b * T + t) * HP;
                float *row = out + (b * T + t) * S;
                for (int64_t p = plo; p <= phi && p * PW <= lim; p++) {
                    score_tile(qt, wt, kb + p * DI * PW, HP, DI, sc);
                    const int64_t n = imin(PW, lim - p * PW + 1);
                    memcpy(row + p * PW, sc, sizeof(float) * (size_t)n);
                }
            }
        }
    }
    return 0;
}

/* ---- top-k of precomputed rows: items are rows of scores [R,S]; non-finite scores are never selected ---- */

int sl_topk_rows(const float *scores, int64_t *out, int64_t R, int64_t S, int k, int64_t *counter) {
    const int cap = topk_cap(k);
    float *val = malloc(sizeof(float) * (size_t)cap), *tmp = malloc(sizeof(float) * (2 * (size_t)cap + NBINS));
    float sc[PW];
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)cap);
    uint64_t *bits = calloc((size_t)(S + 63) / 64 + 1, sizeof(uint64_t));
    if (!val || !tmp || !idx || !bits) return free(val), free(tmp), free(idx), free(bits), -1;
    for (int64_t r = next_item(counter); r < R; r = next_item(counter)) {
        topk_state st = {val, idx, 0, 2 * k + 2 * PW, -INFINITY};
        const float *row = scores + r * S;
        for (int64_t s0 = 0; s0 < S; s0 += PW) {
            const int n = (int)imin(PW, S - s0);
            for (int i = 0; i < n; i++) sc[i] = row[s0 + i] < INFINITY ? row[s0 + i] : NAN; /* +inf is not allowed */
            topk_filter(&st, sc, n, s0, k, cap, tmp);
        }
        topk_finish(&st, k, bits, tmp, out + r * k);
    }
    free(val), free(tmp), free(idx), free(bits);
    return 0;
}

/* ---- canonical rows: items are blocks of 1024 rows; counts rows that need sorting ---- */

/* A row is canonical when its in-range entries ([0, S)) are strictly ascending and no in-range entry follows an
 * out-of-range one (what topk_indices returns): the attention kernels then read it as a set as it is. Adds the
 * number of other rows (which must be sorted and de-duplicated first) to *bad. */
int sl_rows_canonical(const int64_t *idx, int64_t R, int K, int64_t S, int64_t *bad, int64_t *counter) {
    const int64_t nblk = (R + 1023) / 1024;
    int64_t n_bad = 0;
    for (int64_t item = next_item(counter); item < nblk; item = next_item(counter)) {
        for (int64_t r = item * 1024; r < imin(R, item * 1024 + 1024); r++) {
            const int64_t *row = idx + r * K;
            int64_t prev = -1;
            int tail = 0, ok = 1;
            for (int j = 0; j < K; j++) {
                const int64_t s = row[j];
                const int valid = (s >= 0) & (s < S);
                ok &= !valid | (!tail & (s > prev));
                prev = valid ? s : prev, tail |= !valid;
            }
            n_bad += !ok;
        }
    }
    __atomic_fetch_add(bad, n_bad, __ATOMIC_RELAXED);
    return 0;
}


/* ---- fused indexer top-k for few queries (decoding): items are (batch, query, key chunk) ----
 *
 * With a handful of queries the blocked kernel above has one item per batch row, so one thread would scan every
 * key, and packing the keys into panels would cost more than scoring them. Here keys are read as rows of k
 * [B,S,DI]: each item scores one query against one chunk of keys (4 keys x 4 heads of dot products at a time,
 * summed across lanes) and keeps the chunk's exact top k (values and positions, unordered, -inf/-1 padded);
 * the caller merges the chunks. */

#if VW == 16
/* out lane i = sum of the lanes of acc[i] (16 vectors -> 1) */
static inline vf reduce_lanes(const vf *acc) {
    vf w[16], t[8], u[4];
    for (int p = 0; p < 16; p++) w[p] = acc[(p % 4) * 4 + p / 4]; /* the tree below leaves sum(w[4m+l]) at 4l+m */
    for (int i = 0; i < 8; i++)
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xEE));
    for (int j = 0; j < 4; j++)
        u[j] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * j], t[2 * j + 1], 0x88),
                             _mm512_shuffle_f32x4(t[2 * j], t[2 * j + 1], 0xDD));
    const vf x = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
    const vf y = _mm512_add_ps(_mm512_unpacklo_ps(u[2], u[3]), _mm512_unpackhi_ps(u[2], u[3]));
    return _mm512_add_ps(_mm512_shuffle_ps(x, y, 0x44), _mm512_shuffle_ps(x, y, 0xEE));
}
#else
/* out lane i = sum of the lanes of acc[i] (8 vectors -> 1) */
static inline vf reduce_lanes(const vf *acc) {
    const __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    const __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}
#endif

#define RH (VW / 4) /* heads per block of VW (head, key) dot products over 4 keys */

/* out4[i] = sum_j w[j] ReLU(q[j] . k_i) for the 4 key rows k0 + i * DI (DI contiguous floats each). */
static void score_rows4(const float *qt, const float *wt, const float *k0, int HP, int DI, float *out4) {
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, l[VW];
    for (int g = 0; g < HP; g += RH) {
        vf acc[VW];
        for (int i = 0; i < VW; i++) acc[i] = v_zero();
        int d = 0;
        for (; d + VW <= DI; d += VW)
            for (int u = 0; u < 4; u++) {
                const vf kv = v_load(k0 + (int64_t)u * DI + d);
                for (int h = 0; h < RH; h++) acc[h * 4 + u] = v_fma(v_load(qt + (int64_t)(g + h) * DI + d), kv, acc[h * 4 + u]);
            }
        if (d < DI)
            for (int u = 0; u < 4; u++) {
                const vf kv = v_load_n(k0 + (int64_t)u * DI + d, DI - d);
                for (int h = 0; h < RH; h++)
                    acc[h * 4 + u] = v_fma(v_load_n(qt + (int64_t)(g + h) * DI + d, DI - d), kv, acc[h * 4 + u]);
            }
        v_store(l, reduce_lanes(acc)); /* l[h * 4 + u] = q[g + h] . k_u */
        for (int h = 0; h < RH; h++)
            for (int u = 0; u < 4; u++) s[u] = fmaf(wt[g + h], l[h * 4 + u] > 0.0f ? l[h * 4 + u] : 0.0f, s[u]);
    }
    memcpy(out4, s, sizeof s);
}

int sl_indexer_topk_split(const float *q, const float *k, const float *w, float *val_out, int64_t *idx_out, int64_t B,
                          int64_t T, int64_t S, int HP, int DI, int causal, int topk, int64_t chunk, int64_t nchunk,
                          int64_t *counter) {
    const int cap = topk_cap(topk);
    float *val = malloc(sizeof(float) * (size_t)cap), *tmp = malloc(sizeof(float) * (2 * (size_t)cap + NBINS));
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)cap);
    if (!val || !tmp || !idx) return free(val), free(tmp), free(idx), -1;
    float sc[PW];
    for (int64_t item = next_item(counter); item < B * T * nchunk; item = next_item(counter)) {
        const int64_t bt = item / nchunk, c = item % nchunk, b = bt / T, t = bt % T;
        const int64_t lim = causal ? imin(S - 1, S - T + t) : S - 1, s_end = imin(lim + 1, (c + 1) * chunk);
        const float *qt = q + bt * HP * DI, *wt = w + bt * HP, *kb = k + b * S * DI;
        topk_state st = {val, idx, 0, 2 * topk + 2 * PW, -INFINITY};
        for (int64_t s0 = c * chunk; s0 < s_end; s0 += PW) {
            const int n = (int)imin(PW, s_end - s0);
            int i = 0;
            for (; i + 4 <= n; i += 4) score_rows4(qt, wt, kb + (s0 + i) * DI, HP, DI, sc + i);
            for (; i < n; i++) { /* the chunk's last 1-3 keys */
                float s = 0.0f;
                for (int h = 0; h < HP; h++) {
                    const float l = dot(qt + (int64_t)h * DI, kb + (s0 + i) * DI, DI);
                    s = fmaf(wt[h], l > 0.0f ? l : 0.0f, s);
                }
                sc[i] = s;
            }
            topk_filter(&st, sc, n, s0, topk, cap, tmp);
        }
        if (st.n > topk) topk_compact_exact(&st, topk, tmp);
        float *vo = val_out + item * topk;
        int64_t *io = idx_out + item * topk;
        for (int i = 0; i < topk; i++) vo[i] = i < st.n ? st.val[i] : -INFINITY, io[i] = i < st.n ? st.idx[i] : -1;
    }
    free(val), free(tmp), free(idx);
    return 0;
}
