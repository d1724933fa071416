/*
 * Training MAX_POOL_2D and AVERAGE_POOL_2D: float32 forward and backward (NHWC, batch 1). The
 * window is clipped to the input; the average divides by the clipped window's size; the max's
 * gradient goes to the first maximum in window order (as numpy's argmax).
 *
 * Params: p0/p1 stride h/w, p2/p3 window h/w, p4/p5 padding top/left.
 */
#include <math.h>

#include "../tftr_internal.h"

static const char *pool_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                 const tftr_tensor_t *out)
{
    (void)p;
    if (!tftr_batch1_4d(&t[0]) || !tftr_batch1_4d(out) || t[0].d[3] != out->d[3])
        return "pool shape bad at op";
    if (!tftr_in_range(op->p[0], 1, TFMB_MAX_STRIDE) || !tftr_in_range(op->p[1], 1, TFMB_MAX_STRIDE))
        return "pool stride out of range at op";
    if (!tftr_in_range(op->p[2], 1, TFMB_MAX_DIM) || !tftr_in_range(op->p[3], 1, TFMB_MAX_DIM) ||
        (int64_t)op->p[2] * op->p[3] > (1 << 20))
        return "pool window out of range at op";
    if (!tftr_in_range(op->p[4], 0, TFMB_MAX_DIM) || !tftr_in_range(op->p[5], 0, TFMB_MAX_DIM))
        return "padding out of range at op";
    if (!tftr_params_zero_from(op, 6)) return "unused parameter set at op";
    return 0;
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

/* Both entries' kernels serve MAX_POOL_2D and AVERAGE_POOL_2D: the op's code selects the
 * reduction (a test per element either way; the kernels are not specialised per op). */
static bool is_max_pool(const tftr_op_t *op) { return op->code == TFMB_OP_MAX_POOL_2D; }

static void pool_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const tftr_tensor_t *in = &t[0];
    const bool is_max = is_max_pool(op);
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
                y[(oy * ow + ox) * ch + k] = tftr_activate(acc, op->act);
            }
        }
}

static void pool_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const tftr_tensor_t *in = &t[0];
    const bool is_max = is_max_pool(op);
    float *dx = tftr_grd(c, in);
    if (!dx) return;
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

static const tftr_op_entry_t tftr_op_max_pool_2d = {
    .code = TFMB_OP_MAX_POOL_2D,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = true,
    .in_place = false,
    .weighted = false,
    .validate = pool_validate,
    .forward = pool_forward,
    .backward = pool_backward,
};
TFTR_REGISTER_OP(tftr_op_max_pool_2d);

static const tftr_op_entry_t tftr_op_average_pool_2d = {
    .code = TFMB_OP_AVERAGE_POOL_2D,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = true,
    .in_place = false,
    .weighted = false,
    .validate = pool_validate,
    .forward = pool_forward,
    .backward = pool_backward,
};
TFTR_REGISTER_OP(tftr_op_average_pool_2d);
