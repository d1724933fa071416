/*
 * Helium (MVE) FULLY_CONNECTED, bit-exact with fully_connected.c's reference kernel: with a
 * weight offset of 0 (TFLite's int8 weights are symmetric), sum(w * (x + off)) =
 * sum(w * x) + off * sum(w) modulo 2**32, so VMLADAVA.S8 dots 16 int8 pairs per instruction and
 * VADDVA.S8 sums the weight row in the same pass; two rows share each input load. A non-zero
 * weight offset runs the reference's loop.
 */
#include "../tfmb_mve.h"

#if TFMB_CORE == TFMB_CORE_MVE

void tfmb_fully_connected_mve(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                              const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *filt = &t[1];
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    const int8_t *f = (const int8_t *)(c->data + filt->offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const uint8_t *b = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0;
    const uint8_t *mult = c->data + op->p[10], *shift = c->data + op->p[11];
    const int32_t in_off = op->p[0], out_off = op->p[1], lo = op->p[2], hi = op->p[3], f_off = op->p[4];
    const int32_t n_out = filt->d[0], depth = filt->d[1];
    const int32_t batches = (int32_t)(out->elems / (uint32_t)n_out);
    const int32_t full = depth / 16, tail = depth % 16;
    const mve_pred16_t tail_p = vctp8q((uint32_t)tail);

    for (int32_t n = 0; n < batches; ++n) {
        const int8_t *xn = x + n * depth;
        int8_t *yn = y + n * n_out;
        if (f_off != 0) {
            for (int32_t o = 0; o < n_out; ++o) {
                const int8_t *fp = f + o * depth;
                uint32_t acc = 0;
                for (int32_t k = 0; k < depth; ++k) acc += (uint32_t)(((int32_t)fp[k] + f_off) * ((int32_t)xn[k] + in_off));
                yn[o] = tfmb_requant(acc, b, mult, shift, o, out_off, lo, hi);
            }
            continue;
        }
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
