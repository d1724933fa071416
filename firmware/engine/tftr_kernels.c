/*
 * tftr float32 kernels: forward and backward of one sample (NHWC, batch 1).
 *
 * Weight rows: a channel of w* is contiguous in RAM (values), any other channel is
 * dequantized from the int8 program into the scratch row: w = scale[c] * (q - zp[c]).
 * Every index here is inside its tensor because tftr_open validated the shapes.
 */
#include <math.h>

#include "tftr_internal.h"

/* Map entry of channel ch: index of its first value in w*, or -1 (frozen). */
static int32_t chan_map(const tftr_ctx_t *c, const tftr_tensor_t *w, uint32_t ch)
{
    return tfmb_rd32(c->data + w->map + 4u * ch);
}

/* Values per channel P; the element k of channel ch is at (axis 0) ch*P + k, else k*C + ch. */
static const float *weight_row(const tftr_ctx_t *c, const tftr_tensor_t *w, uint32_t ch)
{
    const int32_t m = chan_map(c, w, ch);
    if (m >= 0) return c->values + m;
    const uint32_t per = w->elems / w->ch;
    const float s = tftr_rdf(c->data + w->sc + 4u * ch);
    const int32_t z = tfmb_rd32(c->data + w->zp + 4u * ch);
    const int8_t *q = (const int8_t *)(c->data + w->q);
    float *row = c->scratch;
    if (w->axis == 0)
        for (uint32_t k = 0; k < per; ++k) row[k] = (float)((int32_t)q[ch * per + k] - z) * s;
    else
        for (uint32_t k = 0; k < per; ++k) row[k] = (float)((int32_t)q[k * w->ch + ch] - z) * s;
    return row;
}

static float bias_value(const tftr_ctx_t *c, const tftr_tensor_t *b, uint32_t ch)
{
    if (!b) return 0.0f;
    const int32_t m = chan_map(c, b, ch);
    if (m >= 0) return c->values[m];
    const int32_t q = tfmb_rd32(c->data + b->q + 4u * ch);
    return (float)q * tftr_rdf(c->data + b->sc + 4u * ch); /* zero point validated 0 */
}

/* Gradient row of channel ch in grad (w*), or NULL when the channel is frozen. */
static float *grad_row(const tftr_ctx_t *c, const tftr_tensor_t *w, uint32_t ch)
{
    if (!w) return 0;
    const int32_t m = chan_map(c, w, ch);
    return m >= 0 ? c->grad + m : 0;
}

static float activate(float v, uint8_t act)
{
    if (act == TFTR_ACT_RELU) return v > 0.0f ? v : 0.0f;
    if (act == TFTR_ACT_RELU6) return v > 0.0f ? (v < 6.0f ? v : 6.0f) : 0.0f;
    return v;
}

/* ---- forward ------------------------------------------------------------------------- */

static void conv_fwd(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const tftr_tensor_t *in = &t[0], *w = &t[1], *b = op->in[2] != TFTR_NONE16 ? &t[2] : 0;
    const bool dw = op->code == TFMB_OP_DEPTHWISE_CONV_2D;
    const int32_t h = in->d[1], wd = in->d[2], ic = in->d[3];
    const int32_t oh = out->d[1], ow = out->d[2], oc = out->d[3];
    const int32_t kh = w->d[1], kw = w->d[2];
    const int32_t sh = op->p[0], sw = op->p[1], dh = op->p[2], dwl = op->p[3], pt = op->p[4], pl = op->p[5];
    const int32_t mult = dw ? op->p[6] : 1;
    const float *x = tftr_val(c, in);
    float *y = tftr_val(c, out);
    for (int32_t o = 0; o < oc; ++o) {
        const float *row = weight_row(c, w, (uint32_t)o);
        const float bv = bias_value(c, b, (uint32_t)o);
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
                y[(oy * ow + ox) * oc + o] = activate(acc, op->act);
            }
    }
}

static void fc_fwd(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const tftr_tensor_t *w = &t[1], *b = op->in[2] != TFTR_NONE16 ? &t[2] : 0;
    const uint32_t nout = (uint32_t)w->d[0], depth = (uint32_t)w->d[1], rows = out->elems / nout;
    const float *x = tftr_val(c, &t[0]);
    float *y = tftr_val(c, out);
    for (uint32_t o = 0; o < nout; ++o) {
        const float *row = weight_row(c, w, o);
        const float bv = bias_value(c, b, o);
        for (uint32_t r = 0; r < rows; ++r) {
            const float *xr = x + r * depth;
            float acc = bv;
            for (uint32_t d = 0; d < depth; ++d) acc += xr[d] * row[d];
            y[r * nout + o] = activate(acc, op->act);
        }
    }
}

/* Window of output (oy, ox) clipped to the input: [y0, y1) x [x0, x1). */
static void pool_window(const tftr_op_t *op, const tftr_tensor_t *in, int32_t oy, int32_t ox, int32_t *y0, int32_t *y1,
                        int32_t *x0, int32_t *x1)
{
    const int32_t sy = oy * op->p[0] - op->p[4], sx = ox * op->p[1] - op->p[5];
    *y0 = sy < 0 ? 0 : sy;
    *x0 = sx < 0 ? 0 : sx;
    *y1 = sy + op->p[2] < in->d[1] ? sy + op->p[2] : in->d[1];
    *x1 = sx + op->p[3] < in->d[2] ? sx + op->p[3] : in->d[2];
}

static void pool_fwd(const tftr_op_t *op, const tftr_tensor_t *in, const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const bool is_max = op->code == TFMB_OP_MAX_POOL_2D;
    const int32_t wd = in->d[2], ch = in->d[3], oh = out->d[1], ow = out->d[2];
    const float *x = tftr_val(c, in);
    float *y = tftr_val(c, out);
    for (int32_t oy = 0; oy < oh; ++oy)
        for (int32_t ox = 0; ox < ow; ++ox) {
            int32_t y0, y1, x0, x1;
            pool_window(op, in, oy, ox, &y0, &y1, &x0, &x1);
            const int32_t count = (y1 - y0) * (x1 - x0);
            for (int32_t k = 0; k < ch; ++k) {
                float acc = is_max ? -INFINITY : 0.0f;
                for (int32_t iy = y0; iy < y1; ++iy)
                    for (int32_t ix = x0; ix < x1; ++ix) {
                        const float v = x[(iy * wd + ix) * ch + k];
                        if (is_max) {
                            if (v > acc) acc = v;
                        } else {
                            acc += v;
                        }
                    }
                if (!is_max) acc = count > 0 ? acc / (float)count : 0.0f;
                y[(oy * ow + ox) * ch + k] = activate(acc, op->act);
            }
        }
}

static void softmax_fwd(const tftr_op_t *op, const tftr_tensor_t *in, const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    float beta;
    memcpy(&beta, &op->p[0], sizeof(beta));
    const float *x = tftr_val(c, in);
    float *y = tftr_val(c, out);
    const uint32_t n = in->elems;
    float mx = x[0] * beta;
    for (uint32_t i = 1; i < n; ++i)
        if (x[i] * beta > mx) mx = x[i] * beta;
    float sum = 0.0f;
    for (uint32_t i = 0; i < n; ++i) {
        y[i] = expf(x[i] * beta - mx);
        sum += y[i];
    }
    for (uint32_t i = 0; i < n; ++i) y[i] /= sum;
}

void tftr_k_forward(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    switch (op->code) {
    case TFMB_OP_CONV_2D:
    case TFMB_OP_DEPTHWISE_CONV_2D: conv_fwd(op, t, out, c); break;
    case TFMB_OP_FULLY_CONNECTED: fc_fwd(op, t, out, c); break;
    case TFMB_OP_AVERAGE_POOL_2D:
    case TFMB_OP_MAX_POOL_2D: pool_fwd(op, &t[0], out, c); break;
    case TFMB_OP_SOFTMAX: softmax_fwd(op, &t[0], out, c); break;
    case TFMB_OP_ADD: {
        const float *a = tftr_val(c, &t[0]), *b = tftr_val(c, &t[1]);
        float *y = tftr_val(c, out);
        for (uint32_t i = 0; i < out->elems; ++i) y[i] = activate(a[i] + b[i], op->act);
        break;
    }
    case TFMB_OP_RESHAPE:
        if (t[0].voff != out->voff) memmove(tftr_val(c, out), tftr_val(c, &t[0]), 4u * out->elems);
        break;
    default: break;
    }
}

/* ---- backward ------------------------------------------------------------------------ */

/* gz = gy * act'(y), in place (the output gradient is not needed afterwards). */
static void act_backward(const tftr_op_t *op, const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    if (op->act == TFTR_ACT_NONE) return;
    const float *y = tftr_val(c, out);
    float *g = tftr_grd(c, out);
    for (uint32_t i = 0; i < out->elems; ++i) {
        const bool pass = op->act == TFTR_ACT_RELU ? y[i] > 0.0f : (y[i] > 0.0f && y[i] < 6.0f);
        if (!pass) g[i] = 0.0f;
    }
}

static void conv_bwd(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const tftr_tensor_t *in = &t[0], *w = &t[1], *b = op->in[2] != TFTR_NONE16 ? &t[2] : 0;
    const bool dw = op->code == TFMB_OP_DEPTHWISE_CONV_2D;
    const int32_t h = in->d[1], wd = in->d[2], ic = in->d[3];
    const int32_t oh = out->d[1], ow = out->d[2], oc = out->d[3];
    const int32_t kh = w->d[1], kw = w->d[2];
    const int32_t sh = op->p[0], sw = op->p[1], dh = op->p[2], dwl = op->p[3], pt = op->p[4], pl = op->p[5];
    const int32_t mult = dw ? op->p[6] : 1;
    const float *x = tftr_val(c, in);
    const float *gz = tftr_grd(c, out);
    float *dx = tftr_grd(c, in);
    for (int32_t o = 0; o < oc; ++o) {
        float *gw = grad_row(c, w, (uint32_t)o);
        float *gb = grad_row(c, b, (uint32_t)o);
        if (!gw && !gb && !dx) continue;
        const float *row = dx ? weight_row(c, w, (uint32_t)o) : 0;
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

static void fc_bwd(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const tftr_tensor_t *w = &t[1], *b = op->in[2] != TFTR_NONE16 ? &t[2] : 0;
    const uint32_t nout = (uint32_t)w->d[0], depth = (uint32_t)w->d[1], rows = out->elems / nout;
    const float *x = tftr_val(c, &t[0]);
    const float *gz = tftr_grd(c, out);
    float *dx = tftr_grd(c, &t[0]);
    for (uint32_t o = 0; o < nout; ++o) {
        float *gw = grad_row(c, w, o);
        float *gb = grad_row(c, b, o);
        if (!gw && !gb && !dx) continue;
        const float *row = dx ? weight_row(c, w, o) : 0;
        for (uint32_t r = 0; r < rows; ++r) {
            const float g = gz[r * nout + o];
            if (g == 0.0f) continue;
            if (gb) *gb += g;
            const float *xr = x + r * depth;
            if (gw)
                for (uint32_t d = 0; d < depth; ++d) gw[d] += g * xr[d];
            if (dx)
                for (uint32_t d = 0; d < depth; ++d) dx[r * depth + d] += g * row[d];
        }
    }
}

static void pool_bwd(const tftr_op_t *op, const tftr_tensor_t *in, const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    float *dx = tftr_grd(c, in);
    if (!dx) return;
    const bool is_max = op->code == TFMB_OP_MAX_POOL_2D;
    const int32_t wd = in->d[2], ch = in->d[3], oh = out->d[1], ow = out->d[2];
    const float *x = tftr_val(c, in);
    const float *gz = tftr_grd(c, out);
    for (int32_t oy = 0; oy < oh; ++oy)
        for (int32_t ox = 0; ox < ow; ++ox) {
            int32_t y0, y1, x0, x1;
            pool_window(op, in, oy, ox, &y0, &y1, &x0, &x1);
            const int32_t count = (y1 - y0) * (x1 - x0);
            if (count <= 0) continue;
            for (int32_t k = 0; k < ch; ++k) {
                const float g = gz[(oy * ow + ox) * ch + k];
                if (is_max) {
                    /* the first maximum in window order, as the forward pass (and numpy's argmax) */
                    int32_t best = (y0 * wd + x0) * ch + k;
                    for (int32_t iy = y0; iy < y1; ++iy)
                        for (int32_t ix = x0; ix < x1; ++ix) {
                            const int32_t at = (iy * wd + ix) * ch + k;
                            if (x[at] > x[best]) best = at;
                        }
                    dx[best] += g;
                } else {
                    const float share = g / (float)count;
                    for (int32_t iy = y0; iy < y1; ++iy)
                        for (int32_t ix = x0; ix < x1; ++ix) dx[(iy * wd + ix) * ch + k] += share;
                }
            }
        }
}

void tftr_k_backward(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    act_backward(op, out, c);
    switch (op->code) {
    case TFMB_OP_CONV_2D:
    case TFMB_OP_DEPTHWISE_CONV_2D: conv_bwd(op, t, out, c); break;
    case TFMB_OP_FULLY_CONNECTED: fc_bwd(op, t, out, c); break;
    case TFMB_OP_AVERAGE_POOL_2D:
    case TFMB_OP_MAX_POOL_2D: pool_bwd(op, &t[0], out, c); break;
    case TFMB_OP_ADD: {
        const float *gz = tftr_grd(c, out);
        for (int k = 0; k < 2; ++k) {
            float *dx = tftr_grd(c, &t[k]);
            if (dx)
                for (uint32_t i = 0; i < out->elems; ++i) dx[i] += gz[i];
        }
        break;
    }
    case TFMB_OP_RESHAPE: {
        float *dx = tftr_grd(c, &t[0]);
        const float *gy = tftr_grd(c, out);
        if (dx && t[0].goff != out->goff)
            for (uint32_t i = 0; i < out->elems; ++i) dx[i] += gy[i];
        break;
    }
    default: break;
    }
}
