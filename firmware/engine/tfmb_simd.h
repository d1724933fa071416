/*
 * What the optimised int8 kernels share: the DSP extension's SIMD operations under one name on
 * every build (the ACLE intrinsics of arm_acle.h on a core with the DSP extension; the same
 * arithmetic in portable C on host test builds, so tests/test_engine.py can check the DSP
 * kernels' logic against TFLM on thousands of inputs), and a requantization that gives exactly
 * tfmb_requant's result in fewer instructions.
 *
 * Only the optimised kernel files include this header; the reference kernels stay plain C.
 */
#ifndef TFMB_SIMD_H
#define TFMB_SIMD_H

#include "tfmb_internal.h"

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define TFMB_NATIVE_DSP 1
#else
#define TFMB_NATIVE_DSP 0
#endif

/* A 32-bit word read from any alignment (Cortex-M4/M33/M7/M55 LDR allows unaligned addresses;
 * memcpy of 4 bytes compiles to one LDR there). */
static inline uint32_t tfmb_ld32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline void tfmb_st32(void *p, uint32_t v) { memcpy(p, &v, 4); }

#if TFMB_NATIVE_DSP
/* Two signed bytes 0 and 2 of x, sign-extended into the two halfwords. */
static inline uint32_t tfmb_sxtb16(uint32_t x) { return (uint32_t)__sxtb16(x); }
/* Bytes 1 and 3 of x, sign-extended into the two halfwords (SXTB16 with ROR #8). */
static inline uint32_t tfmb_sxtb16_ror8(uint32_t x)
{
    /* One SXTB16 with its rotation (GCC's arm_acle.h has no __ror, and the rotate idiom stays a MOV). */
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
/* acc + lo(a) * lo(b) + hi(a) * hi(b), signed halfwords, wrapping (SMLAD). */
static inline int32_t tfmb_smlad(uint32_t a, uint32_t b, int32_t acc) { return __smlad(a, b, acc); }
/* Halfword-wise a + b, wrapping (SADD16). */
static inline uint32_t tfmb_sadd16(uint32_t a, uint32_t b) { return (uint32_t)__sadd16(a, b); }
/* a + b saturated to int32 (QADD). */
static inline int32_t tfmb_qadd(int32_t a, int32_t b) { return __qadd(a, b); }
#else
static inline uint32_t tfmb_halves(int32_t lo, int32_t hi) { return ((uint32_t)lo & 0xFFFFu) | ((uint32_t)hi << 16); }
static inline int32_t tfmb_half_lo(uint32_t x) { return (int16_t)(x & 0xFFFFu); }
static inline int32_t tfmb_half_hi(uint32_t x) { return (int16_t)(x >> 16); }
static inline uint32_t tfmb_sxtb16(uint32_t x) { return tfmb_halves((int8_t)(x & 0xFFu), (int8_t)((x >> 16) & 0xFFu)); }
static inline uint32_t tfmb_sxtb16_ror8(uint32_t x)
{
    return tfmb_halves((int8_t)((x >> 8) & 0xFFu), (int8_t)(x >> 24));
}
static inline int32_t tfmb_smlad(uint32_t a, uint32_t b, int32_t acc)
{
    const uint32_t p = (uint32_t)(tfmb_half_lo(a) * tfmb_half_lo(b)) + (uint32_t)(tfmb_half_hi(a) * tfmb_half_hi(b));
    return (int32_t)((uint32_t)acc + p);
}
static inline uint32_t tfmb_sadd16(uint32_t a, uint32_t b)
{
    return tfmb_halves(tfmb_half_lo(a) + tfmb_half_lo(b), tfmb_half_hi(a) + tfmb_half_hi(b));
}
static inline int32_t tfmb_qadd(int32_t a, int32_t b)
{
    const int64_t s = (int64_t)a + (int64_t)b;
    return s > INT32_MAX ? INT32_MAX : (s < INT32_MIN ? INT32_MIN : (int32_t)s);
}
#endif

/* Per output channel requantization, tfmb_requant's exact result: the multipliers are validated
 * non-negative, so SaturatingRoundingDoublingHighMul's one saturating case (both operands
 * INT32_MIN) cannot occur, and its nudged division toward zero equals (ab + 2**30) >> 31 for
 * either sign of ab (an arithmetic shift: floor). */
static inline int32_t tfmb_mbqm_fast(int32_t x, int32_t multiplier, int32_t shift)
{
    const int left = shift > 0 ? (int)shift : 0;
    const int right = shift > 0 ? 0 : (int)-shift;
    const int64_t ab = (int64_t)tfmb_wshl(x, left) * (int64_t)multiplier;
    const int32_t high = (int32_t)((ab + (1LL << 30)) >> 31);
    return tfmb_rdbp(high, right);
}

static inline int8_t tfmb_requant_fast(int32_t acc, const uint8_t *bias, const uint8_t *mult, const uint8_t *shift,
                                       int32_t o, int32_t out_off, int32_t lo, int32_t hi)
{
    if (bias) acc = tfmb_wadd(acc, tfmb_rd32(bias + 4 * o));
    const int32_t v = tfmb_mbqm_fast(acc, tfmb_rd32(mult + 4 * o), tfmb_rd32(shift + 4 * o));
    return (int8_t)tfmb_clamp(tfmb_wadd(v, out_off), lo, hi);
}

#endif /* TFMB_SIMD_H */
