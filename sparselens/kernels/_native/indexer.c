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

/* Scores one panel of query t and filters it into st without leaving registers unless a key gets in. */
static inline void score_filter(topk_state *st, const float *qt, const float *wt, const float *panel, int HP,
                                int DI, int n, int64_t base, int k, int cap, float *tmp) {
    vf s[NV];
    score_vec(qt, wt, panel, HP, DI, s);
    float sc[PW];
    if (n == PW) {
        const uint32_t mask = above_mask(s, st->thr, st->thr_idx, base);
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
    st->n = 0, st->limit = 2 * k + 2 * PW, st->thr = thr, st->thr_idx = INT32_MIN;
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
            st[t - t0] = (topk_state){val + (t - t0) * cap, idx + (t - t0) * cap, 0, 2 * k + 2 * PW, -INFINITY, INT32_MIN};
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
        topk_state st = {val, idx, 0, 2 * k + 2 * PW, -INFINITY, INT32_MIN};
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


/* ---- fused indexer top-k for few queries (decoding): items are (batch, key chunk) ----
 *
 * With a handful of queries the blocked kernel above has one item per batch row, so one thread would scan every
 * key, and packing the whole key cache into panels would cost more than scoring it. Here each item takes one
 * chunk of keys, read as rows of k [B,S,DI]: every 16 keys are transposed into a panel on the fly (in registers,
 * 16x16 or 8x8 blocks) and scored for each of the T queries by the same tile as the blocked kernel, so decoding
 * computes bit for bit the scores a prefill computes, and the running top-k ranks them the same way. Each item
 * writes every query's exact top k of its chunk (values and positions, unordered, -inf/-1 padded); the caller
 * merges the chunks by (score, position). */

#if VW == 16
/* Rows r[0..16) of 16 floats -> r[i] lane j = old r[j] lane i. */
static inline void transpose16(__m512 *r) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
        t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xDD);
        t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
        t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xDD);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xDD);
        r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
        r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xDD);
    }
}
#endif

/* Rows r[0..8) of 8 floats -> r[i] lane j = old r[j] lane i. */
static inline void transpose8(__m256 *r) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
        r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
    }
}

/* panel[d * 16 + i] = dim d of key row i for i < n (zeros after), d < DI: 16 rows of k [.., DI] -> one panel. */
static void pack_panel(const float *krows, int n, int DI, float *panel) {
#if VW == 16
    for (int d0 = 0; d0 < DI; d0 += 16) {
        const int w = DI - d0 < 16 ? DI - d0 : 16;
        __m512 r[16];
        for (int i = 0; i < 16; i++) r[i] = i < n ? v_load_n(krows + (int64_t)i * DI + d0, w) : v_zero();
        transpose16(r);
        for (int d = 0; d < w; d++) _mm512_storeu_ps(panel + (d0 + d) * PW, r[d]);
    }
#else
    for (int i0 = 0; i0 < PW; i0 += 8)
        for (int d0 = 0; d0 < DI; d0 += 8) {
            const int w = DI - d0 < 8 ? DI - d0 : 8;
            __m256 r[8];
            for (int i = 0; i < 8; i++)
                r[i] = i0 + i < n ? v_load_n(krows + (int64_t)(i0 + i) * DI + d0, w) : v_zero();
            transpose8(r);
            for (int d = 0; d < w; d++) _mm256_storeu_ps(panel + (d0 + d) * PW + i0, r[d]);
        }
#endif
}

int sl_indexer_topk_split(const float *q, const float *k, const float *w, float *val_out, int64_t *idx_out, int64_t B,
                          int64_t T, int64_t S, int HP, int DI, int causal, int topk, int64_t chunk, int64_t nchunk,
                          int64_t *counter) {
    const int cap = topk_cap(topk);
    float *val = malloc(sizeof(float) * (size_t)T * cap), *tmp = malloc(sizeof(float) * (2 * (size_t)cap + NBINS));
    float *panel = malloc(sizeof(float) * (size_t)DI * PW);
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)T * cap);
    topk_state *st = malloc(sizeof(topk_state) * (size_t)T);
    if (!val || !tmp || !panel || !idx || !st) return free(val), free(tmp), free(panel), free(idx), free(st), -1;
    for (int64_t item = next_item(counter); item < B * nchunk; item = next_item(counter)) {
        const int64_t b = item / nchunk, c = item % nchunk, c0 = c * chunk, c1 = imin(S, c0 + chunk);
        for (int64_t t = 0; t < T; t++)
            st[t] = (topk_state){val + t * cap, idx + t * cap, 0, 2 * topk + 2 * PW, -INFINITY, INT32_MIN};
        for (int64_t s0 = c0; s0 < c1; s0 += PW) {
            pack_panel(k + (b * S + s0) * DI, (int)imin(PW, c1 - s0), DI, panel);
            for (int64_t t = 0; t < T; t++) {
                const int64_t lim = causal ? imin(S - 1, S - T + t) : S - 1; /* query t's last key */
                const int n = (int)imin(PW, imin(c1, lim + 1) - s0);
                if (n > 0)
                    score_filter(&st[t], q + (b * T + t) * HP * DI, w + (b * T + t) * HP, panel, HP, DI, n, s0, topk,
                                 cap, tmp);
            }
        }
        for (int64_t t = 0; t < T; t++) {
            if (st[t].n > topk) topk_compact_exact(&st[t], topk, tmp);
            float *vo = val_out + ((b * T + t) * nchunk + c) * topk;
            int64_t *io = idx_out + ((b * T + t) * nchunk + c) * topk;
            for (int i = 0; i < topk; i++)
                vo[i] = i < st[t].n ? st[t].val[i] : -INFINITY, io[i] = i < st[t].n ? st[t].idx[i] : -1;
        }
    }
    free(val), free(tmp), free(panel), free(idx), free(st);
    return 0;
}
