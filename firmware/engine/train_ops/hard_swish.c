/*
 * Training HARD_SWISH: y = x * relu6(x + 3) / 6; dy/dx = 0 below -3, 1 above 3, (2x + 3) / 6
 * between. No params.
 */
#include "../tftr_internal.h"

static const char *hard_swish_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                       const tftr_tensor_t *out)
{
    (void)p;
    if (t[0].elems != out->elems) return "hard swish shapes differ at op";
    if (!tftr_params_zero_from(op, 0)) return "unused parameter set at op";
    return 0;
}

static void hard_swish_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                               const tftr_ctx_t *c)
{
    (void)op;
    const float *x = tftr_val(c, &t[0]);
    float *y = tftr_val(c, out);
    for (uint32_t i = 0; i < out->elems; ++i) {
        const float s = x[i] + 3.0f;
        const float r = s > 0.0f ? (s < 6.0f ? s : 6.0f) : 0.0f;
        y[i] = x[i] * r / 6.0f;
    }
}

static void hard_swish_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                                const tftr_ctx_t *c)
{
    (void)op;
    float *dx = tftr_grd(c, &t[0]);
    if (!dx) return;
    const float *x = tftr_val(c, &t[0]), *gy = tftr_grd(c, out);
    for (uint32_t i = 0; i < out->elems; ++i) {
        const float d = x[i] < -3.0f ? 0.0f : (x[i] > 3.0f ? 1.0f : (2.0f * x[i] + 3.0f) / 6.0f);
        dx[i] += gy[i] * d;
    }
}

static const tftr_op_entry_t tftr_op_hard_swish = {
    .code = TFMB_OP_HARD_SWISH,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = hard_swish_validate,
    .forward = hard_swish_forward,
    .backward = hard_swish_backward,
};
TFTR_REGISTER_OP(tftr_op_hard_swish);
