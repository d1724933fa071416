/*
 * Training TANH: y = tanh(x); backward dx += dy * (1 - y * y) from the saved output. No params.
 */
#include <math.h>

#include "../tftr_internal.h"

static const char *tanh_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                     const tftr_tensor_t *out)
{
    (void)p;
    if (t[0].elems != out->elems) return "tanh shapes differ at op";
    if (!tftr_params_zero_from(op, 0)) return "unused parameter set at op";
    return 0;
}

static void tanh_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                             const tftr_ctx_t *c)
{
    (void)op;
    const float *x = tftr_val(c, &t[0]);
    float *y = tftr_val(c, out);
    for (uint32_t i = 0; i < out->elems; ++i) y[i] = tanhf(x[i]);
}

static void tanh_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                              const tftr_ctx_t *c)
{
    (void)op;
    float *dx = tftr_grd(c, &t[0]);
    if (!dx) return;
    const float *y = tftr_val(c, out), *gy = tftr_grd(c, out);
    for (uint32_t i = 0; i < out->elems; ++i) dx[i] += gy[i] * (1.0f - y[i] * y[i]);
}

static const tftr_op_entry_t tftr_op_tanh = {
    .code = TFMB_OP_TANH,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = tanh_validate,
    .forward = tanh_forward,
    .backward = tanh_backward,
};
TFTR_REGISTER_OP(tftr_op_tanh);
