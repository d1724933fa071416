/*
 * Training MEAN: the float32 average over the masked axes (at most two, never the batch axis);
 * backward spreads each output gradient evenly over the values it averaged.
 *
 * Params: p0 reduced-axis mask (bit k: dim k of the 4-D record, k >= 1).
 */
#include "../tftr_internal.h"

static const char *mean_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                 const tftr_tensor_t *out)
{
    (void)p;
    const int32_t mask = op->p[0];
    if (!tftr_in_range(mask, 2, 14) || (mask & 1)) return "mean axis mask bad at op";
    uint64_t count = 1;
    for (int k = 0; k < 4; ++k)
        if (mask >> k & 1) count *= (uint64_t)t[0].d[k];
    if ((uint64_t)out->elems * count != t[0].elems) return "mean shape bad at op";
    if (!tftr_params_zero_from(op, 1)) return "unused parameter set at op";
    return 0;
}

/* The loops forward and backward share: every output position o, every input index i it
 * averages (forward: y[o] += x[i]; backward: dx[i] += g[o]). */
static inline __attribute__((always_inline)) void mean_walk(const tftr_op_t *op, const tftr_tensor_t *in,
                                                            float *a, float *b, bool forward)
{
    const int32_t *d = in->d;
    const int32_t mask = op->p[0];
    int32_t keep[4], red[4];
    uint32_t count = 1;
    for (int k = 0; k < 4; ++k) {
        keep[k] = (mask >> k & 1) ? 1 : d[k];
        red[k] = (mask >> k & 1) ? d[k] : 1;
        count *= (uint32_t)red[k];
    }
    const float inv = 1.0f / (float)count;
    uint32_t o = 0;
    for (int32_t a0 = 0; a0 < keep[0]; ++a0)
        for (int32_t a1 = 0; a1 < keep[1]; ++a1)
            for (int32_t a2 = 0; a2 < keep[2]; ++a2)
                for (int32_t a3 = 0; a3 < keep[3]; ++a3, ++o) {
                    float acc = 0.0f;
                    const float g = forward ? 0.0f : b[o] * inv;
                    for (int32_t r0 = 0; r0 < red[0]; ++r0)
                        for (int32_t r1 = 0; r1 < red[1]; ++r1)
                            for (int32_t r2 = 0; r2 < red[2]; ++r2)
                                for (int32_t r3 = 0; r3 < red[3]; ++r3) {
                                    const uint32_t i = (((uint32_t)(a0 + r0) * (uint32_t)d[1] + (uint32_t)(a1 + r1)) *
                                                            (uint32_t)d[2] + (uint32_t)(a2 + r2)) * (uint32_t)d[3] +
                                                       (uint32_t)(a3 + r3);
                                    if (forward)
                                        acc += a[i];
                                    else
                                        a[i] += g;
                                }
                    if (forward) b[o] = acc / (float)count;
                }
}

static void mean_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    mean_walk(op, &t[0], tftr_val(c, &t[0]), tftr_val(c, out), true);
}

static void mean_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                          const tftr_ctx_t *c)
{
    float *dx = tftr_grd(c, &t[0]);
    if (dx) mean_walk(op, &t[0], dx, tftr_grd(c, out), false);
}

static const tftr_op_entry_t tftr_op_mean = {
    .code = TFMB_OP_MEAN,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = mean_validate,
    .forward = mean_forward,
    .backward = mean_backward,
};
TFTR_REGISTER_OP(tftr_op_mean);
