/* CPU kernels for DeepSeek sparse attention: fused indexer top-k, indexer scores, row top-k, sparse attention
 * forward and backward. Plain C11 (AVX2+FMA intrinsics where the compiler targets them, portable loops
 * otherwise); no Python or torch headers, loaded through ctypes. Threads come from the caller: every kernel is
 * called once per worker thread with a shared work counter and pulls items with an atomic fetch-add, so the
 * library carries no OpenMP runtime of its own (torch already loads one).
 *
 * Layouts (all fp32 C-contiguous unless noted):
 *   indexer: q [B,T,HP,DI] (HP = heads padded to a multiple of 4, padded heads have w = 0),
 *            kp [B,NP,DI,16] (keys packed in 16-key panels, zero padded), w [B,T,HP].
 *   attention: q, o, dq [B,T,H,D]; kh, vh, dkh, dvh [B,H,S,D] (head-major); idx [B,T,K] int64; lse [B,T,H].
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SL_AVX2 1
#endif

#define PW 16 /* keys per panel */

static inline int64_t next_item(int64_t *counter) { return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); }
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* ---- indexer tile: one query (all HP heads) against one 16-key panel ---- */

static void score_tile(const float *qt, const float *wt, const float *panel, int HP, int DI, float *out16) {
#ifdef SL_AVX2
    const __m256 z = _mm256_setzero_ps();
    __m256 s0 = z, s1 = z;
    for (int g = 0; g < HP; g += 4) {
        const float *q0 = qt + (int64_t)g * DI, *q1 = q0 + DI, *q2 = q1 + DI, *q3 = q2 + DI;
        __m256 a00 = z, a01 = z, a10 = z, a11 = z, a20 = z, a21 = z, a30 = z, a31 = z;
        for (int d = 0; d < DI; d++) {
            __m256 k0 = _mm256_loadu_ps(panel + d * PW), k1 = _mm256_loadu_ps(panel + d * PW + 8);
            __asm__("" : "+x"(k0), "+x"(k1)); /* keep the row in registers: gcc would fold its load into all 4 FMAs */
            __m256 b = _mm256_broadcast_ss(q0 + d);
            a00 = _mm256_fmadd_ps(b, k0, a00), a01 = _mm256_fmadd_ps(b, k1, a01);
            b = _mm256_broadcast_ss(q1 + d);
            a10 = _mm256_fmadd_ps(b, k0, a10), a11 = _mm256_fmadd_ps(b, k1, a11);
            b = _mm256_broadcast_ss(q2 + d);
            a20 = _mm256_fmadd_ps(b, k0, a20), a21 = _mm256_fmadd_ps(b, k1, a21);
            b = _mm256_broadcast_ss(q3 + d);
            a30 = _mm256_fmadd_ps(b, k0, a30), a31 = _mm256_fmadd_ps(b, k1, a31);
        }
        __m256 w = _mm256_broadcast_ss(wt + g);
        s0 = _mm256_fmadd_ps(w, _mm256_max_ps(a00, z), s0), s1 = _mm256_fmadd_ps(w, _mm256_max_ps(a01, z), s1);
        w = _mm256_broadcast_ss(wt + g + 1);
        s0 = _mm256_fmadd_ps(w, _mm256_max_ps(a10, z), s0), s1 = _mm256_fmadd_ps(w, _mm256_max_ps(a11, z), s1);
        w = _mm256_broadcast_ss(wt + g + 2);
        s0 = _mm256_fmadd_ps(w, _mm256_max_ps(a20, z), s0), s1 = _mm256_fmadd_ps(w, _mm256_max_ps(a21, z), s1);
        w = _mm256_broadcast_ss(wt + g + 3);
        s0 = _mm256_fmadd_ps(w, _mm256_max_ps(a30, z), s0), s1 = _mm256_fmadd_ps(w, _mm256_max_ps(a31, z), s1);
    }
    _mm256_storeu_ps(out16, s0);
    _mm256_storeu_ps(out16 + 8, s1);
#else
    float acc[PW];
    for (int i = 0; i < PW; i++) out16[i] = 0.0f;
    for (int j = 0; j < HP; j++) {
        const float *qj = qt + (int64_t)j * DI;
        for (int i = 0; i < PW; i++) acc[i] = 0.0f;
        for (int d = 0; d < DI; d++)
            for (int i = 0; i < PW; i++) acc[i] += qj[d] * panel[d * PW + i];
        for (int i = 0; i < PW; i++) out16[i] += wt[j] * (acc[i] > 0.0f ? acc[i] : 0.0f);
    }
#endif
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
#ifdef SL_AVX2
    __m256 vmn = _mm256_set1_ps(mn), vmx = vmn;
    for (; i0 + 8 <= n; i0 += 8) {
        const __m256 x = _mm256_loadu_ps(st->val + i0);
        vmn = _mm256_min_ps(vmn, x), vmx = _mm256_max_ps(vmx, x);
    }
    float lo8[8], hi8[8];
    _mm256_storeu_ps(lo8, vmn), _mm256_storeu_ps(hi8, vmx);
    for (int u = 0; u < 8; u++) mn = lo8[u] < mn ? lo8[u] : mn, mx = hi8[u] > mx ? hi8[u] : mx;
#endif
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

/* Appends the finite entries of sc[0..n) above the threshold (+inf and NaN are never allowed, as in the
 * reference); compacts when fewer than 16 free slots remain. */
static inline void topk_filter(topk_state *st, const float *sc, int n, int64_t base, int k, int cap, float *tmp) {
    uint32_t mask = 0;
#ifdef SL_AVX2
    if (n == PW) {
        const __m256 t = _mm256_set1_ps(st->thr), inf = _mm256_set1_ps(INFINITY);
        const __m256 a = _mm256_loadu_ps(sc), b = _mm256_loadu_ps(sc + 8);
        const __m256 ka = _mm256_and_ps(_mm256_cmp_ps(a, t, _CMP_GT_OQ), _mm256_cmp_ps(a, inf, _CMP_LT_OQ));
        const __m256 kb = _mm256_and_ps(_mm256_cmp_ps(b, t, _CMP_GT_OQ), _mm256_cmp_ps(b, inf, _CMP_LT_OQ));
        mask = (uint32_t)_mm256_movemask_ps(ka) | ((uint32_t)_mm256_movemask_ps(kb) << 8);
    } else
#endif
        for (int i = 0; i < n; i++) mask |= (uint32_t)((sc[i] > st->thr) & (sc[i] < INFINITY)) << i;
    if (!mask) return;
    while (mask) {
        const int i = __builtin_ctz(mask);
        st->val[st->n] = sc[i], st->idx[st->n] = (int32_t)(base + i), st->n++;
        mask &= mask - 1;
    }
    if (st->n > st->limit - PW) topk_compact(st, k, cap, tmp);
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
    float sc[PW];
    for (int64_t p = imin(phi, lim / PW); p >= plo; p--) {
        if (skip_sampled && p % SAMPLE_STRIDE == 0) continue;
        score_tile(qt, wt, kb + p * DI * PW, HP, DI, sc);
        topk_filter(st, sc, (int)imin(PW, lim - p * PW + 1), p * PW, k, cap, tmp);
    }
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
    if (m > r && r < k) { /* else the sample cannot rule anything out */
        memcpy(tmp, sval, sizeof(float) * (size_t)m);
        thr = kth_largest(tmp, tmp + m, m, r);
        thr = nextafterf(thr, -INFINITY); /* keys equal to the r-th largest still pass the strict filter */
    }
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

/* ---- vector helpers for attention ---- */

#ifdef SL_AVX2
static inline float hsum256(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}

/* exp on 8 lanes: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 Taylor/minimax; ~1 ulp on [-87, 88]. */
static inline __m256 exp256(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-87.3365447504f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

static inline float dot(const float *a, const float *b, int D) {
#ifdef SL_AVX2
    if ((D & 7) == 0) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int d = 0;
        for (; d + 16 <= D; d += 16) {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), acc1);
        }
        if (d < D) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc0);
        return hsum256(_mm256_add_ps(acc0, acc1));
    }
#endif
    float s = 0.0f;
    for (int d = 0; d < D; d++) s += a[d] * b[d];
    return s;
}

static inline void axpy(float *y, float a, const float *x, int D) {
#ifdef SL_AVX2
    if ((D & 7) == 0) {
        const __m256 av = _mm256_set1_ps(a);
        for (int d = 0; d < D; d += 8)
            _mm256_storeu_ps(y + d, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + d), _mm256_loadu_ps(y + d)));
        return;
    }
#endif
    for (int d = 0; d < D; d++) y[d] += a * x[d];
}

/* p[j] = exp(l[j] - m) for j < n; returns their sum. */
static float exp_shift(float *l, int n, float m) {
    float sum = 0.0f;
    int j = 0;
#ifdef SL_AVX2
    __m256 acc = _mm256_setzero_ps(), mv = _mm256_set1_ps(m);
    for (; j + 8 <= n; j += 8) {
        __m256 p = exp256(_mm256_sub_ps(_mm256_loadu_ps(l + j), mv));
        _mm256_storeu_ps(l + j, p);
        acc = _mm256_add_ps(acc, p);
    }
    sum = hsum256(acc);
#endif
    for (; j < n; j++) l[j] = expf(l[j] - m), sum += l[j];
    return sum;
}

/* ---- sparse attention forward: items are (batch, head, query block); one pass for logits, one for values ---- */

#define PF_AHEAD 6 /* keys ahead to prefetch: gathered rows come from L2/L3, not from a stream */

static inline void prefetch_row(const float *row, int D) {
    for (int d = 0; d < D; d += 16) __builtin_prefetch(row + d, 0, 3);
}

/* l[j] = q . kbh[sel[j]] for j < n, four keys per step so the horizontal sums overlap. */
static void gather_logits(const float *qs, const float *kbh, const int32_t *sel, int n, int D, float *l) {
    int j = 0;
#ifdef SL_AVX2
    if ((D & 7) == 0) {
        for (; j + 4 <= n; j += 4) {
            if (j + 4 + PF_AHEAD <= n)
                for (int u = 0; u < 4; u++) prefetch_row(kbh + (int64_t)sel[j + PF_AHEAD + u] * D, D);
            const float *k0 = kbh + (int64_t)sel[j] * D, *k1 = kbh + (int64_t)sel[j + 1] * D;
            const float *k2 = kbh + (int64_t)sel[j + 2] * D, *k3 = kbh + (int64_t)sel[j + 3] * D;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int d = 0; d < D; d += 8) {
                const __m256 qv = _mm256_loadu_ps(qs + d);
                a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
                a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + d), a1);
                a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + d), a2);
                a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + d), a3);
            }
            const __m256 h01 = _mm256_hadd_ps(a0, a1), h23 = _mm256_hadd_ps(a2, a3);
            const __m256 h = _mm256_hadd_ps(h01, h23); /* lanes: 0,1,2,3 low half; 0,1,2,3 high half */
            _mm_storeu_ps(l + j, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
        }
    }
#endif
    for (; j < n; j++) l[j] = dot(qs, kbh + (int64_t)sel[j] * D, D);
}

/* out[0..D) = inv * sum_j p[j] vbh[sel[j]]; accumulators stay in registers for each 64-wide slice of D. */
static void gather_values(const float *p, const float *vbh, const int32_t *sel, int n, int D, float inv, float *out) {
#ifdef SL_AVX2
    if ((D & 7) == 0) {
        for (int d0 = 0; d0 < D; d0 += 64) {
            const int w = D - d0 < 64 ? (D - d0) / 8 : 8; /* 8-float vectors in this slice */
            __m256 acc[8];
            for (int u = 0; u < 8; u++) acc[u] = _mm256_setzero_ps();
            for (int j = 0; j < n; j++) {
                if (j + PF_AHEAD < n) prefetch_row(vbh + (int64_t)sel[j + PF_AHEAD] * D + d0, w * 8);
                const float *vr = vbh + (int64_t)sel[j] * D + d0;
                const __m256 pj = _mm256_set1_ps(p[j]);
                if (w == 8) {
                    acc[0] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr), acc[0]);
                    acc[1] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8), acc[1]);
                    acc[2] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 16), acc[2]);
                    acc[3] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 24), acc[3]);
                    acc[4] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 32), acc[4]);
                    acc[5] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 40), acc[5]);
                    acc[6] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 48), acc[6]);
                    acc[7] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 56), acc[7]);
                } else {
                    for (int u = 0; u < w; u++) acc[u] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8 * u), acc[u]);
                }
            }
            const __m256 iv = _mm256_set1_ps(inv);
            for (int u = 0; u < w; u++) _mm256_storeu_ps(out + d0 + 8 * u, _mm256_mul_ps(acc[u], iv));
        }
        return;
    }
#endif
    for (int d = 0; d < D; d++) out[d] = 0.0f;
    for (int j = 0; j < n; j++) axpy(out, p[j], vbh + (int64_t)sel[j] * D, D);
    for (int d = 0; d < D; d++) out[d] *= inv;
}

int sl_sparse_attn_fwd(const float *q, const float *kh, const float *vh, const int64_t *idx, float *o, float *lse,
                       int64_t B, int64_t T, int64_t S, int H, int D, int K, float scale, int tq, int64_t *counter) {
    float *l = malloc(sizeof(float) * (size_t)(K + 8)), *qs = malloc(sizeof(float) * (size_t)D);
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)(K + 8));
    if (!l || !sel || !qs) return free(l), free(sel), free(qs), -1;
    const int64_t nqb = (T + tq - 1) / tq;
    for (int64_t item = next_item(counter); item < B * H * nqb; item = next_item(counter)) {
        const int64_t b = item / (H * nqb), h = (item / nqb) % H, t0 = (item % nqb) * tq, t1 = imin(T, t0 + tq);
        const float *kbh = kh + (b * H + h) * S * D, *vbh = vh + (b * H + h) * S * D;
        for (int64_t t = t0; t < t1; t++) {
            const int64_t *it = idx + (b * T + t) * K;
            const float *qt = q + ((b * T + t) * H + h) * D;
            float *ot = o + ((b * T + t) * H + h) * D;
            int n = 0;
            for (int j = 0; j < K; j++) {
                const int64_t s = it[j];
                sel[n] = (int32_t)s;
                n += (s >= 0) & (s < S);
            }
            if (n == 0) {
                for (int d = 0; d < D; d++) ot[d] = 0.0f;
                lse[(b * T + t) * H + h] = -INFINITY;
                continue;
            }
            for (int d = 0; d < D; d++) qs[d] = qt[d] * scale;
            gather_logits(qs, kbh, sel, n, D, l);
            float m = l[0];
            for (int j = 1; j < n; j++) m = l[j] > m ? l[j] : m;
            const float sum = exp_shift(l, n, m);
            gather_values(l, vbh, sel, n, D, 1.0f / sum, ot);
            lse[(b * T + t) * H + h] = m + logf(sum);
        }
    }
    free(l), free(sel), free(qs);
    return 0;
}

/* ---- sparse attention backward: items are (batch, head) so each worker owns its dK/dV rows (no atomics) ---- */

int sl_sparse_attn_bwd(const float *q, const float *kh, const float *vh, const int64_t *idx, const float *o,
                       const float *lse, const float *dout, float *dq, float *dkh, float *dvh, int64_t B, int64_t T,
                       int64_t S, int H, int D, int K, float scale, int64_t *counter) {
    float *p = malloc(sizeof(float) * (size_t)(K + 8)), *dp = malloc(sizeof(float) * (size_t)(K + 8));
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)(K + 8));
    float *qs = malloc(sizeof(float) * (size_t)D), *g = malloc(sizeof(float) * (size_t)D);
    if (!p || !dp || !sel || !qs || !g) return free(p), free(dp), free(sel), free(qs), free(g), -1;
    for (int64_t item = next_item(counter); item < B * H; item = next_item(counter)) {
        const int64_t b = item / H, h = item % H;
        const float *kbh = kh + item * S * D, *vbh = vh + item * S * D;
        float *dkbh = dkh + item * S * D, *dvbh = dvh + item * S * D;
        for (int64_t t = 0; t < T; t++) {
            const int64_t row = (b * T + t) * H + h;
            float *dqt = dq + row * D;
            const float lt = lse[row];
            for (int d = 0; d < D; d++) dqt[d] = 0.0f;
            if (lt == -INFINITY) continue;
            const int64_t *it = idx + (b * T + t) * K;
            const float *qt = q + row * D, *dot_ = dout + row * D;
            for (int d = 0; d < D; d++) qs[d] = qt[d] * scale;
            const float delta = dot(dot_, o + row * D, D);
            int n = 0;
            for (int j = 0; j < K; j++) {
                const int64_t s = it[j];
                if (s < 0 || s >= S) continue;
                sel[n] = (int32_t)s, p[n] = dot(qs, kbh + s * D, D), dp[n] = dot(dot_, vbh + s * D, D), n++;
            }
            exp_shift(p, n, lt);
            for (int d = 0; d < D; d++) g[d] = qt[d] * scale;
            for (int j = 0; j < n; j++) {
                const float ds = p[j] * (dp[j] - delta);
                const int64_t s = sel[j];
                axpy(dqt, ds * scale, kbh + s * D, D);
                axpy(dkbh + s * D, ds, g, D);
                axpy(dvbh + s * D, p[j], dot_, D);
            }
        }
    }
    free(p), free(dp), free(sel), free(qs), free(g);
    return 0;
}
