/*
 * int8 CONV_2D and DEPTHWISE_CONV_2D (per-channel), with the arithmetic of TFLM's reference
 * int8 kernels: int32 accumulation of filter * (input + input_offset), plus bias,
 * MultiplyByQuantizedMultiplier per output channel, + output_offset, clamp. Accumulation wraps
 * modulo 2**32 (as the int32 reference does on real hardware) without undefined behaviour.
 *
 * Params: p0 input offset, p1 output offset, p2/p3 activation range, p4/p5 stride h/w,
 * p6/p7 dilation h/w, p8/p9 padding top/left, p10/p11 multiplier/shift arrays (data offsets),
 * p12 depth multiplier (DEPTHWISE_CONV_2D only).
 */
#include "../tfmb_internal.h"

#define A(c, t) ((int8_t *)((c)->arena + (t)->offset))
#define K(c, t) ((const int8_t *)((c)->data + (t)->offset))

/* The checks CONV_2D and DEPTHWISE_CONV_2D share; dw selects the filter layout rules. */
static const char *validate_conv(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t *t,
                                 const tfmb_tensor_t *out, bool dw)
{
    const tfmb_tensor_t *in = &t[0], *f = &t[1];
    if (in->rank != 4 || out->rank != 4 || f->rank != 4) return "conv tensors must be 4-D at op";
    if (!f->constant || f->type != TFMB_TYPE_INT8) return "conv filter not int8 constant at op";
    if (out->d[0] != in->d[0]) return "conv batch mismatch at op";
    const int32_t oc = out->d[3];
    if (dw) {
        if (!tfmb_in_range(op->p[12], 1, TFMB_MAX_DIM) || (int64_t)in->d[3] * op->p[12] != oc)
            return "depth multiplier bad at op";
        if (f->d[0] != 1 || f->d[3] != oc) return "depthwise filter shape bad at op";
    } else {
        if (op->p[12] != 0) return "unused parameter set at op";
        if (f->d[0] != oc || f->d[3] != in->d[3]) return "conv filter shape bad at op";
    }
    const char *problem = tfmb_check_common_q(op);
    if (problem) return problem;
    for (int k = 4; k <= 7; ++k)
        if (!tfmb_in_range(op->p[k], 1, TFMB_MAX_STRIDE))
            return "stride/dilation out of range at op";
    if (!tfmb_in_range(op->p[8], 0, TFMB_MAX_DIM) || !tfmb_in_range(op->p[9], 0, TFMB_MAX_DIM))
        return "padding out of range at op";
    if (op->in[2] != TFMB_NONE) {
        const tfmb_tensor_t *b = &t[2];
        if (!b->constant || b->type != TFMB_TYPE_INT32 || b->elems != (uint32_t)oc)
            return "bias bad at op";
    }
    return tfmb_check_requant_arrays(m, op, oc);
}

static const char *conv_2d_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t in[3],
                                    const tfmb_tensor_t *out)
{
    return validate_conv(m, op, in, out, false);
}

static const char *depthwise_conv_2d_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t in[3],
                                              const tfmb_tensor_t *out)
{
    return validate_conv(m, op, in, out, true);
}

static void conv_2d_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *in = &t[0], *filt = &t[1];
    const int8_t *x = A(c, in);
    const int8_t *f = K(c, filt);
    int8_t *y = A(c, out);
    const uint8_t *b = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0;
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
                    yo[o] = tfmb_requant(acc, b, mult, shift, o, out_off, lo, hi);
                }
            }
        }
    }
}

static void depthwise_conv_2d_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                   const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *in = &t[0], *filt = &t[1];
    const int8_t *x = A(c, in);
    const int8_t *f = K(c, filt);
    int8_t *y = A(c, out);
    const uint8_t *b = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0;
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
                        yo[o] = tfmb_requant(acc, b, mult, shift, o, out_off, lo, hi);
                    }
                }
            }
        }
    }
}

const tfmb_op_entry_t tfmb_op_conv_2d = {
    .code = TFMB_OP_CONV_2D,
    .inputs = 3, /* input, filter, optional bias */
    .required = 2,
    .activations = 1,
    .in_place = false,
    .validate = conv_2d_validate,
    .eval = conv_2d_eval,
};

const tfmb_op_entry_t tfmb_op_depthwise_conv_2d = {
    .code = TFMB_OP_DEPTHWISE_CONV_2D,
    .inputs = 3,
    .required = 2,
    .activations = 1,
    .in_place = false,
    .validate = depthwise_conv_2d_validate,
    .eval = depthwise_conv_2d_eval,
};
