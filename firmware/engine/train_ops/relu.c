/*
 * Training RELU (standalone): y = max(x, 0); the gradient passes where x > 0. No params.
 */
#include "../tftr_internal.h"

static const char *relu_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                 const tftr_tensor_t *out)
{
    (void)p;
    if (t[0].elems != out->elems) return "relu shapes differ at op";
    if (!tftr_params_zero_from(op, 0)) return "unused parameter set at op";
    return 0;
}

static void relu_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    (void)op;
    const float *x = tftr_val(c, &t[0]);
    float *y = tftr_val(c, out);
    for (uint32_t i = 0; i < out->elems; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static void relu_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    (void)op;
    float *dx = tftr_grd(c, &t[0]);
    if (!dx) return;
    const float *x = tftr_val(c, &t[0]), *gy = tftr_grd(c, out);
    for (uint32_t i = 0; i < out->elems; ++i)
        if (x[i] > 0.0f) dx[i] += gy[i];
}

static const tftr_op_entry_t tftr_op_relu = {
    .code = TFMB_OP_RELU,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = relu_validate,
    .forward = relu_forward,
    .backward = relu_backward,
};
TFTR_REGISTER_OP(tftr_op_relu);
