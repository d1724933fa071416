/*
 * The float32 training engine's inner loops: a dot product and an axpy, with the rounding of
 * the plain C loops they replace (every product rounded to float, then every sum, in index
 * order: what the host build and the numpy parity tests see).
 *
 * On a core with a single-precision FPU (Cortex-M4F fpv4-sp-d16, Cortex-M55 FPv5) the blocks of
 * eight run as inline assembly: two VLDMIA of eight floats and eight VMLA.F32. VMLA is the
 * chained (not fused) multiply-accumulate, so it rounds exactly as `acc += a * b` does and
 * the results are bit-identical to the C loops; GCC does not emit VMLA itself for these cores,
 * and VFMA (fused, -ffp-contract=fast) would change the rounding. The remainder (n mod 8) and
 * the strided loops of the kernels use one VMLA per element (tftr_mla); every other build
 * (host, -DTFTR_FPU_PORTABLE) the plain C expressions.
 */
#ifndef TFTR_FPU_H
#define TFTR_FPU_H

#include <stdint.h>

#if defined(__arm__) && defined(__thumb2__) && defined(__ARM_FP) && (__ARM_FP & 4) && !defined(TFTR_FPU_PORTABLE)
#define TFTR_FPU_ASM 1
#else
#define TFTR_FPU_ASM 0
#endif

/* acc + a b: the product rounded, then the sum (one VMLA.F32 where the FPU has it). */
static inline float tftr_mla(float acc, float a, float b)
{
#if TFTR_FPU_ASM
    __asm__("vmla.f32 %[acc], %[a], %[b]" : [acc] "+t"(acc) : [a] "t"(a), [b] "t"(b));
    return acc;
#else
    return acc + a * b;
#endif
}

/* acc + x[0] w[0] + x[1] w[1] + ... + x[n-1] w[n-1], summed left to right. */
static inline float tftr_dot(float acc, const float *x, const float *w, uint32_t n)
{
#if TFTR_FPU_ASM
    uint32_t blocks = n >> 3;
    if (blocks) {
        __asm__ volatile("1:\n\t"
                         "vldmia %[x]!, {s0-s7}\n\t"
                         "vldmia %[w]!, {s8-s15}\n\t"
                         "vmla.f32 %[acc], s0, s8\n\t"
                         "vmla.f32 %[acc], s1, s9\n\t"
                         "vmla.f32 %[acc], s2, s10\n\t"
                         "vmla.f32 %[acc], s3, s11\n\t"
                         "vmla.f32 %[acc], s4, s12\n\t"
                         "vmla.f32 %[acc], s5, s13\n\t"
                         "vmla.f32 %[acc], s6, s14\n\t"
                         "vmla.f32 %[acc], s7, s15\n\t"
                         "subs %[b], %[b], #1\n\t"
                         "bne 1b\n\t"
                         : [acc] "+t"(acc), [x] "+r"(x), [w] "+r"(w), [b] "+r"(blocks)
                         :
                         : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "s12", "s13",
                           "s14", "s15", "cc", "memory");
    }
    n &= 7u;
#endif
    for (uint32_t i = 0; i < n; ++i) acc = tftr_mla(acc, x[i], w[i]);
    return acc;
}

/* Two dot products with one weight vector: *acc0 + x0 . w and *acc1 + x1 . w, each summed left
 * to right (as two tftr_dot calls), the weights loaded once for both. */
static inline void tftr_dot2(float *acc0, float *acc1, const float *x0, const float *x1, const float *w, uint32_t n)
{
    float a0 = *acc0, a1 = *acc1;
#if TFTR_FPU_ASM
    uint32_t blocks = n >> 3;
    if (blocks) {
        __asm__ volatile("1:\n\t"
                         "vldmia %[w]!, {s8-s15}\n\t"
                         "vldmia %[x0]!, {s0-s7}\n\t"
                         "vmla.f32 %[a0], s0, s8\n\t"
                         "vmla.f32 %[a0], s1, s9\n\t"
                         "vmla.f32 %[a0], s2, s10\n\t"
                         "vmla.f32 %[a0], s3, s11\n\t"
                         "vmla.f32 %[a0], s4, s12\n\t"
                         "vmla.f32 %[a0], s5, s13\n\t"
                         "vmla.f32 %[a0], s6, s14\n\t"
                         "vmla.f32 %[a0], s7, s15\n\t"
                         "vldmia %[x1]!, {s0-s7}\n\t"
                         "vmla.f32 %[a1], s0, s8\n\t"
                         "vmla.f32 %[a1], s1, s9\n\t"
                         "vmla.f32 %[a1], s2, s10\n\t"
                         "vmla.f32 %[a1], s3, s11\n\t"
                         "vmla.f32 %[a1], s4, s12\n\t"
                         "vmla.f32 %[a1], s5, s13\n\t"
                         "vmla.f32 %[a1], s6, s14\n\t"
                         "vmla.f32 %[a1], s7, s15\n\t"
                         "subs %[b], %[b], #1\n\t"
                         "bne 1b\n\t"
                         : [a0] "+t"(a0), [a1] "+t"(a1), [x0] "+r"(x0), [x1] "+r"(x1), [w] "+r"(w), [b] "+r"(blocks)
                         :
                         : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "s12", "s13",
                           "s14", "s15", "cc", "memory");
    }
    n &= 7u;
#endif
    for (uint32_t i = 0; i < n; ++i) {
        a0 = tftr_mla(a0, x0[i], w[i]);
        a1 = tftr_mla(a1, x1[i], w[i]);
    }
    *acc0 = a0;
    *acc1 = a1;
}

/* y[i] += a x[i] for i < n (y and x do not overlap). */
static inline void tftr_axpy(float *y, float a, const float *x, uint32_t n)
{
#if TFTR_FPU_ASM
    uint32_t blocks = n >> 3;
    if (blocks) {
        __asm__ volatile("1:\n\t"
                         "vldmia %[y], {s0-s7}\n\t"
                         "vldmia %[x]!, {s8-s15}\n\t"
                         "vmla.f32 s0, %[a], s8\n\t"
                         "vmla.f32 s1, %[a], s9\n\t"
                         "vmla.f32 s2, %[a], s10\n\t"
                         "vmla.f32 s3, %[a], s11\n\t"
                         "vmla.f32 s4, %[a], s12\n\t"
                         "vmla.f32 s5, %[a], s13\n\t"
                         "vmla.f32 s6, %[a], s14\n\t"
                         "vmla.f32 s7, %[a], s15\n\t"
                         "vstmia %[y]!, {s0-s7}\n\t"
                         "subs %[b], %[b], #1\n\t"
                         "bne 1b\n\t"
                         : [y] "+r"(y), [x] "+r"(x), [b] "+r"(blocks)
                         : [a] "t"(a)
                         : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "s12", "s13",
                           "s14", "s15", "cc", "memory");
    }
    n &= 7u;
#endif
    for (uint32_t i = 0; i < n; ++i) y[i] = tftr_mla(y[i], a, x[i]);
}

/* y[i] = (y[i] + a0 x0[i]) + a1 x1[i] for i < n: two tftr_axpy calls in one pass over y (y
 * overlaps neither x0 nor x1). */
static inline void tftr_axpy2(float *y, float a0, const float *x0, float a1, const float *x1, uint32_t n)
{
#if TFTR_FPU_ASM
    uint32_t blocks = n >> 3;
    if (blocks) {
        __asm__ volatile("1:\n\t"
                         "vldmia %[y], {s0-s7}\n\t"
                         "vldmia %[x0]!, {s8-s15}\n\t"
                         "vmla.f32 s0, %[a0], s8\n\t"
                         "vmla.f32 s1, %[a0], s9\n\t"
                         "vmla.f32 s2, %[a0], s10\n\t"
                         "vmla.f32 s3, %[a0], s11\n\t"
                         "vmla.f32 s4, %[a0], s12\n\t"
                         "vmla.f32 s5, %[a0], s13\n\t"
                         "vmla.f32 s6, %[a0], s14\n\t"
                         "vmla.f32 s7, %[a0], s15\n\t"
                         "vldmia %[x1]!, {s8-s15}\n\t"
                         "vmla.f32 s0, %[a1], s8\n\t"
                         "vmla.f32 s1, %[a1], s9\n\t"
                         "vmla.f32 s2, %[a1], s10\n\t"
                         "vmla.f32 s3, %[a1], s11\n\t"
                         "vmla.f32 s4, %[a1], s12\n\t"
                         "vmla.f32 s5, %[a1], s13\n\t"
                         "vmla.f32 s6, %[a1], s14\n\t"
                         "vmla.f32 s7, %[a1], s15\n\t"
                         "vstmia %[y]!, {s0-s7}\n\t"
                         "subs %[b], %[b], #1\n\t"
                         "bne 1b\n\t"
                         : [y] "+r"(y), [x0] "+r"(x0), [x1] "+r"(x1), [b] "+r"(blocks)
                         : [a0] "t"(a0), [a1] "t"(a1)
                         : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "s12", "s13",
                           "s14", "s15", "cc", "memory");
    }
    n &= 7u;
#endif
    for (uint32_t i = 0; i < n; ++i) y[i] = tftr_mla(tftr_mla(y[i], a0, x0[i]), a1, x1[i]);
}

#endif /* TFTR_FPU_H */
