/*
 * The Helium (MVE, Cortex-M55/M85) int8 kernels: their entry points, which the op files set as
 * their entries' `fast` on an MVE build (FULLY_CONNECTED's is in ops/fully_connected.h), and the
 * vector helpers the kernel files share. Each
 * kernel gives exactly its op's plain-C reference result (and so TFLM's).
 */
#ifndef TFMB_MVE_H
#define TFMB_MVE_H

#include "tfmb_internal.h"

#if TFMB_CORE == TFMB_CORE_MVE
#include <arm_mve.h>

void tfmb_conv_2d_mve(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c);
void tfmb_depthwise_conv_2d_mve(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                const tfmb_ctx_t *c);
void tfmb_add_mve(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c);

/* Four little-endian int32 read from any alignment (VLDRB.8 has no alignment requirement, a
 * VLDRW would need 4-byte alignment); lanes beyond `n` (< 4) read as 0 and are not touched. */
static inline int32x4_t tfmb_mve_ld32x4(const uint8_t *p, int32_t n)
{
    return vreinterpretq_s32_u8(vldrbq_z_u8(p, vctp8q((uint32_t)(n < 4 ? 4 * n : 16))));
}

/* MultiplyByQuantizedMultiplier of four accumulators, per-lane multiplier and shift (in
 * [-31, 30]), tfmb_mbqm's exact result: VSHL wraps like tfmb_wshl; VQRDMULH is
 * floor((a * m + 2**30) / 2**31), which equals gemmlowp's nudged division toward zero for either
 * sign (tfmb_mbqm_fast), and cannot saturate with m >= 0 (validated); VRSHL by -e rounds half
 * up, so negative lanes first take 1 off to round half away from zero as RoundingDivideByPOT
 * (x & right has the sign bit exactly when right != 0 and x < 0; x > INT32_MIN here since
 * m < 2**31, so x - 1 cannot wrap). */
static inline int32x4_t tfmb_mve_mbqm(int32x4_t x, int32x4_t mult, int32x4_t shift)
{
    const int32x4_t zero = vdupq_n_s32(0);
    const int32x4_t right = vminq_s32(shift, zero); /* -e <= 0 */
    x = vshlq_s32(x, vmaxq_s32(shift, zero));
    x = vqrdmulhq_s32(x, mult);
    x = vaddq_s32(x, vshrq_n_s32(vandq_s32(x, right), 31));
    return vrshlq_s32(x, right);
}

/* The same with one multiplier and shift for the four lanes (one output channel, four
 * positions). */
static inline int32x4_t tfmb_mve_mbqm_n(int32x4_t x, int32_t mult, int32_t shift)
{
    if (shift > 0) x = vshlq_r_s32(x, shift);
    x = vqrdmulhq_n_s32(x, mult);
    if (shift < 0) {
        x = vaddq_s32(x, vshrq_n_s32(x, 31));
        x = vrshlq_n_s32(x, shift);
    }
    return x;
}

/* + output offset, clamp to [lo, hi]. */
static inline int32x4_t tfmb_mve_out(int32x4_t v, int32_t out_off, int32_t lo, int32_t hi)
{
    v = vaddq_n_s32(v, out_off);
    return vminq_s32(vmaxq_s32(v, vdupq_n_s32(lo)), vdupq_n_s32(hi));
}
#endif

#endif /* TFMB_MVE_H */
