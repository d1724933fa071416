/*
 * Training CONV_2D and DEPTHWISE_CONV_2D: float32 forward and backward (NHWC, batch 1).
 *
 * Params: p0/p1 stride h/w, p2/p3 dilation h/w, p4/p5 padding top/left, p6 depth multiplier
 * (DEPTHWISE_CONV_2D only). Filter channel axis 0 (CONV_2D: OHWI) or 3 (DEPTHWISE: 1HWO).
 */
#include "../tftr_internal.h"

/* The checks CONV_2D and DEPTHWISE_CONV_2D share; dw selects the filter layout rules. */
static const char *validate_conv(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, bool dw)
{
    const tftr_tensor_t *in = &t[0], *f = &t[1];
    if (!tftr_batch1_4d(in) || !tftr_batch1_4d(out))
        return "conv tensors must be 1xHxWxC at op";
    if (f->kind != TFTR_KIND_Q8 || f->rank != 4) return "conv filter not 4-D int8 at op";
    const int32_t oc = out->d[3];
    if (dw) {
        if (f->axis != 3 || f->d[0] != 1 || f->d[3] != oc)
            return "depthwise filter shape bad at op";
        if (!tftr_in_range(op->p[6], 1, TFMB_MAX_DIM) || (int64_t)in->d[3] * op->p[6] != oc)
            return "depth multiplier bad at op";
    } else {
        if (f->axis != 0 || f->d[0] != oc || f->d[3] != in->d[3])
            return "conv filter shape bad at op";
        if (op->p[6]) return "unused parameter set at op";
    }
    for (int k = 0; k < 4; ++k)
        if (!tftr_in_range(op->p[k], 1, TFMB_MAX_STRIDE))
            return "stride/dilation out of range at op";
    if (!tftr_in_range(op->p[4], 0, TFMB_MAX_DIM) || !tftr_in_range(op->p[5], 0, TFMB_MAX_DIM))
        return "padding out of range at op";
    if (!tftr_params_zero_from(op, 7)) return "unused parameter set at op";
    if (op->in[2] != TFTR_NONE16 && !tftr_check_bias(&t[2], oc)) return "bias bad at op";
    return 0;
}

static const char *conv_2d_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t in[3],
                                    const tftr_tensor_t *out)
{
    (void)p;
    return validate_conv(op, in, out, false);
}

static const char *depthwise_conv_2d_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t in[3],
                                              const tftr_tensor_t *out)
{
    (void)p;
    return validate_conv(op, in, out, true);
}

static void conv_forward(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, const tftr_ctx_t *c,
                         bool dw)
{
    const tftr_tensor_t *in = &t[0], *w = &t[1], *b = op->in[2] != TFTR_NONE16 ? &t[2] : 0;
    const int32_t h = in->d[1], wd = in->d[2], ic = in->d[3];
    const int32_t oh = out->d[1], ow = out->d[2], oc = out->d[3];
    const int32_t kh = w->d[1], kw = w->d[2];
    const int32_t sh = op->p[0], sw = op->p[1], dh = op->p[2], dwl = op->p[3], pt = op->p[4], pl = op->p[5];
    const int32_t mult = dw ? op->p[6] : 1;
    const float *x = tftr_val(c, in);
    float *y = tftr_val(c, out);
    for (int32_t o = 0; o < oc; ++o) {
        const float *row = tftr_weight_row(c, w, (uint32_t)o);
        const float bv = tftr_bias_value(c, b, (uint32_t)o);
        const int32_t ci = o / mult;
        for (int32_t oy = 0; oy < oh; ++oy)
            for (int32_t ox = 0; ox < ow; ++ox) {
                float acc = bv;
                for (int32_t ky = 0; ky < kh; ++ky) {
                    const int32_t iy = oy * sh - pt + ky * dh;
                    if (iy < 0 || iy >= h) continue;
                    for (int32_t kx = 0; kx < kw; ++kx) {
                        const int32_t ix = ox * sw - pl + kx * dwl;
                        if (ix < 0 || ix >= wd) continue;
                        const float *xp = x + (iy * wd + ix) * ic;
                        if (dw) {
                            acc += xp[ci] * row[ky * kw + kx];
                        } else {
                            const float *wp = row + (ky * kw + kx) * ic;
                            for (int32_t i = 0; i < ic; ++i) acc += xp[i] * wp[i];
                        }
                    }
                }
                y[(oy * ow + ox) * oc + o] = tftr_activate(acc, op->act);
            }
    }
}

static void conv_backward(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, const tftr_ctx_t *c,
                          bool dw)
{
    const tftr_tensor_t *in = &t[0], *w = &t[1], *b = op->in[2] != TFTR_NONE16 ? &t[2] : 0;
    const int32_t h = in->d[1], wd = in->d[2], ic = in->d[3];
    const int32_t oh = out->d[1], ow = out->d[2], oc = out->d[3];
    const int32_t kh = w->d[1], kw = w->d[2];
    const int32_t sh = op->p[0], sw = op->p[1], dh = op->p[2], dwl = op->p[3], pt = op->p[4], pl = op->p[5];
    const int32_t mult = dw ? op->p[6] : 1;
    const float *x = tftr_val(c, in);
    const float *gz = tftr_grd(c, out);
    float *dx = tftr_grd(c, in);
    for (int32_t o = 0; o < oc; ++o) {
        float *gw = tftr_grad_row(c, w, (uint32_t)o);
        float *gb = tftr_grad_row(c, b, (uint32_t)o);
        if (!gw && !gb && !dx) continue;
        const float *row = dx ? tftr_weight_row(c, w, (uint32_t)o) : 0;
        const int32_t ci = o / mult;
        for (int32_t oy = 0; oy < oh; ++oy)
            for (int32_t ox = 0; ox < ow; ++ox) {
                const float g = gz[(oy * ow + ox) * oc + o];
                if (g == 0.0f) continue;
                if (gb) *gb += g;
                if (!gw && !dx) continue;
                for (int32_t ky = 0; ky < kh; ++ky) {
                    const int32_t iy = oy * sh - pt + ky * dh;
                    if (iy < 0 || iy >= h) continue;
                    for (int32_t kx = 0; kx < kw; ++kx) {
                        const int32_t ix = ox * sw - pl + kx * dwl;
                        if (ix < 0 || ix >= wd) continue;
                        const int32_t base = (iy * wd + ix) * ic;
                        if (dw) {
                            const int32_t k = ky * kw + kx;
                            if (gw) gw[k] += g * x[base + ci];
                            if (dx) dx[base + ci] += g * row[k];
                        } else {
                            const int32_t k = (ky * kw + kx) * ic;
                            if (gw)
                                for (int32_t i = 0; i < ic; ++i) gw[k + i] += g * x[base + i];
                            if (dx)
                                for (int32_t i = 0; i < ic; ++i) dx[base + i] += g * row[k + i];
                        }
                    }
                }
            }
    }
}

static void conv_2d_forward(const tftr_op_t *op, const tftr_tensor_t in[3], const tftr_tensor_t *out,
                            const tftr_ctx_t *c)
{
    conv_forward(op, in, out, c, false);
}

static void depthwise_conv_2d_forward(const tftr_op_t *op, const tftr_tensor_t in[3], const tftr_tensor_t *out,
                                      const tftr_ctx_t *c)
{
    conv_forward(op, in, out, c, true);
}

static void conv_2d_backward(const tftr_op_t *op, const tftr_tensor_t in[3], const tftr_tensor_t *out,
                             const tftr_ctx_t *c)
{
    conv_backward(op, in, out, c, false);
}

static void depthwise_conv_2d_backward(const tftr_op_t *op, const tftr_tensor_t in[3], const tftr_tensor_t *out,
                                       const tftr_ctx_t *c)
{
    conv_backward(op, in, out, c, true);
}

const tftr_op_entry_t tftr_op_conv_2d = {
    .code = TFMB_OP_CONV_2D,
    .inputs = 3, /* input, filter, optional bias */
    .required = 2,
    .activations = 1,
    .fused_activation = true,
    .in_place = false,
    .weighted = true,
    .validate = conv_2d_validate,
    .forward = conv_2d_forward,
    .backward = conv_2d_backward,
    .loss_backward = 0,
};

const tftr_op_entry_t tftr_op_depthwise_conv_2d = {
    .code = TFMB_OP_DEPTHWISE_CONV_2D,
    .inputs = 3,
    .required = 2,
    .activations = 1,
    .fused_activation = true,
    .in_place = false,
    .weighted = true,
    .validate = depthwise_conv_2d_validate,
    .forward = depthwise_conv_2d_forward,
    .backward = depthwise_conv_2d_backward,
    .loss_backward = 0,
};
