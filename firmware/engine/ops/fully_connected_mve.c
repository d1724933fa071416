/*
 * Helium (MVE) FULLY_CONNECTED, bit-exact with fully_connected.c's reference kernel: with a
 * weight offset of 0 (TFLite's int8 weights are symmetric), sum(w * (x + off)) =
 * sum(w * x) + off * sum(w) modulo 2**32, so VMLADAVA.S8 dots 16 int8 pairs per instruction and
 * VADDVA.S8 sums the weight row in the same pass; two rows share each input load. A non-zero
 * weight offset runs the reference's loop (tfmb_fully_connected_ref).
 */
#include "../tfmb_mve.h"
#include "fully_connected.h"

#if TFMB_CORE == TFMB_CORE_MVE

void tfmb_fully_connected_mve(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                              const tfmb_ctx_t *c)
{
    const tfmb_fc_args_t a = tfmb_fc_args(op, t, out, c);
    if (a.f_off != 0) {
        tfmb_fully_connected_ref(&a);
        return;
    }
    const int8_t *x = a.x, *f = a.f;
    int8_t *y = a.y;
    const uint8_t *b = a.bias, *mult = a.mult, *shift = a.shift;
    const int32_t in_off = a.in_off, out_off = a.out_off, lo = a.lo, hi = a.hi;
    const int32_t n_out = a.n_out, depth = a.depth, batches = a.batches;
    const int32_t full = depth / 16, tail = depth % 16;
    const mve_pred16_t tail_p = vctp8q((uint32_t)tail);

    for (int32_t n = 0; n < batches; ++n) {
        const int8_t *xn = x + n * depth;
        int8_t *yn = y + n * n_out;
        for (int32_t o = 0; o < n_out; o += 2) {
            const bool two = o + 1 < n_out;
            const int8_t *w0 = f + o * depth, *w1 = two ? w0 + depth : w0, *xp = xn;
            int32_t a0 = 0, a1 = 0, s0 = 0, s1 = 0;
            for (int32_t k = 0; k < full; ++k) {
                const int8x16_t xv = vldrbq_s8(xp);
                const int8x16_t v0 = vldrbq_s8(w0), v1 = vldrbq_s8(w1);
                a0 = vmladavaq_s8(a0, v0, xv);
                s0 = vaddvaq_s8(s0, v0);
                a1 = vmladavaq_s8(a1, v1, xv);
                s1 = vaddvaq_s8(s1, v1);
                xp += 16, w0 += 16, w1 += 16;
            }
            if (tail) {
                const int8x16_t xv = vldrbq_z_s8(xp, tail_p);
                const int8x16_t v0 = vldrbq_z_s8(w0, tail_p), v1 = vldrbq_z_s8(w1, tail_p);
                a0 = vmladavaq_s8(a0, v0, xv);
                s0 = vaddvaq_s8(s0, v0);
                a1 = vmladavaq_s8(a1, v1, xv);
                s1 = vaddvaq_s8(s1, v1);
            }
            const int32_t acc0 = (int32_t)((uint32_t)a0 + (uint32_t)in_off * (uint32_t)s0);
            yn[o] = tfmb_requant((uint32_t)acc0, b, mult, shift, o, out_off, lo, hi);
            if (two) {
                const int32_t acc1 = (int32_t)((uint32_t)a1 + (uint32_t)in_off * (uint32_t)s1);
                yn[o + 1] = tfmb_requant((uint32_t)acc1, b, mult, shift, o + 1, out_off, lo, hi);
            }
        }
    }
}

#endif /* TFMB_CORE == TFMB_CORE_MVE */
