/*
 * FULLY_CONNECTED on a core with the DSP extension (Cortex-M4F/M33/M7), weights offset 0 (the
 * entry runs the reference otherwise): bit-exact with fully_connected.c.
 *
 * Each batch row of the input is expanded once into the op's scratch as int16 with the input
 * offset added, per group of 4 values k..k+3 the two words (k, k+2) (k+1, k+3): the halfword
 * order SXTB16 / SXTB16 ROR 8 give a weight word, so SMLAD pairs weights and inputs without
 * reordering. Then three weight rows at a time run over it (one LDRD of input feeds the three:
 * 1 LDRD + 3 x (LDR + 2 SXTB16 + 2 SMLAD) for 12 MACs); the depth's tail (depth % 4) is done value
 * by value, and a last group of fewer rows repeats its last row (not stored). Sums wrap modulo 2**32 as in the reference, started at the
 * bias (the order of wrapping additions does not matter).
 */
#include "fully_connected.h"

#if TFMB_CORE == TFMB_CORE_DSP
#include "../tfmb_simd.h"

/* Rows w[0..2] (groups weight words each) dotted with the expanded input xs, added to a[0..2]
 * (1 LDRD of input feeds three rows: 16 instructions for 12 MACs). */
static inline void dot_rows3(const uint32_t *xs, const int8_t *w0, const int8_t *w1, const int8_t *w2,
                             int32_t groups, uint32_t a[3])
{
    int32_t s0 = (int32_t)a[0], s1 = (int32_t)a[1], s2 = (int32_t)a[2];
    const uint32_t *const end = xs + 2 * groups;
    for (; xs != end; xs += 2, w0 += 4, w1 += 4, w2 += 4) {
        const uint32_t x0 = xs[0], x1 = xs[1];
        uint32_t w = tfmb_ld32(w0);
        s0 = tfmb_smlad(tfmb_sxtb16(w), x0, s0);
        s0 = tfmb_smlad(tfmb_sxtb16_ror8(w), x1, s0);
        w = tfmb_ld32(w1);
        s1 = tfmb_smlad(tfmb_sxtb16(w), x0, s1);
        s1 = tfmb_smlad(tfmb_sxtb16_ror8(w), x1, s1);
        w = tfmb_ld32(w2);
        s2 = tfmb_smlad(tfmb_sxtb16(w), x0, s2);
        s2 = tfmb_smlad(tfmb_sxtb16_ror8(w), x1, s2);
    }
    a[0] = (uint32_t)s0;
    a[1] = (uint32_t)s1;
    a[2] = (uint32_t)s2;
}

void tfmb_fully_connected_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                              const tfmb_ctx_t *c)
{
    const tfmb_fc_args_t fc = tfmb_fc_args(op, t, out, c);
    if (fc.f_off != 0) { /* int8 converters emit symmetric weights (offset 0); others: the reference */
        tfmb_fully_connected_ref(&fc);
        return;
    }
    const int8_t *x = fc.x, *f = fc.f;
    int8_t *y = fc.y;
    const uint8_t *b = fc.bias, *mult = fc.mult, *shift = fc.shift;
    const int32_t in_off = fc.in_off, out_off = fc.out_off, lo = fc.lo, hi = fc.hi;
    const int32_t n_out = fc.n_out, depth = fc.depth, batches = fc.batches;
    const int32_t groups = depth >> 2, k4 = depth & ~3;
    const uint32_t off2 = ((uint32_t)in_off & 0xFFFFu) | ((uint32_t)in_off << 16);
    uint32_t *xs = (uint32_t *)tfmb_scratch(op, c);

    for (int32_t n = 0; n < batches; ++n, x += depth, y += n_out) {
        for (int32_t g = 0; g < groups; ++g) {
            const uint32_t w = tfmb_ld32(x + 4 * g);
            xs[2 * g] = tfmb_sadd16(tfmb_sxtb16(w), off2);
            xs[2 * g + 1] = tfmb_sadd16(tfmb_sxtb16_ror8(w), off2);
        }
        for (int32_t o = 0; o < n_out; o += 3) {
            /* rows o, o + 1, o + 2; past the last row, the last again (not stored) */
            const int32_t rows = n_out - o < 3 ? n_out - o : 3;
            const int8_t *w[3];
            uint32_t a[3];
            for (int32_t r = 0; r < 3; ++r) {
                const int32_t row = o + (r < rows ? r : rows - 1);
                w[r] = f + row * depth;
                a[r] = b ? tfmb_ld32(b + 4 * row) : 0u;
            }
            dot_rows3(xs, w[0], w[1], w[2], groups, a);
            for (int32_t r = 0; r < rows; ++r) {
                for (int32_t k = k4; k < depth; ++k)
                    a[r] += (uint32_t)((int32_t)w[r][k] * ((int32_t)x[k] + in_off));
                y[o + r] = tfmb_requant_fast((int32_t)a[r], 0, mult, shift, o + r, out_off, lo, hi);
            }
        }
    }
}

#endif /* TFMB_CORE == TFMB_CORE_DSP */
