/*
 * int8 DEPTHWISE_CONV_2D on a core with the DSP extension, bit-exact with the plain-C reference
 * (conv.c) and so with TFLM.
 *
 * Channels-last: four consecutive channels are one word of input and one word of a filter tap.
 * Depth multiplier 1: the loop runs per group of four channels over every output position, so
 * each channel's bias, multiplier, shift and filter taps are read once per group (the taps
 * sign-extended to halfwords once, kept on the stack), and a tap costs one input load, two
 * SXTB16 and four SMLABB/SMLATT. Interior positions (every tap inside the input) skip the input
 * offset: sum(w*(x+off)) == sum(w*x) + off*sum(w) (mod 2**32), so the group starts each
 * accumulator at bias + off*sum(w); border positions walk their clipped tap range and add the
 * offset per tap (SADD16), as the reference skips the taps outside. Requantization with a right
 * shift is one 64-bit multiply-add (tfmb_mbqm_rs), the clamp a bytewise max/min of the packed
 * word. Channel tails (C % 4), depth multipliers above 1 and filters of more than
 * DW_MAX_TAPS taps take a scalar loop with the same hoisting.
 */
#include "../tfmb_simd.h"

#if TFMB_CORE == TFMB_CORE_DSP

#define DW_MAX_TAPS 49 /* filter taps of the packed path (7x7): 2 words each on the stack (392 bytes) */

typedef struct {
    const int8_t *x, *f;
    int8_t *y;
    const uint8_t *b, *mult, *shift;
    int32_t in_off, out_off, lo, hi;
    int32_t sh, sw, dh, dw, ph, pw, dm;
    int32_t batches, ih, iw, ic, oh, ow, oc, fh, fw;
    int32_t ox_a, ox_b; /* output columns whose taps are all inside the input: [ox_a, ox_b) */
} dw_args_t;

/* The signed halfwords of a word. */
static inline int32_t dw_half_lo(uint32_t x) { return (int16_t)(x & 0xFFFFu); }
static inline int32_t dw_half_hi(uint32_t x) { return (int16_t)(x >> 16); }

/* One channel's requantization, hoisted out of the position loop. */
typedef struct {
    int32_t bias, mult, shift;
    int64_t k; /* tfmb_rs_k(shift) when shift <= -1 */
} dw_rq_t;

static inline dw_rq_t dw_rq(const dw_args_t *a, int32_t o)
{
    dw_rq_t q;
    q.bias = a->b ? tfmb_rd32(a->b + 4 * o) : 0;
    q.mult = tfmb_rd32(a->mult + 4 * o);
    q.shift = tfmb_rd32(a->shift + 4 * o);
    q.k = q.shift <= -1 ? tfmb_rs_k(q.shift) : 0;
    return q;
}

/* acc (bias included) requantized, + output offset, before the clamp. */
static inline __attribute__((always_inline)) int32_t dw_out(int32_t acc, const dw_rq_t *q, int32_t out_off, bool rs)
{
    return tfmb_wadd(rs ? tfmb_mbqm_rs(acc, q->mult, q->k, q->shift) : tfmb_mbqm_fast(acc, q->mult, q->shift), out_off);
}

/* The first output column from which every later tap column up to `last` lies inside, i.e. the
 * columns [first, end) whose whole filter row falls inside [0, size). */
static void dw_inside_cols(int32_t outs, int32_t stride, int32_t pad, int32_t dil, int32_t taps, int32_t size,
                           int32_t *first, int32_t *end)
{
    int32_t o = 0;
    while (o < outs && o * stride - pad < 0) ++o;
    *first = o;
    while (o < outs && o * stride - pad + dil * (taps - 1) < size) ++o;
    *end = o;
}

/* Four channels of one output position, every tap inside: the accumulators start at
 * bias + off*sum(w) (acc[]), FH x FW taps are summed without the offset. FH/FW are compile-time
 * constants in the 3x3 instance. */
static inline __attribute__((always_inline)) void dw_full4(const int8_t *xp, int32_t row_step, int32_t col_step,
                                                         const uint32_t *wq, int32_t fh, int32_t fw, int32_t acc[4])
{
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    for (int32_t ky = 0; ky < fh; ++ky) {
        const int8_t *xr = xp;
        for (int32_t kx = 0; kx < fw; ++kx) {
            const uint32_t x = tfmb_ld32(xr);
            const uint32_t xe = tfmb_sxtb16(x), xo = tfmb_sxtb16_ror8(x);
            const uint32_t we = wq[0], wo = wq[1];
            wq += 2;
            xr += col_step;
            a0 = tfmb_smlabb(xe, we, a0);
            a2 = tfmb_smlatt(xe, we, a2);
            a1 = tfmb_smlabb(xo, wo, a1);
            a3 = tfmb_smlatt(xo, wo, a3);
        }
        xp += row_step;
    }
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
}

/* Four channels of a border position: taps [ky0, ky1) x [kx0, kx1) with the input offset added
 * (x + off fits a halfword), accumulators starting at the bias. */
static inline void dw_clip4(const int8_t *xin, int32_t at, int32_t row_step, int32_t col_step, const uint32_t *wq, int32_t fw,
                            int32_t ky0, int32_t ky1, int32_t kx0, int32_t kx1, uint32_t off2, int32_t acc[4])
{
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    for (int32_t ky = ky0; ky < ky1; ++ky) {
        const int8_t *xr = xin + at + ky * row_step + kx0 * col_step;
        const uint32_t *wr = wq + 2 * (ky * fw + kx0);
        for (int32_t kx = kx0; kx < kx1; ++kx) {
            const uint32_t x = tfmb_ld32(xr);
            const uint32_t xe = tfmb_sadd16(tfmb_sxtb16(x), off2), xo = tfmb_sadd16(tfmb_sxtb16_ror8(x), off2);
            const uint32_t we = wr[0], wo = wr[1];
            wr += 2;
            xr += col_step;
            a0 = tfmb_smlabb(xe, we, a0);
            a2 = tfmb_smlatt(xe, we, a2);
            a1 = tfmb_smlabb(xo, wo, a1);
            a3 = tfmb_smlatt(xo, wo, a3);
        }
    }
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
}

/* Requantize, clamp and store four channels. */
static inline __attribute__((always_inline)) void dw_store4(int8_t *yp, const int32_t acc[4], const dw_rq_t q[4],
                                                          int32_t out_off, uint32_t lo4, uint32_t hi4, bool rs)
{
    const uint32_t v = tfmb_pack4(tfmb_ssat8(dw_out(acc[0], &q[0], out_off, rs)),
                                  tfmb_ssat8(dw_out(acc[1], &q[1], out_off, rs)),
                                  tfmb_ssat8(dw_out(acc[2], &q[2], out_off, rs)),
                                  tfmb_ssat8(dw_out(acc[3], &q[3], out_off, rs)));
    tfmb_st32(yp, tfmb_min_s8x4(tfmb_max_s8x4(v, lo4), hi4));
}

/* Every output position of one group of four channels (c0 .. c0+3), depth multiplier 1. */
static inline __attribute__((always_inline)) void dw_group4(const dw_args_t *a, int32_t c0, const uint32_t *wq,
                                                          const dw_rq_t q[4], const int32_t full[4], bool rs,
                                                          int32_t fh, int32_t fw)
{
    const int32_t ic = a->ic;
    const int32_t row_step = a->dh * a->iw * ic, col_step = a->dw * ic;
    const uint32_t off2 = ((uint32_t)a->in_off & 0xFFFFu) * 0x10001u;
    const uint32_t lo4 = tfmb_bytes4(a->lo), hi4 = tfmb_bytes4(a->hi);
    const int32_t base_bias[4] = {q[0].bias, q[1].bias, q[2].bias, q[3].bias};
    for (int32_t n = 0; n < a->batches; ++n)
        for (int32_t oy = 0; oy < a->oh; ++oy) {
            const int32_t iy0 = oy * a->sh - a->ph;
            int32_t ky0, ky1;
            tfmb_taps_inside(iy0, a->dh, fh, a->ih, &ky0, &ky1);
            const bool rows_full = ky0 == 0 && ky1 == fh;
            const int32_t xrow = (n * a->ih + iy0) * a->iw * ic + c0; /* may be negative: taps inside add to it */
            int8_t *yrow = a->y + (n * a->oh + oy) * a->ow * a->oc + c0;
            int32_t ox = 0;
            while (ox < a->ow) {
                const bool inner = rows_full && ox >= a->ox_a && ox < a->ox_b;
                if (inner) {
                    /* the run of interior positions of this row */
                    const int32_t *init = full;
                    const int8_t *xp = a->x + xrow + (ox * a->sw - a->pw) * ic;
                    const int32_t step = a->sw * ic;
                    int8_t *yp = yrow + ox * a->oc;
                    for (; ox < a->ox_b; ++ox) {
                        int32_t acc[4] = {init[0], init[1], init[2], init[3]};
                        dw_full4(xp, row_step, col_step, wq, fh, fw, acc);
                        dw_store4(yp, acc, q, a->out_off, lo4, hi4, rs);
                        xp += step;
                        yp += a->oc;
                    }
                    continue;
                }
                const int32_t ix0 = ox * a->sw - a->pw;
                int32_t kx0, kx1;
                tfmb_taps_inside(ix0, a->dw, fw, a->iw, &kx0, &kx1);
                int32_t acc[4] = {base_bias[0], base_bias[1], base_bias[2], base_bias[3]};
                dw_clip4(a->x, xrow + ix0 * ic, row_step, col_step, wq, fw, ky0, ky1, kx0, kx1, off2, acc);
                dw_store4(yrow + ox * a->oc, acc, q, a->out_off, lo4, hi4, rs);
                ++ox;
            }
        }
}

/* Every output position of output channel o (input channel o / dm), one channel at a time. */
static void dw_channel(const dw_args_t *a, int32_t o)
{
    const int32_t ci = o / a->dm;
    const dw_rq_t q = dw_rq(a, o);
    const bool rs = q.shift <= -1;
    for (int32_t n = 0; n < a->batches; ++n)
        for (int32_t oy = 0; oy < a->oh; ++oy) {
            const int32_t iy0 = oy * a->sh - a->ph;
            int32_t ky0, ky1;
            tfmb_taps_inside(iy0, a->dh, a->fh, a->ih, &ky0, &ky1);
            for (int32_t ox = 0; ox < a->ow; ++ox) {
                const int32_t ix0 = ox * a->sw - a->pw;
                int32_t kx0, kx1;
                tfmb_taps_inside(ix0, a->dw, a->fw, a->iw, &kx0, &kx1);
                uint32_t acc = (uint32_t)q.bias;
                for (int32_t ky = ky0; ky < ky1; ++ky) {
                    const int8_t *xr = a->x + ((n * a->ih + iy0 + a->dh * ky) * a->iw + ix0) * a->ic + ci;
                    const int8_t *fr = a->f + ky * a->fw * a->oc + o;
                    for (int32_t kx = kx0; kx < kx1; ++kx)
                        acc += (uint32_t)((int32_t)fr[kx * a->oc] * ((int32_t)xr[a->dw * kx * a->ic] + a->in_off));
                }
                const int32_t v = rs ? dw_out((int32_t)acc, &q, a->out_off, true) : dw_out((int32_t)acc, &q, a->out_off, false);
                a->y[((n * a->oh + oy) * a->ow + ox) * a->oc + o] = (int8_t)tfmb_clamp(v, a->lo, a->hi);
            }
        }
}

void tfmb_depthwise_conv_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                const tfmb_ctx_t *c);

void tfmb_depthwise_conv_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *in = &t[0], *filt = &t[1];
    dw_args_t a = {
        .x = (const int8_t *)(c->arena + in->offset), .f = (const int8_t *)(c->data + filt->offset),
        .y = (int8_t *)(c->arena + out->offset),
        .b = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0,
        .mult = c->data + op->p[10], .shift = c->data + op->p[11],
        .in_off = op->p[0], .out_off = op->p[1], .lo = op->p[2], .hi = op->p[3],
        .sh = op->p[4], .sw = op->p[5], .dh = op->p[6], .dw = op->p[7], .ph = op->p[8], .pw = op->p[9],
        .dm = op->p[12],
        .batches = in->d[0], .ih = in->d[1], .iw = in->d[2], .ic = in->d[3],
        .oh = out->d[1], .ow = out->d[2], .oc = out->d[3], .fh = filt->d[1], .fw = filt->d[2],
    };
    dw_inside_cols(a.ow, a.sw, a.pw, a.dw, a.fw, a.iw, &a.ox_a, &a.ox_b);
    const int32_t taps = a.fh * a.fw;
    int32_t groups = 0;
    if (a.dm == 1 && taps <= DW_MAX_TAPS) groups = a.oc / 4;
    uint32_t wq[2 * DW_MAX_TAPS];
    for (int32_t g = 0; g < groups; ++g) {
        const int32_t c0 = 4 * g;
        dw_rq_t q[4];
        int32_t full[4];
        bool rs = true;
        for (int32_t j = 0; j < 4; ++j) {
            q[j] = dw_rq(&a, c0 + j);
            rs = rs && q[j].shift <= -1;
        }
        uint32_t sum_e = 0, sum_o = 0; /* sum(w) per channel as halfwords, |sum| <= 49*128 */
        for (int32_t k = 0; k < taps; ++k) {
            const uint32_t w = tfmb_ld32(a.f + k * a.oc + c0);
            wq[2 * k] = tfmb_sxtb16(w);
            wq[2 * k + 1] = tfmb_sxtb16_ror8(w);
            sum_e = tfmb_sadd16(sum_e, wq[2 * k]);
            sum_o = tfmb_sadd16(sum_o, wq[2 * k + 1]);
        }
        const int32_t sums[4] = {dw_half_lo(sum_e), dw_half_lo(sum_o), dw_half_hi(sum_e), dw_half_hi(sum_o)};
        for (int32_t j = 0; j < 4; ++j) full[j] = tfmb_wadd(q[j].bias, (int32_t)((uint32_t)sums[j] * (uint32_t)a.in_off));
        if (a.fh == 3 && a.fw == 3) {
            if (rs)
                dw_group4(&a, c0, wq, q, full, true, 3, 3);
            else
                dw_group4(&a, c0, wq, q, full, false, 3, 3);
        } else if (rs) {
            dw_group4(&a, c0, wq, q, full, true, a.fh, a.fw);
        } else {
            dw_group4(&a, c0, wq, q, full, false, a.fh, a.fw);
        }
    }
    for (int32_t o = 4 * groups; o < a.oc; ++o) dw_channel(&a, o);
}

#endif /* TFMB_CORE == TFMB_CORE_DSP */
