/* CPU kernels for DSA selection: the lightning-indexer tile, the fused indexer top-k (blocked for prefill, split
 * over keys for decoding; the running top-k is in topk.h), indexer scores, row top-k and the canonical-row check. Plain C11
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
#include "topk.h"

const char *sl_isa(void) { return SL_ISA; }

/* ---- indexer tile: one query (all HP heads) against one 16-key panel ---- */

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


/* Streams query t's panels [plo, phi] (descending) into st, skipping sampled panels when skip_sampled. */
static void stream_panels(topk_state *st, const float *qt, const float *wt, const float *kb, int HP, int DI,
                          int64_t plo, int64_t phi, int64_t lim, int skip_sampled, int k, int cap, float *tmp) {
    for (int64_t p = imin(phi, lim / PW); p >= plo; p--) {
        if (skip_sampled && p % SAMPLE_STRIDE == 0) continue;
        score_filter(st, qt, wt, kb + p * DI * PW, HP, DI, (int)imin(PW, lim - p * PW + 1), p * PW, k, cap, tmp);
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
