/*
 * FULLY_CONNECTED on a core with the DSP extension (Cortex-M4F/M33/M7), weights offset 0 (the
 * entry runs the reference otherwise): bit-exact with fully_connected.c.
 *
 * Each batch row of the input is expanded once into the op's scratch as int16 with the input
 * offset added, per group of 4 values k..k+3 the two words (k, k+2) (k+1, k+3): the halfword
 * order SXTB16 / SXTB16 ROR 8 give a weight word, so SMLAD pairs weights and inputs without
 * reordering. Then two weight rows at a time run over it (one LDRD of input feeds both rows:
 * 1 LDRD + 2 x (LDR + 2 SXTB16 + 2 SMLAD) for 8 MACs); the depth's tail (depth % 4) and an odd
 * last row are done value by value. Sums wrap modulo 2**32 as in the reference, started at the
 * bias (the order of wrapping additions does not matter).
 */
#include "../tfmb_internal.h"

#if TFMB_CORE == TFMB_CORE_DSP
#include "../tfmb_simd.h"

void tfmb_fully_connected_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                              const tfmb_ctx_t *c);

/* Rows w0 and w1 (groups weight words each) dotted with the expanded input xs, added to *a0 / *a1. */
static inline void dot_rows2(const uint32_t *xs, const int8_t *w0, const int8_t *w1, int32_t groups, uint32_t *a0,
                             uint32_t *a1)
{
    int32_t s0 = (int32_t)*a0, s1 = (int32_t)*a1;
#pragma GCC unroll 4
    for (int32_t g = 0; g < groups; ++g, xs += 2, w0 += 4, w1 += 4) {
        const uint32_t x0 = xs[0], x1 = xs[1];
        uint32_t w = tfmb_ld32(w0);
        s0 = tfmb_smlad(tfmb_sxtb16(w), x0, s0);
        s0 = tfmb_smlad(tfmb_sxtb16_ror8(w), x1, s0);
        w = tfmb_ld32(w1);
        s1 = tfmb_smlad(tfmb_sxtb16(w), x0, s1);
        s1 = tfmb_smlad(tfmb_sxtb16_ror8(w), x1, s1);
    }
    *a0 = (uint32_t)s0;
    *a1 = (uint32_t)s1;
}

void tfmb_fully_connected_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                              const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *filt = &t[1];
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    const int8_t *f = (const int8_t *)(c->data + filt->offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const uint8_t *b = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0;
    const uint8_t *mult = c->data + op->p[10], *shift = c->data + op->p[11];
    const int32_t in_off = op->p[0], out_off = op->p[1], lo = op->p[2], hi = op->p[3];
    const int32_t n_out = filt->d[0], depth = filt->d[1];
    const int32_t batches = (int32_t)(out->elems / (uint32_t)n_out);
    const int32_t groups = depth >> 2, k4 = depth & ~3;
    const uint32_t off2 = ((uint32_t)in_off & 0xFFFFu) | ((uint32_t)in_off << 16);
    uint32_t *xs = (uint32_t *)tfmb_scratch(op, c);

    for (int32_t n = 0; n < batches; ++n, x += depth, y += n_out) {
        for (int32_t g = 0; g < groups; ++g) {
            const uint32_t w = tfmb_ld32(x + 4 * g);
            xs[2 * g] = tfmb_sadd16(tfmb_sxtb16(w), off2);
            xs[2 * g + 1] = tfmb_sadd16(tfmb_sxtb16_ror8(w), off2);
        }
        for (int32_t o = 0; o < n_out; o += 2) {
            const bool two = o + 1 < n_out;
            const int8_t *w0 = f + o * depth, *w1 = two ? w0 + depth : w0;
            uint32_t a0 = b ? tfmb_ld32(b + 4 * o) : 0u, a1 = b && two ? tfmb_ld32(b + 4 * o + 4) : 0u;
            dot_rows2(xs, w0, w1, groups, &a0, &a1);
            for (int32_t k = k4; k < depth; ++k) {
                const int32_t xv = (int32_t)x[k] + in_off;
                a0 += (uint32_t)((int32_t)w0[k] * xv);
                a1 += (uint32_t)((int32_t)w1[k] * xv);
            }
            y[o] = tfmb_requant_fast((int32_t)a0, 0, mult, shift, o, out_off, lo, hi);
            if (two) y[o + 1] = tfmb_requant_fast((int32_t)a1, 0, mult, shift, o + 1, out_off, lo, hi);
        }
    }
}

#endif /* TFMB_CORE == TFMB_CORE_DSP */
