/* CPU kernels for sparse attention with K/V shared by groups of heads (MHA, GQA, MQA): forward and backward.
 *
 * Query head h reads K/V head h / G (G = H / HKV heads per group). Work items are (batch, K/V head, query block)
 * in the forward and (batch, K/V head) in the backward; for each query the index list is read once and each
 * selected key's K and V rows are loaded once for all G heads of the group (key outer, head inner), so MQA moves
 * 1/H of MHA's gathered bytes. Per (query, head) the arithmetic is the same whatever G and whichever build: logits
 * are 8-lane dot products over D combined by hadd, the softmax sum is 8-lane, values accumulate lane-wise. So a
 * GQA call equals the MHA call on K/V repeated per head bit for bit, and both builds agree bit for bit.
 *
 * Layouts (fp32): q, o, dq, dout [B,T,H,D] contiguous; lse [B,T,H]; idx [B,T,K] int64; K/V (and dK/dV) element
 * (b, s, kvh, d) at b * sb + s * ss + kvh * sh + d (token-major [B,S,HKV,D] or head-major [B,HKV,S,D]).
 */
#include "simd.h"

#define PF_AHEAD 6 /* keys ahead to prefetch: gathered rows come from L2/L3, not from a stream */
#if VW == 16
#define HB 4 /* heads per block of logits (4 x 4 accumulators + 4 key rows fit 32 registers) */
#else
#define HB 2
#endif

static inline void prefetch_row(const float *row, int D) {
    for (int d = 0; d < D; d += 16) __builtin_prefetch(row + d, 0, 3);
}

/* l[h * LS + j..j+3] = qs_h . k_{sel[j..j+3]} for heads h0 <= h < h0 + NH: per (head, key) one 8-lane
 * accumulator over D, the four sums combined by hadd. */
static inline __attribute__((always_inline)) void logits_block(const int NH, const float *qs, int h0, const float *k0,
                                                                const float *k1, const float *k2, const float *k3,
                                                                int D, float *l, int LS) {
    __m256 a[HB][4];
    for (int h = 0; h < NH; h++)
        for (int u = 0; u < 4; u++) a[h][u] = _mm256_setzero_ps();
    for (int d = 0; d < D; d += 8) {
        const __m256 kv0 = _mm256_loadu_ps(k0 + d), kv1 = _mm256_loadu_ps(k1 + d);
        const __m256 kv2 = _mm256_loadu_ps(k2 + d), kv3 = _mm256_loadu_ps(k3 + d);
        for (int h = 0; h < NH; h++) {
            const __m256 qv = _mm256_loadu_ps(qs + (int64_t)(h0 + h) * D + d);
            a[h][0] = _mm256_fmadd_ps(qv, kv0, a[h][0]), a[h][1] = _mm256_fmadd_ps(qv, kv1, a[h][1]);
            a[h][2] = _mm256_fmadd_ps(qv, kv2, a[h][2]), a[h][3] = _mm256_fmadd_ps(qv, kv3, a[h][3]);
        }
    }
    for (int h = 0; h < NH; h++) {
        const __m256 hh = _mm256_hadd_ps(_mm256_hadd_ps(a[h][0], a[h][1]), _mm256_hadd_ps(a[h][2], a[h][3]));
        _mm_storeu_ps(l + (int64_t)(h0 + h) * LS, _mm_add_ps(_mm256_castps256_ps128(hh), _mm256_extractf128_ps(hh, 1)));
    }
}

/* l[h * LS + j] = qs_h . k_{sel[j]} for the G heads of a group and the n selected keys (rows kb + sel * ss). */
static void gather_logits(const float *qs, int G, const float *kb, int64_t ss, const int32_t *sel, int n, int D,
                          float *l, int LS) {
    int j = 0;
    if ((D & 7) == 0) {
        for (; j + 4 <= n; j += 4) {
            if (j + 4 + PF_AHEAD <= n)
                for (int u = 0; u < 4; u++) prefetch_row(kb + sel[j + PF_AHEAD + u] * ss, D);
            const float *k0 = kb + sel[j] * ss, *k1 = kb + sel[j + 1] * ss;
            const float *k2 = kb + sel[j + 2] * ss, *k3 = kb + sel[j + 3] * ss;
            for (int h0 = 0; h0 < G; h0 += HB) {
                switch (imin(HB, G - h0)) {
                case 1: logits_block(1, qs, h0, k0, k1, k2, k3, D, l + j, LS); break;
#if HB >= 2
                case 2: logits_block(2, qs, h0, k0, k1, k2, k3, D, l + j, LS); break;
#endif
#if HB >= 4
                case 3: logits_block(3, qs, h0, k0, k1, k2, k3, D, l + j, LS); break;
                case 4: logits_block(4, qs, h0, k0, k1, k2, k3, D, l + j, LS); break;
#endif
                }
            }
        }
    }
    for (; j < n; j++)
        for (int h = 0; h < G; h++) l[(int64_t)h * LS + j] = dot(qs + (int64_t)h * D, kb + sel[j] * ss, D);
}

/* out[h, d0 .. d0 + NV_ * VW) for NH heads: NH x NV_ accumulators, lane-wise FMAs over j; MASKED: one vector of
 * `tail` lanes (the end of D). */
static inline __attribute__((always_inline)) void values_block(const int NH, const int NV_, const int MASKED,
                                                                const float *p, int LS, int h0, const float *vb,
                                                                int64_t ss, const int32_t *sel, int n, int d0,
                                                                int tail, const float *inv, float *out, int D) {
    vf acc[4][8];
    for (int h = 0; h < NH; h++)
        for (int u = 0; u < NV_; u++) acc[h][u] = v_zero();
    for (int j = 0; j < n; j++) {
        if (j + PF_AHEAD < n) prefetch_row(vb + sel[j + PF_AHEAD] * ss + d0, NV_ * VW);
        const float *vr = vb + sel[j] * ss + d0;
        vf vv[8];
        for (int u = 0; u < NV_; u++) vv[u] = MASKED ? v_load_n(vr, tail) : v_load(vr + u * VW);
        for (int h = 0; h < NH; h++) {
            const vf pj = v_set1(p[(int64_t)(h0 + h) * LS + j]);
            for (int u = 0; u < NV_; u++) acc[h][u] = v_fma(pj, vv[u], acc[h][u]);
        }
    }
    for (int h = 0; h < NH; h++) {
        const vf iv = v_set1(inv[h0 + h]);
        float *oh = out + (int64_t)(h0 + h) * D + d0;
        for (int u = 0; u < NV_; u++) {
            if (MASKED) v_store_n(oh, v_mul(acc[h][u], iv), tail);
            else v_store(oh + u * VW, v_mul(acc[h][u], iv));
        }
    }
}

#if VW == 16
#define HV 4 /* heads per values pass: 4 heads x 4 vectors of accumulators */
#else
#define HV 2 /* 2 heads x 4 vectors (a lone head takes 8 vectors, as D = 64 fills) */
#endif

/* out[h, 0..D) = inv[h] sum_j p[h * LS + j] v_{sel[j]} for the G heads of a group. Every lane sums over j in
 * order, so the result does not depend on how heads and D are blocked into passes. */
static void gather_values(const float *p, int LS, int G, const float *vb, int64_t ss, const int32_t *sel, int n,
                          int D, const float *inv, float *out) {
#define VB(NH, NV_, M) values_block(NH, NV_, M, p, LS, h0, vb, ss, sel, n, d0, tail, inv, out, D)
    for (int h0 = 0; h0 < G; h0 += HV) {
        const int nh = (int)imin(HV, G - h0);
        for (int d0 = 0, nv = 0; d0 < D; d0 += nv * VW) {
            const int full = (D - d0) / VW, tail = full ? 0 : D - d0;
            nv = full >= 8 && nh == 1 ? 8 : full >= 4 ? 4 : full >= 2 ? 2 : 1;
            switch (tail ? 0 : nh * 16 + nv) {
            case 0: /* the last D % VW lanes, one head at a time */
                for (int h = h0; h < h0 + nh; h++)
                    values_block(1, 1, 1, p, LS, h, vb, ss, sel, n, d0, tail, inv, out, D);
                break;
            case 0x11: VB(1, 1, 0); break;
            case 0x12: VB(1, 2, 0); break;
            case 0x14: VB(1, 4, 0); break;
            case 0x18: VB(1, 8, 0); break;
            case 0x21: VB(2, 1, 0); break;
            case 0x22: VB(2, 2, 0); break;
            case 0x24: VB(2, 4, 0); break;
#if HV >= 4
            case 0x31: VB(3, 1, 0); break;
            case 0x32: VB(3, 2, 0); break;
            case 0x34: VB(3, 4, 0); break;
            case 0x41: VB(4, 1, 0); break;
            case 0x42: VB(4, 2, 0); break;
            case 0x44: VB(4, 4, 0); break;
#endif
            }
        }
    }
#undef VB
}

/* p[j] = exp(l[j] - m) for j < n; returns their sum (8-lane partial sums, then the scalar tail). */
static float exp_shift(float *l, int n, float m) {
    float sum = 0.0f;
    int j = 0;
    __m256 acc = _mm256_setzero_ps(), mv = _mm256_set1_ps(m);
    for (; j + 8 <= n; j += 8) {
        __m256 p = exp256(_mm256_sub_ps(_mm256_loadu_ps(l + j), mv));
        _mm256_storeu_ps(l + j, p);
        acc = _mm256_add_ps(acc, p);
    }
    sum = hsum256(acc);
    for (; j < n; j++) l[j] = expf(l[j] - m), sum += l[j];
    return sum;
}

/* The valid entries (0 <= s < S) of one index row, as int32, in order; returns how many. */
static int valid_keys(const int64_t *it, int K, int64_t S, int32_t *sel) {
    int n = 0;
    for (int j = 0; j < K; j++) {
        const int64_t s = it[j];
        sel[n] = (int32_t)s;
        n += (s >= 0) & (s < S);
    }
    return n;
}

/* ---- forward: items are (batch, K/V head, query block); one pass for logits, one for values ---- */

int sl_sparse_attn_fwd(const float *q, const float *k, const float *v, const int64_t *idx, float *o, float *lse,
                       int64_t B, int64_t T, int64_t S, int H, int HKV, int D, int K, float scale, int64_t sb,
                       int64_t ss, int64_t sh, int tq, int64_t *counter) {
    const int G = H / HKV, LS = K + 8;
    float *l = malloc(sizeof(float) * (size_t)G * LS), *qs = malloc(sizeof(float) * (size_t)G * D);
    float *inv = malloc(sizeof(float) * (size_t)G);
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)(K + 8));
    if (!l || !sel || !qs || !inv) return free(l), free(sel), free(qs), free(inv), -1;
    const int64_t nqb = (T + tq - 1) / tq;
    for (int64_t item = next_item(counter); item < B * HKV * nqb; item = next_item(counter)) {
        const int64_t b = item / (HKV * nqb), kvh = (item / nqb) % HKV, t0 = (item % nqb) * tq;
        const float *kb = k + b * sb + kvh * sh, *vb = v + b * sb + kvh * sh;
        for (int64_t t = t0; t < imin(T, t0 + tq); t++) {
            const int64_t row0 = (b * T + t) * H + kvh * G; /* the group's first head */
            const int n = valid_keys(idx + (b * T + t) * K, K, S, sel);
            if (n == 0) {
                memset(o + row0 * D, 0, sizeof(float) * (size_t)G * D);
                for (int h = 0; h < G; h++) lse[row0 + h] = -INFINITY;
                continue;
            }
            for (int64_t i = 0; i < (int64_t)G * D; i++) qs[i] = q[row0 * D + i] * scale;
            gather_logits(qs, G, kb, ss, sel, n, D, l, LS);
            for (int h = 0; h < G; h++) {
                float *lh = l + (int64_t)h * LS, m = lh[0];
                for (int j = 1; j < n; j++) m = lh[j] > m ? lh[j] : m;
                const float sum = exp_shift(lh, n, m);
                inv[h] = 1.0f / sum, lse[row0 + h] = m + logf(sum);
            }
            gather_values(l, LS, G, vb, ss, sel, n, D, inv, o + row0 * D);
        }
    }
    free(l), free(sel), free(qs), free(inv);
    return 0;
}

/* ---- backward: items are (batch, K/V head) so each worker owns its dK/dV rows (no atomics) ---- */

int sl_sparse_attn_bwd(const float *q, const float *k, const float *v, const int64_t *idx, const float *o,
                       const float *lse, const float *dout, float *dq, float *dk, float *dv, int64_t B, int64_t T,
                       int64_t S, int H, int HKV, int D, int K, float scale, int64_t sb, int64_t ss, int64_t sh,
                       int64_t *counter) {
    const int G = H / HKV, LS = K + 8;
    float *p = malloc(sizeof(float) * (size_t)G * LS), *dp = malloc(sizeof(float) * (size_t)G * LS);
    float *qs = malloc(sizeof(float) * (size_t)G * D), *delta = malloc(sizeof(float) * (size_t)G);
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)(K + 8));
    if (!p || !dp || !sel || !qs || !delta) return free(p), free(dp), free(sel), free(qs), free(delta), -1;
    for (int64_t item = next_item(counter); item < B * HKV; item = next_item(counter)) {
        const int64_t b = item / HKV, kvh = item % HKV, off = b * sb + kvh * sh;
        const float *kb = k + off, *vb = v + off;
        float *dkb = dk + off, *dvb = dv + off;
        for (int64_t t = 0; t < T; t++) {
            const int64_t row0 = (b * T + t) * H + kvh * G;
            memset(dq + row0 * D, 0, sizeof(float) * (size_t)G * D);
            const int n = valid_keys(idx + (b * T + t) * K, K, S, sel);
            if (n == 0) continue;
            for (int h = 0; h < G; h++) {
                const int64_t r = (row0 + h) * D;
                for (int d = 0; d < D; d++) qs[h * D + d] = q[r + d] * scale;
                delta[h] = dot(dout + r, o + r, D);
            }
            for (int j = 0; j < n; j++) /* key outer, head inner: each K/V row is loaded once for the group */
                for (int h = 0; h < G; h++) {
                    if (lse[row0 + h] == -INFINITY) continue;
                    p[h * LS + j] = dot(qs + h * D, kb + sel[j] * ss, D);
                    dp[h * LS + j] = dot(dout + (row0 + h) * D, vb + sel[j] * ss, D);
                }
            for (int h = 0; h < G; h++)
                if (lse[row0 + h] != -INFINITY) exp_shift(p + (int64_t)h * LS, n, lse[row0 + h]);
            for (int j = 0; j < n; j++) {
                const int64_t s = sel[j];
                for (int h = 0; h < G; h++) {
                    if (lse[row0 + h] == -INFINITY) continue;
                    const float pj = p[h * LS + j], ds = pj * (dp[h * LS + j] - delta[h]);
                    axpy(dq + (row0 + h) * D, ds * scale, kb + s * ss, D);
                    axpy(dkb + s * ss, ds, qs + h * D, D);
                    axpy(dvb + s * ss, pj, dout + (row0 + h) * D, D);
                }
            }
        }
    }
    free(p), free(dp), free(sel), free(qs), free(delta);
    return 0;
}
