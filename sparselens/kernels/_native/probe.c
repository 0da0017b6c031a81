/* Which of the kernel builds this CPU (and OS) can run, compiled without any instruction-set flags so that calling
 * it is safe everywhere: 2 = AVX-512 (F, VL, BW, DQ) with AVX2 + FMA, 1 = AVX2 + FMA, 0 = neither. */
int sl_cpu_level(void) {
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    return avx2 ? (avx512 ? 2 : 1) : 0;
}
