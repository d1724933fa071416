/*
 * Helium (MVE) ADD, bit-exact with add.c's reference: four elements per vector in int32 lanes
 * (widening VLDRB.S32), each input offset, shifted left and rescaled, the sum rescaled, offset
 * and clamped, with tfmb_mve_mbqm_n's exact MultiplyByQuantizedMultiplier; tail-predicated.
 */
#include "../tfmb_mve.h"

#if TFMB_CORE == TFMB_CORE_MVE

void tfmb_add_mve(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *a = (const int8_t *)(c->arena + t[0].offset);
    const int8_t *b = (const int8_t *)(c->arena + t[1].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t off1 = op->p[0], off2 = op->p[1], lo = op->p[2], hi = op->p[3], out_off = op->p[4];
    const int32_t left = op->p[5];
    const int32_t m1 = op->p[6], s1 = op->p[7], m2 = op->p[8], s2 = op->p[9], mo = op->p[10], so = op->p[11];
    for (int32_t n = (int32_t)out->elems; n > 0; n -= 4, a += 4, b += 4, y += 4) {
        const mve_pred16_t p = vctp32q((uint32_t)n);
        int32x4_t v1 = vshlq_r_s32(vaddq_n_s32(vldrbq_z_s32(a, p), off1), left);
        int32x4_t v2 = vshlq_r_s32(vaddq_n_s32(vldrbq_z_s32(b, p), off2), left);
        v1 = tfmb_mve_mbqm_n(v1, m1, s1);
        v2 = tfmb_mve_mbqm_n(v2, m2, s2);
        const int32x4_t v = tfmb_mve_mbqm_n(vaddq_s32(v1, v2), mo, so);
        vstrbq_p_s32(y, tfmb_mve_out(v, out_off, lo, hi), p);
    }
}

#endif /* TFMB_CORE == TFMB_CORE_MVE */
