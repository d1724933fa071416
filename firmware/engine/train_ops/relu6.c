/*
 * Training RELU6 (standalone): y = min(max(x, 0), 6); the gradient passes where 0 < x < 6. No params.
 */
#include "../tftr_internal.h"

static const char *relu6_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                 const tftr_tensor_t *out)
{
    (void)p;
    if (t[0].elems != out->elems) return "relu6 shapes differ at op";
    if (!tftr_params_zero_from(op, 0)) return "unused parameter set at op";
    return 0;
}

static void relu6_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    (void)op;
    const float *x = tftr_val(c, &t[0]);
    float *y = tftr_val(c, out);
    for (uint32_t i = 0; i < out->elems; ++i) y[i] = x[i] > 0.0f ? (x[i] < 6.0f ? x[i] : 6.0f) : 0.0f;
}

static void relu6_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    (void)op;
    float *dx = tftr_grd(c, &t[0]);
    if (!dx) return;
    const float *x = tftr_val(c, &t[0]), *gy = tftr_grd(c, out);
    for (uint32_t i = 0; i < out->elems; ++i)
        if (x[i] > 0.0f && x[i] < 6.0f) dx[i] += gy[i];
}

static const tftr_op_entry_t tftr_op_relu6 = {
    .code = TFMB_OP_RELU6,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = relu6_validate,
    .forward = relu6_forward,
    .backward = relu6_backward,
};
TFTR_REGISTER_OP(tftr_op_relu6);
