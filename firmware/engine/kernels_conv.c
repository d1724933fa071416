/*
 * Per-channel int8 CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED, with the arithmetic of
 * TFLM's reference int8 kernels: int32 accumulation of filter * (input + input_offset), plus
 * bias, MultiplyByQuantizedMultiplier per output channel, + output_offset, clamp.
 * Accumulation wraps modulo 2**32 (as the int32 reference does on real hardware) without
 * undefined behaviour. Shapes and parameters were validated by tfmb_open.
 */
#include "tfmb_internal.h"

#define A(c, t) ((int8_t *)((c)->arena + (t)->offset))
#define K(c, t) ((const int8_t *)((c)->data + (t)->offset))

static inline int8_t requant(uint32_t acc, const uint8_t *bias, const uint8_t *mult, const uint8_t *shift,
                             int32_t o, int32_t out_off, int32_t lo, int32_t hi)
{
    if (bias) acc += tfmb_rdu32(bias + 4 * o);
    int32_t v = tfmb_mbqm((int32_t)acc, tfmb_rd32(mult + 4 * o), tfmb_rd32(shift + 4 * o));
    return (int8_t)tfmb_clamp(tfmb_wadd(v, out_off), lo, hi);
}

void tfmb_k_conv(const tfmb_op_t *op, const tfmb_tensor_t *in, const tfmb_tensor_t *filt,
                 const tfmb_tensor_t *bias, const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *x = A(c, in);
    const int8_t *f = K(c, filt);
    int8_t *y = A(c, out);
    const uint8_t *b = bias ? c->data + bias->offset : 0;
    const uint8_t *mult = c->data + op->p[10];
    const uint8_t *shift = c->data + op->p[11];
    const int32_t in_off = op->p[0], out_off = op->p[1], lo = op->p[2], hi = op->p[3];
    const int32_t sh = op->p[4], sw = op->p[5], dh = op->p[6], dw = op->p[7], ph = op->p[8], pw = op->p[9];
    const int32_t batches = in->d[0], ih = in->d[1], iw = in->d[2], ic = in->d[3];
    const int32_t oh = out->d[1], ow = out->d[2], oc = out->d[3];
    const int32_t fh = filt->d[1], fw = filt->d[2];

    for (int32_t n = 0; n < batches; ++n) {
        for (int32_t oy = 0; oy < oh; ++oy) {
            const int32_t iy0 = oy * sh - ph;
            for (int32_t ox = 0; ox < ow; ++ox) {
                const int32_t ix0 = ox * sw - pw;
                int8_t *yo = y + ((n * oh + oy) * ow + ox) * oc;
                for (int32_t o = 0; o < oc; ++o) {
                    uint32_t acc = 0;
                    for (int32_t ky = 0; ky < fh; ++ky) {
                        const int32_t iy = iy0 + dh * ky;
                        if (iy < 0 || iy >= ih) continue;
                        for (int32_t kx = 0; kx < fw; ++kx) {
                            const int32_t ix = ix0 + dw * kx;
                            if (ix < 0 || ix >= iw) continue;
                            const int8_t *xp = x + ((n * ih + iy) * iw + ix) * ic;
                            const int8_t *fp = f + ((o * fh + ky) * fw + kx) * ic;
                            int32_t s = 0; /* |s| <= ic * 32640 < 2**31 (ic <= 65535) */
                            for (int32_t k = 0; k < ic; ++k) s += (int32_t)fp[k] * ((int32_t)xp[k] + in_off);
                            acc += (uint32_t)s;
                        }
                    }
                    yo[o] = requant(acc, b, mult, shift, o, out_off, lo, hi);
                }
            }
        }
    }
}

void tfmb_k_depthwise(const tfmb_op_t *op, const tfmb_tensor_t *in, const tfmb_tensor_t *filt,
                      const tfmb_tensor_t *bias, const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *x = A(c, in);
    const int8_t *f = K(c, filt);
    int8_t *y = A(c, out);
    const uint8_t *b = bias ? c->data + bias->offset : 0;
    const uint8_t *mult = c->data + op->p[10];
    const uint8_t *shift = c->data + op->p[11];
    const int32_t in_off = op->p[0], out_off = op->p[1], lo = op->p[2], hi = op->p[3];
    const int32_t sh = op->p[4], sw = op->p[5], dh = op->p[6], dw = op->p[7], ph = op->p[8], pw = op->p[9];
    const int32_t dm = op->p[12];
    const int32_t batches = in->d[0], ih = in->d[1], iw = in->d[2], ic = in->d[3];
    const int32_t oh = out->d[1], ow = out->d[2], oc = out->d[3];
    const int32_t fh = filt->d[1], fw = filt->d[2];

    for (int32_t n = 0; n < batches; ++n) {
        for (int32_t oy = 0; oy < oh; ++oy) {
            const int32_t iy0 = oy * sh - ph;
            for (int32_t ox = 0; ox < ow; ++ox) {
                const int32_t ix0 = ox * sw - pw;
                int8_t *yo = y + ((n * oh + oy) * ow + ox) * oc;
                for (int32_t ci = 0; ci < ic; ++ci) {
                    for (int32_t m = 0; m < dm; ++m) {
                        const int32_t o = m + ci * dm;
                        uint32_t acc = 0;
                        for (int32_t ky = 0; ky < fh; ++ky) {
                            const int32_t iy = iy0 + dh * ky;
                            if (iy < 0 || iy >= ih) continue;
                            for (int32_t kx = 0; kx < fw; ++kx) {
                                const int32_t ix = ix0 + dw * kx;
                                if (ix < 0 || ix >= iw) continue;
                                const int32_t xv = (int32_t)x[((n * ih + iy) * iw + ix) * ic + ci] + in_off;
                                const int32_t fv = f[(ky * fw + kx) * oc + o];
                                acc += (uint32_t)(fv * xv);
                            }
                        }
                        yo[o] = requant(acc, b, mult, shift, o, out_off, lo, hi);
                    }
                }
            }
        }
    }
}

void tfmb_k_fully_connected(const tfmb_op_t *op, const tfmb_tensor_t *in, const tfmb_tensor_t *filt,
                            const tfmb_tensor_t *bias, const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *x = A(c, in);
    const int8_t *f = K(c, filt);
    int8_t *y = A(c, out);
    const uint8_t *b = bias ? c->data + bias->offset : 0;
    const uint8_t *mult = c->data + op->p[10];
    const uint8_t *shift = c->data + op->p[11];
    const int32_t in_off = op->p[0], out_off = op->p[1], lo = op->p[2], hi = op->p[3], f_off = op->p[4];
    const int32_t n_out = filt->d[0], depth = filt->d[1];
    const int32_t batches = (int32_t)(out->elems / (uint32_t)n_out);

    for (int32_t n = 0; n < batches; ++n) {
        const int8_t *xp = x + n * depth;
        for (int32_t o = 0; o < n_out; ++o) {
            const int8_t *fp = f + o * depth;
            uint32_t acc = 0;
            for (int32_t k = 0; k < depth; ++k)
                acc += (uint32_t)(((int32_t)fp[k] + f_off) * ((int32_t)xp[k] + in_off));
            y[n * n_out + o] = requant(acc, b, mult, shift, o, out_off, lo, hi);
        }
    }
}
