/* Shared by the CPU kernels: the instruction set this build targets, a vector type of its width, the work counter.
 *
 * The library is compiled once per instruction set (`__init__.py`: -mavx512f/vl/bw/dq for "avx512", -mavx2 -mfma
 * for "avx2") and the one the CPU supports is loaded. `vf` is the build's widest float vector (16 lanes on
 * AVX-512, 8 on AVX2). Kernels that are lane-wise (every output lane sums its own terms in the same order) use `vf`
 * and give bit-identical results on both builds; reductions across lanes (dot products over D, softmax sums) use
 * 8-lane AVX2 arithmetic in both builds, so their rounding does not depend on the build either. The builds use
 * -ffp-contract=off: every fused multiply-add is written out (intrinsics, fmaf), none is left to the compiler.
 */
#ifndef SL_SIMD_H
#define SL_SIMD_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SL_AVX2 1
#endif
#if defined(SL_AVX2) && defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
#define SL_AVX512 1
#endif

#define PW 16 /* keys per indexer panel */

static inline int64_t next_item(int64_t *counter) { return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); }
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

#if defined(SL_AVX512)
#define SL_ISA "avx512"
#define VW 16
typedef __m512 vf;
static inline vf v_zero(void) { return _mm512_setzero_ps(); }
static inline vf v_set1(float x) { return _mm512_set1_ps(x); }
static inline vf v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, vf x) { _mm512_storeu_ps(p, x); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf v_min(vf a, vf b) { return _mm512_min_ps(a, b); }
/* the first n (< VW) lanes of p, zeros after; stores only those lanes */
static inline vf v_load_n(const float *p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }
static inline void v_store_n(float *p, vf x, int n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), x); }
#define V_KEEP(x) __asm__("" : "+v"(x)) /* keep a loaded vector in a register (gcc folds loads into every FMA) */
#elif defined(SL_AVX2)
#define SL_ISA "avx2"
#define VW 8
typedef __m256 vf;
static inline vf v_zero(void) { return _mm256_setzero_ps(); }
static inline vf v_set1(float x) { return _mm256_set1_ps(x); }
static inline vf v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void v_store(float *p, vf x) { _mm256_storeu_ps(p, x); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf v_min(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline __m256i mask_n(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf v_load_n(const float *p, int n) { return _mm256_maskload_ps(p, mask_n(n)); }
static inline void v_store_n(float *p, vf x, int n) { _mm256_maskstore_ps(p, mask_n(n), x); }
#define V_KEEP(x) __asm__("" : "+x"(x))
#else
#error "sparselens CPU kernels need AVX2+FMA or AVX-512 (the torch fallback covers other CPUs)"
#endif

/* Exported so the loader can check which build it got. */
const char *sl_isa(void);

/* ---- 8-lane helpers used by both builds where a result depends on how lanes are summed ---- */

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

/* a . b over D: two 8-lane accumulators over 16-wide steps when D % 8 == 0, a scalar loop otherwise. */
static inline float dot(const float *a, const float *b, int D) {
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
    float s = 0.0f;
    for (int d = 0; d < D; d++) s = fmaf(a[d], b[d], s);
    return s;
}

/* y[0..D) += a * x[0..D), lane-wise fused multiply-adds (the same rounding at any vector width). */
static inline void axpy(float *y, float a, const float *x, int D) {
    const vf av = v_set1(a);
    int d = 0;
    for (; d + VW <= D; d += VW) v_store(y + d, v_fma(av, v_load(x + d), v_load(y + d)));
    if (d < D) v_store_n(y + d, v_fma(av, v_load_n(x + d, D - d), v_load_n(y + d, D - d)), D - d);
}

#endif
