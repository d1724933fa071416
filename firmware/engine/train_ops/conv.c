/*
 * Training CONV_2D and DEPTHWISE_CONV_2D: float32 forward and backward (NHWC, batch 1).
 *
 * Params: p0/p1 stride h/w, p2/p3 dilation h/w, p4/p5 padding top/left, p6 depth multiplier
 * (DEPTHWISE_CONV_2D only). Filter channel axis 0 (CONV_2D: OHWI) or 3 (DEPTHWISE: 1HWO).
 */
#include "../tftr_fpu.h"
#include "../tftr_internal.h"

/* Both entries' functions serve CONV_2D and DEPTHWISE_CONV_2D: the op's code selects the filter
 * layout (a test per tap either way; the kernels are not specialised per op). */
static bool is_depthwise(const tftr_op_t *op) { return op->code == TFMB_OP_DEPTHWISE_CONV_2D; }

static const char *conv_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                 const tftr_tensor_t *out)
{
    (void)p;
    const bool dw = is_depthwise(op);
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

/* What the forward and backward passes read from the op and its tensors. */
typedef struct {
    const tftr_tensor_t *in, *w, *b;
    int32_t h, wd, ic, oh, ow, oc, kh, kw;
    int32_t sh, sw, dh, dwl, pt, pl;
    int32_t mult; /* output channels per input channel: the depth multiplier, 1 for CONV_2D */
} conv_args_t;

static inline conv_args_t conv_args(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, bool dw)
{
    return (conv_args_t){
        .in = &t[0], .w = &t[1], .b = op->in[2] != TFTR_NONE16 ? &t[2] : 0,
        .h = t[0].d[1], .wd = t[0].d[2], .ic = t[0].d[3], .oh = out->d[1], .ow = out->d[2], .oc = out->d[3],
        .kh = t[1].d[1], .kw = t[1].d[2],
        .sh = op->p[0], .sw = op->p[1], .dh = op->p[2], .dwl = op->p[3], .pt = op->p[4], .pl = op->p[5],
        .mult = dw ? op->p[6] : 1,
    };
}

/* Taps of a CONV_2D output pixel per call of the dot product and axpy kernels: with dilation 1
 * along the width, the taps kx0..kx1 of one filter row are (kx1 - kx0) * ic floats that follow
 * each other in the input and in the weight row alike, in the order of per-tap loops (kx, then
 * the input channel), so the sums round exactly as those loops do; else one tap per call. */
static inline int32_t conv_taps_per_run(const conv_args_t *a, int32_t kx0, int32_t kx1)
{
    return a->dwl == 1 ? kx1 - kx0 : 1;
}

/* tfmb_taps_inside without its divisions for a window wholly inside the input (most output
 * positions): the same range either way. */
static inline void conv_taps(int32_t start, int32_t step, int32_t taps, int32_t size, int32_t *first, int32_t *end)
{
    if (start >= 0 && start + (taps - 1) * step < size) {
        *first = 0;
        *end = taps;
    } else {
        tfmb_taps_inside(start, step, taps, size, first, end);
    }
}

/* Output columns [*lo, *hi) whose filter taps all fall inside the input width (every column
 * of a VALID conv; all but the borders of a SAME one). */
static void conv_columns_inside(const conv_args_t *a, int32_t *lo, int32_t *hi)
{
    const int32_t room = a->wd - (a->kw - 1) * a->dwl + a->pl; /* ox * sw < room */
    int32_t h = room > 0 ? (room + a->sw - 1) / a->sw : 0, l = (a->pl + a->sw - 1) / a->sw;
    if (h > a->ow) h = a->ow;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* One CONV_2D output value: bias + its window's taps (kx0..kx1 of rows ky0..ky1), xo the input
 * offset of tap (ky0, kx0), wo the weight row's. */
static inline float conv_pixel(const conv_args_t *a, const float *x, const float *row, float acc, int32_t xo,
                               int32_t wo, int32_t ky0, int32_t ky1, int32_t kx0, int32_t kx1)
{
    const int32_t ic = a->ic, xrow_step = a->dh * a->wd * ic, wrow_step = a->kw * ic, xtap = a->dwl * ic;
    const int32_t taps = conv_taps_per_run(a, kx0, kx1);
    const uint32_t run = (uint32_t)(taps * ic);
    for (int32_t ky = ky0; ky < ky1; ++ky, xo += xrow_step, wo += wrow_step)
        for (int32_t kx = kx0, xt = xo, wt = wo; kx < kx1; kx += taps, xt += taps * xtap, wt += taps * ic)
            acc = tftr_dot(acc, x + xt, row + wt, run);
    return acc;
}

/* CONV_2D output channel o: one dot product per filter row (per tap when the width is dilated);
 * the columns inside the input take the whole rows without the per-column window arithmetic. */
static void conv_forward_dense(const conv_args_t *a, uint8_t act, const float *x, float *yo, const float *row, float bv)
{
    const int32_t ic = a->ic, xtap = a->dwl * ic, oc = a->oc;
    int32_t lo, hi;
    conv_columns_inside(a, &lo, &hi);
    for (int32_t oy = 0; oy < a->oh; ++oy) {
        const int32_t iy0 = oy * a->sh - a->pt;
        int32_t ky0, ky1;
        conv_taps(iy0, a->dh, a->kh, a->h, &ky0, &ky1);
        const int32_t xrow0 = (iy0 + ky0 * a->dh) * a->wd * ic, w0 = ky0 * a->kw * ic;
        for (int32_t ox = 0; ox < a->ow; ++ox, yo += oc) {
            if (ox == lo && a->dwl == 1 && hi > lo) {
                /* the inside columns: rows of kw * ic floats from a start moving by sw * ic */
                const uint32_t run = (uint32_t)(a->kw * ic);
                const int32_t xrow_step = a->dh * a->wd * ic, nrows = ky1 - ky0;
                const float *xs = x + xrow0 + (lo * a->sw - a->pl) * ic;
                const int32_t xnext = a->sw * ic; /* to the next column's window */
                for (; ox + 1 < hi; ox += 2, yo += 2 * oc, xs += 2 * xnext) { /* two columns per weight load */
                    float acc0 = bv, acc1 = bv;
                    const float *xr = xs, *wr = row + w0;
                    for (int32_t r = 0; r < nrows; ++r, xr += xrow_step, wr += run)
                        tftr_dot2(&acc0, &acc1, xr, xr + xnext, wr, run);
                    yo[0] = tftr_activate(acc0, act);
                    yo[oc] = tftr_activate(acc1, act);
                }
                for (; ox < hi; ++ox, yo += oc, xs += xnext) {
                    float acc = bv;
                    const float *xr = xs, *wr = row + w0;
                    for (int32_t r = 0; r < nrows; ++r, xr += xrow_step, wr += run) acc = tftr_dot(acc, xr, wr, run);
                    *yo = tftr_activate(acc, act);
                }
                if (ox == a->ow) break;
            }
            const int32_t ix0 = ox * a->sw - a->pl;
            int32_t kx0, kx1;
            conv_taps(ix0, a->dwl, a->kw, a->wd, &kx0, &kx1);
            float acc = bv;
            if (kx1 > kx0) acc = conv_pixel(a, x, row, acc, xrow0 + ix0 * ic + kx0 * xtap, w0 + kx0 * ic, ky0, ky1, kx0, kx1);
            *yo = tftr_activate(acc, act);
        }
    }
}

/* DEPTHWISE_CONV_2D output channel o of input channel ci: a strided dot product per pixel. */
static void conv_forward_depthwise(const conv_args_t *a, uint8_t act, const float *x, float *yo, const float *row,
                                   float bv, int32_t ci)
{
    const int32_t ic = a->ic, xtap = a->dwl * ic;
    for (int32_t oy = 0; oy < a->oh; ++oy) {
        const int32_t iy0 = oy * a->sh - a->pt;
        int32_t ky0, ky1;
        conv_taps(iy0, a->dh, a->kh, a->h, &ky0, &ky1);
        for (int32_t ox = 0; ox < a->ow; ++ox, yo += a->oc) {
            const int32_t ix0 = ox * a->sw - a->pl;
            int32_t kx0, kx1;
            conv_taps(ix0, a->dwl, a->kw, a->wd, &kx0, &kx1);
            float acc = bv;
            for (int32_t ky = ky0; ky < ky1; ++ky) {
                const float *xp = x + ((iy0 + ky * a->dh) * a->wd + ix0 + kx0 * a->dwl) * ic + ci;
                const float *wp = row + ky * a->kw + kx0;
                for (int32_t kx = kx0; kx < kx1; ++kx, xp += xtap) acc = tftr_mla(acc, *xp, *wp++);
            }
            *yo = tftr_activate(acc, act);
        }
    }
}

static void conv_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const bool dw = is_depthwise(op);
    const conv_args_t a = conv_args(op, t, out, dw);
    const float *x = tftr_val(c, a.in);
    float *y = tftr_val(c, out);
    for (int32_t o = 0; o < a.oc; ++o) {
        const float *row = tftr_weight_row(c, a.w, (uint32_t)o);
        const float bv = tftr_bias_value(c, a.b, (uint32_t)o);
        if (dw)
            conv_forward_depthwise(&a, op->act, x, y + o, row, bv, o / a.mult);
        else
            conv_forward_dense(&a, op->act, x, y + o, row, bv);
    }
}

/* Output channel o's share of the backward pass: its bias gradient gb, weight gradient row gw
 * and the input gradient dx (each NULL when not wanted; row = its weights when dx is wanted). */
typedef struct {
    const float *x, *go, *row;
    float *gw, *gb, *dx;
    int32_t ci;
} conv_grads_t;

/* The weight and input gradients of one CONV_2D output value's window (g its gradient), as
 * conv_pixel walks it. */
static inline void conv_pixel_grads(const conv_args_t *a, const conv_grads_t *q, float g, int32_t xo, int32_t wo,
                                    int32_t ky0, int32_t ky1, int32_t kx0, int32_t kx1)
{
    const int32_t ic = a->ic, xrow_step = a->dh * a->wd * ic, wrow_step = a->kw * ic, xtap = a->dwl * ic;
    const int32_t taps = conv_taps_per_run(a, kx0, kx1);
    const uint32_t run = (uint32_t)(taps * ic);
    for (int32_t ky = ky0; ky < ky1; ++ky, xo += xrow_step, wo += wrow_step)
        for (int32_t kx = kx0, xt = xo, wt = wo; kx < kx1; kx += taps, xt += taps * xtap, wt += taps * ic) {
            if (q->gw) tftr_axpy(q->gw + wt, g, q->x + xt, run);
            if (q->dx) tftr_axpy(q->dx + xt, g, q->row + wt, run);
        }
}

static void conv_backward_dense(const conv_args_t *a, const conv_grads_t *q)
{
    const int32_t ic = a->ic, xtap = a->dwl * ic, oc = a->oc;
    const float *go = q->go, *x = q->x, *row = q->row;
    float *gb = q->gb, *gw = q->gw, *dx = q->dx;
    const bool taps_wanted = gw || dx;
    int32_t lo, hi;
    conv_columns_inside(a, &lo, &hi);
    if (a->dwl != 1) lo = hi = a->ow; /* no whole-row runs: every column the general way */
    for (int32_t oy = 0; oy < a->oh; ++oy) {
        const int32_t iy0 = oy * a->sh - a->pt;
        int32_t ky0, ky1;
        conv_taps(iy0, a->dh, a->kh, a->h, &ky0, &ky1);
        const int32_t xrow0 = (iy0 + ky0 * a->dh) * a->wd * ic, w0 = ky0 * a->kw * ic;
        for (int32_t ox = 0; ox < a->ow; ++ox, go += oc) {
            const float g = *go;
            if (g == 0.0f) continue;
            if (gb) *gb += g;
            if (!taps_wanted) continue;
            const int32_t ix0 = ox * a->sw - a->pl;
            if (ox >= lo && ox < hi) { /* inside: whole rows of kw * ic floats */
                const uint32_t run = (uint32_t)(a->kw * ic);
                const int32_t xrow_step = a->dh * a->wd * ic, xnext = a->sw * ic;
                const float g1 = gw && ox + 1 < hi ? go[oc] : 0.0f;
                int32_t xo = xrow0 + ix0 * ic, wo = w0;
                if (g1 != 0.0f) {
                    /* the next column too: its weight gradient in the same pass over gw (each
                     * element gets this column's product, then the next one's, as before); its
                     * input gradient after this column's, row by row (the rows are disjoint) */
                    if (gb) *gb += g1;
                    for (int32_t ky = ky0; ky < ky1; ++ky, xo += xrow_step, wo += (int32_t)run) {
                        tftr_axpy2(gw + wo, g, x + xo, g1, x + xo + xnext, run);
                        if (dx) {
                            tftr_axpy(dx + xo, g, row + wo, run);
                            tftr_axpy(dx + xo + xnext, g1, row + wo, run);
                        }
                    }
                    ++ox;
                    go += oc;
                    continue;
                }
                for (int32_t ky = ky0; ky < ky1; ++ky, xo += xrow_step, wo += (int32_t)run) {
                    if (gw) tftr_axpy(gw + wo, g, x + xo, run);
                    if (dx) tftr_axpy(dx + xo, g, row + wo, run);
                }
                continue;
            }
            int32_t kx0, kx1;
            conv_taps(ix0, a->dwl, a->kw, a->wd, &kx0, &kx1);
            if (kx1 > kx0) conv_pixel_grads(a, q, g, xrow0 + ix0 * ic + kx0 * xtap, w0 + kx0 * ic, ky0, ky1, kx0, kx1);
        }
    }
}

static void conv_backward_depthwise(const conv_args_t *a, const conv_grads_t *q)
{
    const int32_t ic = a->ic, xtap = a->dwl * ic;
    const float *go = q->go, *x = q->x, *row = q->row;
    float *gw = q->gw, *gb = q->gb, *dx = q->dx;
    for (int32_t oy = 0; oy < a->oh; ++oy) {
        const int32_t iy0 = oy * a->sh - a->pt;
        int32_t ky0, ky1;
        conv_taps(iy0, a->dh, a->kh, a->h, &ky0, &ky1);
        for (int32_t ox = 0; ox < a->ow; ++ox, go += a->oc) {
            const float g = *go;
            if (g == 0.0f) continue;
            if (gb) *gb += g;
            if (!gw && !dx) continue;
            const int32_t ix0 = ox * a->sw - a->pl;
            int32_t kx0, kx1;
            conv_taps(ix0, a->dwl, a->kw, a->wd, &kx0, &kx1);
            for (int32_t ky = ky0; ky < ky1; ++ky) {
                int32_t at = ((iy0 + ky * a->dh) * a->wd + ix0 + kx0 * a->dwl) * ic + q->ci;
                for (int32_t k = ky * a->kw + kx0, kend = ky * a->kw + kx1; k < kend; ++k, at += xtap) {
                    if (gw) gw[k] = tftr_mla(gw[k], g, x[at]);
                    if (dx) dx[at] = tftr_mla(dx[at], g, row[k]);
                }
            }
        }
    }
}

static void conv_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const bool dw = is_depthwise(op);
    const conv_args_t a = conv_args(op, t, out, dw);
    const float *gz = tftr_grd(c, out);
    float *dx = tftr_grd(c, a.in);
    for (int32_t o = 0; o < a.oc; ++o) {
        conv_grads_t q = {
            .x = tftr_val(c, a.in), .go = gz + o, .dx = dx, .ci = o / a.mult,
            .gw = tftr_grad_row(c, a.w, (uint32_t)o), .gb = tftr_grad_row(c, a.b, (uint32_t)o),
        };
        if (!q.gw && !q.gb && !dx) continue;
        q.row = dx ? tftr_weight_row(c, a.w, (uint32_t)o) : 0;
        if (dw)
            conv_backward_depthwise(&a, &q);
        else
            conv_backward_dense(&a, &q);
    }
}

static const tftr_op_entry_t tftr_op_conv_2d = {
    .code = TFMB_OP_CONV_2D,
    .inputs = 3, /* input, filter, optional bias */
    .required = 2,
    .activations = 1,
    .fused_activation = true,
    .in_place = false,
    .weighted = true,
    .validate = conv_validate,
    .forward = conv_forward,
    .backward = conv_backward,
};
TFTR_REGISTER_OP(tftr_op_conv_2d);

static const tftr_op_entry_t tftr_op_depthwise_conv_2d = {
    .code = TFMB_OP_DEPTHWISE_CONV_2D,
    .inputs = 3,
    .required = 2,
    .activations = 1,
    .fused_activation = true,
    .in_place = false,
    .weighted = true,
    .validate = conv_validate,
    .forward = conv_forward,
    .backward = conv_backward,
};
TFTR_REGISTER_OP(tftr_op_depthwise_conv_2d);
