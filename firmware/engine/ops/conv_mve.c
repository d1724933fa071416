/*
 * Helium (MVE) CONV_2D and DEPTHWISE_CONV_2D, bit-exact with conv.c's reference kernels.
 *
 * CONV_2D: the input under each output position is one int8 column of the filter's depth
 * fh * fw * ic (im2col into the op's scratch; a 1x1 filter reads the input pixel in place), with
 * the taps outside the input holding the input zero point -input_offset. Then
 * sum(w * (x + off)) = sum(w * x) + off * sum(w) modulo 2**32 for every tap (the padded ones give
 * w * 0 in the reference and w * (-off) + off * w = 0 here), so VMLADAVA.S8 dots 16 int8 pairs per
 * instruction and VADDVA.S8 sums the filter row once per four columns. Four columns (positions)
 * share each filter load; the four accumulators of a channel are requantized as one vector. A
 * filter depth of at most 16 (small pointwise layers) keeps the four columns in registers.
 *
 * DEPTHWISE_CONV_2D (depth multiplier 1): channels-last, eight channels per vector (widening
 * VLDRB.S16 loads), one block of eight channels at a time over every position, so the block's
 * bias, multipliers and shifts are read once; VMULLB / VMULLT multiply the even / odd int16
 * lanes into int32 products for the per-lane accumulation (modulo 2**32, as the reference).
 * Positions whose taps are all inside the input start from bias + off * sum(w) and accumulate
 * w * x; edge positions add off to x per tap (x + off is within [-255, 255]: an int16 lane).
 */
#include "../tfmb_mve.h"

#if TFMB_CORE == TFMB_CORE_MVE

#define CONV_COLUMNS 4

/* Copies n bytes (vector, tail-predicated). */
static inline void mve_copy(int8_t *dst, const int8_t *src, int32_t n)
{
    for (; n > 0; n -= 16, src += 16, dst += 16) {
        const mve_pred16_t p = vctp8q((uint32_t)n);
        vstrbq_p_s8(dst, vldrbq_z_s8(src, p), p);
    }
}

/* Fills n bytes with v. */
static inline void mve_fill(int8_t *dst, int8_t v, int32_t n)
{
    const int8x16_t vv = vdupq_n_s8(v);
    for (; n > 0; n -= 16, dst += 16) vstrbq_p_s8(dst, vv, vctp8q((uint32_t)n));
}

typedef struct {
    const int8_t *x;
    int32_t ih, iw, ic, fh, fw, sh, sw, dh, dw, ph, pw, oh, ow;
    int8_t zero; /* the input zero point, -input_offset */
} im2col_t;

/* The column of output position (n, oy, ox): a pointer into the input when it is one whole pixel
 * (1x1 filter inside the input), else its copy in `buf`. */
static const int8_t *im2col(const im2col_t *g, int32_t n, int32_t oy, int32_t ox, int8_t *buf)
{
    const int32_t iy0 = oy * g->sh - g->ph, ix0 = ox * g->sw - g->pw;
    int32_t ky0, ky1, kx0, kx1;
    tfmb_taps_inside(iy0, g->dh, g->fh, g->ih, &ky0, &ky1);
    tfmb_taps_inside(ix0, g->dw, g->fw, g->iw, &kx0, &kx1);
    const int32_t ic = g->ic, row = g->fw * ic;
    if (g->fh == 1 && g->fw == 1 && ky1 > ky0 && kx1 > kx0)
        return g->x + ((n * g->ih + iy0) * g->iw + ix0) * ic;
    int8_t *dst = buf;
    for (int32_t ky = 0; ky < g->fh; ++ky, dst += row) {
        if (ky < ky0 || ky >= ky1) {
            mve_fill(dst, g->zero, row);
            continue;
        }
        const int8_t *src = g->x + ((n * g->ih + iy0 + g->dh * ky) * g->iw + ix0) * ic;
        if (kx0 > 0) mve_fill(dst, g->zero, kx0 * ic);
        if (g->dw == 1) {
            mve_copy(dst + kx0 * ic, src + kx0 * ic, (kx1 - kx0) * ic);
        } else {
            for (int32_t kx = kx0; kx < kx1; ++kx) mve_copy(dst + kx * ic, src + g->dw * kx * ic, ic);
        }
        if (kx1 < g->fw) mve_fill(dst + kx1 * ic, g->zero, (g->fw - kx1) * ic);
    }
    return buf;
}

void tfmb_conv_2d_mve(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *in = &t[0], *filt = &t[1];
    const int8_t *f = (const int8_t *)(c->data + filt->offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const uint8_t *b = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0;
    const uint8_t *mult = c->data + op->p[10], *shift = c->data + op->p[11];
    const int32_t in_off = op->p[0], out_off = op->p[1], lo = op->p[2], hi = op->p[3];
    const im2col_t g = {
        .x = (const int8_t *)(c->arena + in->offset), .ih = in->d[1], .iw = in->d[2], .ic = in->d[3],
        .fh = filt->d[1], .fw = filt->d[2], .sh = op->p[4], .sw = op->p[5], .dh = op->p[6], .dw = op->p[7],
        .ph = op->p[8], .pw = op->p[9], .oh = out->d[1], .ow = out->d[2], .zero = (int8_t)-in_off,
    };
    const int32_t oc = out->d[3], depth = g.fh * g.fw * g.ic, stride = (depth + 15) / 16 * 16;
    const int32_t full = depth / 16, tail = depth % 16;
    const int32_t positions = in->d[0] * g.oh * g.ow;
    int8_t *scratch = (int8_t *)tfmb_scratch(op, c);
    const uint32x4_t out_at = vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)oc); /* the 4 positions' outputs */
    const mve_pred16_t tail_p = vctp8q((uint32_t)(depth <= 16 ? depth : tail));

    int32_t n = 0, oy = 0, ox = 0;
    for (int32_t pos = 0; pos < positions; pos += CONV_COLUMNS) {
        const int32_t count = positions - pos < CONV_COLUMNS ? positions - pos : CONV_COLUMNS;
        const int8_t *col[CONV_COLUMNS];
        for (int32_t j = 0; j < count; ++j) {
            col[j] = im2col(&g, n, oy, ox, scratch + j * stride);
            if (++ox == g.ow) {
                ox = 0;
                if (++oy == g.oh) oy = 0, ++n;
            }
        }
        for (int32_t j = count; j < CONV_COLUMNS; ++j) col[j] = col[0]; /* dots discarded */
        const mve_pred16_t store_p = vctp32q((uint32_t)count);
        int8_t *yo = y + pos * oc;
        const int8_t *wp = f;
        if (depth <= 16) { /* one vector per column, loaded once for every channel */
            const int8x16_t x0 = vldrbq_z_s8(col[0], tail_p), x1 = vldrbq_z_s8(col[1], tail_p);
            const int8x16_t x2 = vldrbq_z_s8(col[2], tail_p), x3 = vldrbq_z_s8(col[3], tail_p);
            for (int32_t o = 0; o < oc; ++o, wp += depth) {
                const int8x16_t w = vldrbq_z_s8(wp, tail_p);
                int32x4_t acc = vdupq_n_s32(vmladavq_s8(w, x0));
                acc = vsetq_lane_s32(vmladavq_s8(w, x1), acc, 1);
                acc = vsetq_lane_s32(vmladavq_s8(w, x2), acc, 2);
                acc = vsetq_lane_s32(vmladavq_s8(w, x3), acc, 3);
                uint32_t add = (uint32_t)in_off * (uint32_t)vaddvq_s8(w);
                if (b) add += tfmb_rdu32(b + 4 * o);
                acc = vaddq_n_s32(acc, (int32_t)add);
                acc = tfmb_mve_mbqm_n(acc, tfmb_rd32(mult + 4 * o), tfmb_rd32(shift + 4 * o));
                vstrbq_scatter_offset_p_s32(yo + o, out_at, tfmb_mve_out(acc, out_off, lo, hi), store_p);
            }
            continue;
        }
        for (int32_t o = 0; o < oc; ++o) {
            const int8_t *c0 = col[0], *c1 = col[1], *c2 = col[2], *c3 = col[3];
            int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, sw = 0;
            for (int32_t k = 0; k < full; ++k) {
                const int8x16_t w = vldrbq_s8(wp);
                sw = vaddvaq_s8(sw, w);
                a0 = vmladavaq_s8(a0, w, vldrbq_s8(c0));
                a1 = vmladavaq_s8(a1, w, vldrbq_s8(c1));
                a2 = vmladavaq_s8(a2, w, vldrbq_s8(c2));
                a3 = vmladavaq_s8(a3, w, vldrbq_s8(c3));
                wp += 16, c0 += 16, c1 += 16, c2 += 16, c3 += 16;
            }
            if (tail) {
                const int8x16_t w = vldrbq_z_s8(wp, tail_p);
                sw = vaddvaq_s8(sw, w);
                a0 = vmladavaq_s8(a0, w, vldrbq_z_s8(c0, tail_p));
                a1 = vmladavaq_s8(a1, w, vldrbq_z_s8(c1, tail_p));
                a2 = vmladavaq_s8(a2, w, vldrbq_z_s8(c2, tail_p));
                a3 = vmladavaq_s8(a3, w, vldrbq_z_s8(c3, tail_p));
                wp += tail;
            }
            int32x4_t acc = vdupq_n_s32(a0);
            acc = vsetq_lane_s32(a1, acc, 1);
            acc = vsetq_lane_s32(a2, acc, 2);
            acc = vsetq_lane_s32(a3, acc, 3);
            uint32_t add = (uint32_t)in_off * (uint32_t)sw;
            if (b) add += tfmb_rdu32(b + 4 * o);
            acc = vaddq_n_s32(acc, (int32_t)add);
            acc = tfmb_mve_mbqm_n(acc, tfmb_rd32(mult + 4 * o), tfmb_rd32(shift + 4 * o));
            vstrbq_scatter_offset_p_s32(yo + o, out_at, tfmb_mve_out(acc, out_off, lo, hi), store_p);
        }
    }
}

/* DEPTHWISE_CONV_2D with a depth multiplier other than 1: the reference's loops (rare). */
static void depthwise_any(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                          const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *in = &t[0], *filt = &t[1];
    const int8_t *x = (const int8_t *)(c->arena + in->offset), *f = (const int8_t *)(c->data + filt->offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const uint8_t *b = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0;
    const uint8_t *mult = c->data + op->p[10], *shift = c->data + op->p[11];
    const int32_t in_off = op->p[0], sh = op->p[4], sw = op->p[5], dh = op->p[6], dw = op->p[7];
    const int32_t ih = in->d[1], iw = in->d[2], ic = in->d[3], fh = filt->d[1], fw = filt->d[2];
    const int32_t oh = out->d[1], ow = out->d[2], oc = out->d[3], dm = op->p[12];
    for (int32_t n = 0; n < in->d[0]; ++n)
        for (int32_t oy = 0; oy < oh; ++oy)
            for (int32_t ox = 0; ox < ow; ++ox) {
                const int32_t iy0 = oy * sh - op->p[8], ix0 = ox * sw - op->p[9];
                int32_t ky0, ky1, kx0, kx1;
                tfmb_taps_inside(iy0, dh, fh, ih, &ky0, &ky1);
                tfmb_taps_inside(ix0, dw, fw, iw, &kx0, &kx1);
                int8_t *yo = y + ((n * oh + oy) * ow + ox) * oc;
                for (int32_t o = 0; o < oc; ++o) {
                    uint32_t acc = 0;
                    for (int32_t ky = ky0; ky < ky1; ++ky)
                        for (int32_t kx = kx0; kx < kx1; ++kx) {
                            const int32_t xv = x[((n * ih + iy0 + dh * ky) * iw + ix0 + dw * kx) * ic + o / dm];
                            acc += (uint32_t)(f[(ky * fw + kx) * oc + o] * (xv + in_off));
                        }
                    yo[o] = tfmb_requant(acc, b, mult, shift, o, op->p[1], op->p[2], op->p[3]);
                }
            }
}

/* A block of eight channels ci .. ci + 7, held as even (ci + 0, 2, 4, 6) and odd (ci + 1, 3, 5, 7)
 * int32 lanes (VMULLB / VMULLT's split): what its requantization needs, computed once per op. */
typedef struct {
    int32x4_t init_full[2]; /* bias + off * sum(w over every tap): interior positions */
    int32x4_t init_edge[2]; /* bias: positions with taps outside the input add off per tap */
    int32x4_t left[2], mult[2], right[2];
} dw_block_t;

typedef struct {
    const int8_t *x, *f;
    int8_t *y;
    const uint8_t *b, *mult, *shift;
    int32_t in_off, out_off, lo, hi;
    int32_t sh, sw, dh, dw, ph, pw, batches, ih, iw, ch, fh, fw, oh, ow;
} dw_args_t;

static void dw_block_consts(const dw_args_t *a, int32_t ci, dw_block_t *k)
{
    int32_t v[5][8] __attribute__((aligned(16)));
    for (int32_t h = 0; h < 8; ++h) {
        const int32_t o = ci + h < a->ch ? ci + h : a->ch - 1; /* lanes beyond ch: stores skip them */
        uint32_t sw = 0;
        for (int32_t tap = 0; tap < a->fh * a->fw; ++tap) sw += (uint32_t)a->f[tap * a->ch + o];
        const uint32_t bias = a->b ? tfmb_rdu32(a->b + 4 * o) : 0u;
        const int32_t shift = tfmb_rd32(a->shift + 4 * o);
        const int32_t lane = (h & 1) * 4 + h / 2; /* even lanes first */
        v[0][lane] = (int32_t)(bias + (uint32_t)a->in_off * sw);
        v[1][lane] = (int32_t)bias;
        v[2][lane] = shift > 0 ? shift : 0;
        v[3][lane] = tfmb_rd32(a->mult + 4 * o);
        v[4][lane] = shift > 0 ? 0 : shift;
    }
    for (int32_t e = 0; e < 2; ++e) {
        k->init_full[e] = vldrwq_s32(&v[0][4 * e]);
        k->init_edge[e] = vldrwq_s32(&v[1][4 * e]);
        k->left[e] = vldrwq_s32(&v[2][4 * e]);
        k->mult[e] = vldrwq_s32(&v[3][4 * e]);
        k->right[e] = vldrwq_s32(&v[4][4 * e]);
    }
}

/* Requantizes one half (even or odd lanes) and stores it at yo + 2 * lane (predicated). */
static inline __attribute__((always_inline)) void dw_store(const dw_args_t *a, const dw_block_t *k, int32_t e,
                                                           int32x4_t acc, int8_t *yo, uint32x4_t at,
                                                           mve_pred16_t p, bool tail)
{
    acc = vshlq_s32(acc, k->left[e]);
    acc = vqrdmulhq_s32(acc, k->mult[e]);
    acc = vaddq_s32(acc, vshrq_n_s32(vandq_s32(acc, k->right[e]), 31));
    acc = vrshlq_s32(acc, k->right[e]);
    acc = tfmb_mve_out(acc, a->out_off, a->lo, a->hi);
    if (tail)
        vstrbq_scatter_offset_p_s32(yo, at, acc, p);
    else
        vstrbq_scatter_offset_s32(yo, at, acc);
}

/* One tap: x (int8, widened) times w, even / odd lanes accumulated (+ off to x on edge positions). */
#define DW_TAP(xp, fp, edge)                                                                            \
    do {                                                                                                \
        int16x8_t xv_ = tail ? vldrbq_z_s16((xp), p) : vldrbq_s16(xp);                                  \
        if (edge) xv_ = vaddq_n_s16(xv_, off);                                                          \
        const int16x8_t wv_ = tail ? vldrbq_z_s16((fp), p) : vldrbq_s16(fp);                            \
        even = vaddq_s32(even, vmullbq_int_s16(xv_, wv_));                                              \
        odd = vaddq_s32(odd, vmulltq_int_s16(xv_, wv_));                                                \
    } while (0)

/* Every output position of one eight-channel block. `tail` (fewer than eight channels left)
 * selects predicated loads and stores: always inlined, so the full blocks carry none. Interior
 * positions (every tap inside the input) of a row skip the clipping of the window. */
static inline __attribute__((always_inline)) void dw_channels(const dw_args_t *a, int32_t ci, bool tail)
{
    dw_block_t k;
    dw_block_consts(a, ci, &k);
    const int32_t ch = a->ch, x_row = a->dh * a->iw * ch, x_tap = a->dw * ch, f_row = a->fw * ch;
    const mve_pred16_t p = vctp16q((uint32_t)(ch - ci));
    const uint32x4_t at = vidupq_n_u32(0, 2); /* even lanes' channels, x2 */
    const mve_pred16_t p_even = vctp32q((uint32_t)((ch - ci + 1) / 2)), p_odd = vctp32q((uint32_t)((ch - ci) / 2));
    const int16_t off = (int16_t)a->in_off;
    /* ox in [ox_lo, ox_hi): the window's columns all inside the input */
    const int32_t ox_lo = (a->pw + a->sw - 1) / a->sw, room = a->iw - 1 - a->dw * (a->fw - 1) + a->pw;
    int32_t ox_hi = room < 0 ? 0 : room / a->sw + 1;
    if (ox_hi > a->ow) ox_hi = a->ow;
    for (int32_t n = 0; n < a->batches; ++n)
        for (int32_t oy = 0; oy < a->oh; ++oy) {
            const int32_t iy0 = oy * a->sh - a->ph;
            int32_t ky0, ky1;
            tfmb_taps_inside(iy0, a->dh, a->fh, a->ih, &ky0, &ky1);
            const bool full_rows = ky1 - ky0 == a->fh;
            int8_t *yo = a->y + (n * a->oh + oy) * a->ow * ch + ci;
            const int8_t *x_in = a->x + (n * a->ih + iy0 + a->dh * ky0) * a->iw * ch + ci;
            for (int32_t ox = 0; ox < a->ow; ++ox, yo += ch) {
                const int32_t ix0 = ox * a->sw - a->pw;
                int32x4_t even, odd;
                if (full_rows && ox >= ox_lo && ox < ox_hi) {
                    const int8_t *xr = x_in + ix0 * ch, *fr = a->f + ci;
                    even = k.init_full[0], odd = k.init_full[1];
                    for (int32_t ky = 0; ky < a->fh; ++ky, xr += x_row, fr += f_row) {
                        const int8_t *xp = xr, *fp = fr;
                        for (int32_t t = 0; t < a->fw; ++t, xp += x_tap, fp += ch) DW_TAP(xp, fp, false);
                    }
                } else {
                    int32_t kx0, kx1;
                    tfmb_taps_inside(ix0, a->dw, a->fw, a->iw, &kx0, &kx1);
                    const int8_t *xr = x_in + (ix0 + a->dw * kx0) * ch;
                    const int8_t *fr = a->f + (ky0 * a->fw + kx0) * ch + ci;
                    even = k.init_edge[0], odd = k.init_edge[1];
                    for (int32_t ky = ky0; ky < ky1; ++ky, xr += x_row, fr += f_row) {
                        const int8_t *xp = xr, *fp = fr;
                        for (int32_t t = kx0; t < kx1; ++t, xp += x_tap, fp += ch) DW_TAP(xp, fp, true);
                    }
                }
                dw_store(a, &k, 0, even, yo, at, p_even, tail);
                dw_store(a, &k, 1, odd, yo + 1, at, p_odd, tail);
            }
        }
}

void tfmb_depthwise_conv_2d_mve(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                const tfmb_ctx_t *c)
{
    if (op->p[12] != 1) {
        depthwise_any(op, t, out, c);
        return;
    }
    const tfmb_tensor_t *in = &t[0], *filt = &t[1];
    const dw_args_t a = {
        .x = (const int8_t *)(c->arena + in->offset), .f = (const int8_t *)(c->data + filt->offset),
        .y = (int8_t *)(c->arena + out->offset), .b = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0,
        .mult = c->data + op->p[10], .shift = c->data + op->p[11], .in_off = op->p[0], .out_off = op->p[1],
        .lo = op->p[2], .hi = op->p[3], .sh = op->p[4], .sw = op->p[5], .dh = op->p[6], .dw = op->p[7],
        .ph = op->p[8], .pw = op->p[9], .batches = in->d[0], .ih = in->d[1], .iw = in->d[2], .ch = in->d[3],
        .fh = filt->d[1], .fw = filt->d[2], .oh = out->d[1], .ow = out->d[2],
    };
    const int32_t full = a.ch / 8 * 8;
    for (int32_t ci = 0; ci < full; ci += 8) dw_channels(&a, ci, false);
    if (full < a.ch) dw_channels(&a, full, true);
}

#endif /* TFMB_CORE == TFMB_CORE_MVE */
