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
    /* SXTB16's own rotation (arm_acle.h of GCC 12 has no __ror; one instruction either way) */
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

/* ---- window kernels (depthwise conv, pooling, add): per-lane multiply-accumulate, bytewise
 * max/min, sign-extending adds and a right-shift requantization in one 64-bit multiply-add. ---- */
#if TFMB_NATIVE_DSP
/* acc + lo(a) * lo(b), acc + hi(a) * hi(b): signed halfwords, wrapping (SMLABB / SMLATT). */
static inline int32_t tfmb_smlabb(uint32_t a, uint32_t b, int32_t acc) { return __smlabb((int32_t)a, (int32_t)b, acc); }
static inline int32_t tfmb_smlatt(uint32_t a, uint32_t b, int32_t acc) { return __smlatt((int32_t)a, (int32_t)b, acc); }
/* acc's halfwords + x's bytes 0 and 2 (or 1 and 3) sign-extended, wrapping (SXTAB16). */
static inline uint32_t tfmb_sxtab16(uint32_t acc, uint32_t x) { return (uint32_t)__sxtab16(acc, x); }
static inline uint32_t tfmb_sxtab16_ror8(uint32_t acc, uint32_t x)
{
    uint32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(acc), "r"(x));
    return r;
}
/* Bytewise signed max / min (SSUB8 sets the GE flags SEL reads: one asm block keeps them paired). */
static inline uint32_t tfmb_max_s8x4(uint32_t a, uint32_t b)
{
    uint32_t r;
    __asm__("ssub8 %0, %1, %2\n\tsel %0, %1, %2" : "=&r"(r) : "r"(a), "r"(b));
    return r;
}
static inline uint32_t tfmb_min_s8x4(uint32_t a, uint32_t b)
{
    uint32_t r;
    __asm__("ssub8 %0, %2, %1\n\tsel %0, %1, %2" : "=&r"(r) : "r"(a), "r"(b));
    return r;
}
/* x saturated to int8 (SSAT #8). */
static inline int32_t tfmb_ssat8(int32_t x) { return __ssat(x, 8); }
#else
static inline int32_t tfmb_smlabb(uint32_t a, uint32_t b, int32_t acc)
{
    return (int32_t)((uint32_t)acc + (uint32_t)(tfmb_half_lo(a) * tfmb_half_lo(b)));
}
static inline int32_t tfmb_smlatt(uint32_t a, uint32_t b, int32_t acc)
{
    return (int32_t)((uint32_t)acc + (uint32_t)(tfmb_half_hi(a) * tfmb_half_hi(b)));
}
static inline uint32_t tfmb_sxtab16(uint32_t acc, uint32_t x) { return tfmb_sadd16(acc, tfmb_sxtb16(x)); }
static inline uint32_t tfmb_sxtab16_ror8(uint32_t acc, uint32_t x) { return tfmb_sadd16(acc, tfmb_sxtb16_ror8(x)); }
static inline uint32_t tfmb_bytewise(uint32_t a, uint32_t b, bool max)
{
    uint32_t r = 0;
    for (int k = 0; k < 32; k += 8) {
        const int32_t u = (int8_t)((a >> k) & 0xFFu), v = (int8_t)((b >> k) & 0xFFu);
        r |= (uint32_t)(uint8_t)((u >= v) == max ? u : v) << k;
    }
    return r;
}
static inline uint32_t tfmb_max_s8x4(uint32_t a, uint32_t b) { return tfmb_bytewise(a, b, true); }
static inline uint32_t tfmb_min_s8x4(uint32_t a, uint32_t b) { return tfmb_bytewise(a, b, false); }
static inline int32_t tfmb_ssat8(int32_t x) { return tfmb_clamp(x, -128, 127); }
#endif

/* A byte repeated in the four lanes of a word. */
static inline uint32_t tfmb_bytes4(int32_t v) { return (uint32_t)(uint8_t)v * 0x01010101u; }

/* The low bytes of a, b, c, d in one word (lane 0 = a). */
#if TFMB_NATIVE_DSP
static inline uint32_t tfmb_pack4(int32_t a, int32_t b, int32_t c, int32_t d)
{
    uint32_t r, ac, bd; /* PKHBT pairs a/c and b/d as halfwords, UXTB16 keeps their low bytes */
    __asm__("pkhbt %1, %3, %5, lsl #16\n\t"
            "pkhbt %2, %4, %6, lsl #16\n\t"
            "uxtb16 %1, %1\n\t"
            "uxtb16 %2, %2\n\t"
            "orr %0, %1, %2, lsl #8"
            : "=r"(r), "=&r"(ac), "=&r"(bd)
            : "r"(a), "r"(b), "r"(c), "r"(d));
    return r;
}
#else
static inline uint32_t tfmb_pack4(int32_t a, int32_t b, int32_t c, int32_t d)
{
    return ((uint32_t)a & 0xFFu) | (((uint32_t)b & 0xFFu) << 8) | (((uint32_t)c & 0xFFu) << 16) | ((uint32_t)d << 24);
}
#endif

/* MultiplyByQuantizedMultiplier for a shift <= -1 (a right shift e = -shift, no left shift),
 * exact, as one 64-bit multiply-add and a shift of its high word. SaturatingRoundingDoublingHighMul
 * is floor((x*m + 2**30) / 2**31) (tfmb_mbqm_fast) and RoundingDivideByPOT(h, e) is
 * floor((h + 2**(e-1) - [h < 0]) / 2**e); nested floors of integer divisions merge, so the result
 * is floor((x*m + K - [h < 0] * 2**31) / 2**(31+e)) with K = 2**30 + 2**(30+e). [h < 0] may be
 * replaced by [x < 0] (m >= 0): they differ only when -2**30 <= x*m < 0, where h = 0 and both
 * give 0 for e >= 1. tfmb_rs_k gives K; the caller keeps it per channel. */
static inline int64_t tfmb_rs_k(int32_t shift) { return (1LL << 30) + ((int64_t)1 << (30 - shift)); }

static inline int32_t tfmb_mbqm_rs(int32_t x, int32_t mult, int64_t k, int32_t shift)
{
    const int64_t v = k + (int64_t)(x >> 31) * (1LL << 31) + (int64_t)x * (int64_t)mult;
    return (int32_t)(v >> 32) >> (-shift - 1);
}

/* The same with an offset added to the result for free: floor((v + off * 2**(31+e)) / 2**(31+e))
 * is floor(v / 2**(31+e)) + off, and for e <= 23, |off| <= 128 every term stays below 2**63
 * (|x*m| < 2**62, K < 2**54, |off| * 2**(31+e) <= 2**61). Callers keep K (split into words, so
 * the multiply-add starts from them) and e - 1 per channel. */
typedef struct {
    uint32_t k_lo;
    int32_t k_hi;
    int32_t mult;
    int32_t rsh; /* e - 1 */
} tfmb_rs_t;

static inline bool tfmb_rs_ok(int32_t shift) { return shift <= -1 && shift >= -23; }

static inline tfmb_rs_t tfmb_rs_make(int32_t mult, int32_t shift, int32_t off)
{
    /* K + off * 2**(31+e) in words, without 64-bit shifts (a few instructions per channel):
     * 2**30 and, for e = 1, 2**(30+e) = 2**31 in the low word; 2**(30+e) = 2**(e-2) * 2**32 for
     * e >= 2 and off * 2**(e-1) in the high word. */
    const int32_t e = -shift;
    tfmb_rs_t q;
    q.k_lo = (1u << 30) + (e == 1 ? 1u << 31 : 0u);
    q.k_hi = (int32_t)((e >= 2 ? 1u << (e - 2) : 0u) + (uint32_t)off * (1u << (e - 1)));
    q.mult = mult;
    q.rsh = e - 1;
    return q;
}

/* MultiplyByQuantizedMultiplier with shift 0 (no rounding division after the high mul) of x given as
 * x2 = 2 * x, which the caller must have without overflow: floor((x*m + 2**30) / 2**31) is
 * floor((x2*m + 2**31) / 2**32), the high word of one multiply-add. */
#if TFMB_NATIVE_DSP
static inline int32_t tfmb_rs0_apply(int32_t x2, int32_t mult)
{
    uint32_t lo;
    int32_t hi;
    __asm__("mov %0, #0x80000000\n\t"
            "mov %1, #0\n\t"
            "smlal %0, %1, %2, %3"
            : "=&r"(lo), "=&r"(hi)
            : "r"(x2), "r"(mult));
    return hi;
}
#else
static inline int32_t tfmb_rs0_apply(int32_t x2, int32_t mult)
{
    return (int32_t)(((int64_t)x2 * (int64_t)mult + (1LL << 31)) >> 32);
}
#endif

#if TFMB_NATIVE_DSP
static inline int32_t tfmb_rs_apply(int32_t x, const tfmb_rs_t *q)
{
    /* hi:lo = K + (x < 0 ? -2**31 : 0): x & 2**31 into the low word, x's sign word (x ASR 31) with
     * the carry into the high one; SMLAL adds x * m; the result is the high word shifted. */
    uint32_t lo, t;
    int32_t hi;
    __asm__("and %2, %3, #0x80000000\n\t"
            "adds %0, %4, %2\n\t"
            "adc %1, %5, %3, asr #31\n\t"
            "smlal %0, %1, %3, %6\n\t"
            "asr %1, %1, %7"
            : "=&r"(lo), "=&r"(hi), "=&r"(t)
            : "r"(x), "r"(q->k_lo), "r"(q->k_hi), "r"(q->mult), "r"(q->rsh)
            : "cc");
    return hi;
}
#else
static inline int32_t tfmb_rs_apply(int32_t x, const tfmb_rs_t *q)
{
    const int64_t k = (int64_t)(((uint64_t)(uint32_t)q->k_hi << 32) | q->k_lo);
    const int64_t v = k + (int64_t)(x >> 31) * (1LL << 31) + (int64_t)x * (int64_t)q->mult;
    return (int32_t)(v >> 32) >> q->rsh;
}
#endif
#endif /* TFMB_SIMD_H */
