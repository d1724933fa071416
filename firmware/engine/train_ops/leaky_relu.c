/*
 * Training LEAKY_RELU: y = x for x > 0, alpha x elsewhere; the gradient is scaled alike.
 *
 * Params: p0 alpha (float32 bits).
 */
#include <math.h>

#include "../tftr_internal.h"

static float alpha_of(const tftr_op_t *op)
{
    float alpha;
    memcpy(&alpha, &op->p[0], sizeof(alpha));
    return alpha;
}

static const char *leaky_relu_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                       const tftr_tensor_t *out)
{
    (void)p;
    if (t[0].elems != out->elems) return "leaky relu shapes differ at op";
    if (!isfinite(alpha_of(op))) return "leaky relu alpha bad at op";
    if (!tftr_params_zero_from(op, 1)) return "unused parameter set at op";
    return 0;
}

static void leaky_relu_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                               const tftr_ctx_t *c)
{
    const float alpha = alpha_of(op);
    const float *x = tftr_val(c, &t[0]);
    float *y = tftr_val(c, out);
    for (uint32_t i = 0; i < out->elems; ++i) y[i] = x[i] > 0.0f ? x[i] : x[i] * alpha;
}

static void leaky_relu_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                                const tftr_ctx_t *c)
{
    float *dx = tftr_grd(c, &t[0]);
    if (!dx) return;
    const float alpha = alpha_of(op);
    const float *x = tftr_val(c, &t[0]), *gy = tftr_grd(c, out);
    for (uint32_t i = 0; i < out->elems; ++i) dx[i] += x[i] > 0.0f ? gy[i] : gy[i] * alpha;
}

static const tftr_op_entry_t tftr_op_leaky_relu = {
    .code = TFMB_OP_LEAKY_RELU,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = leaky_relu_validate,
    .forward = leaky_relu_forward,
    .backward = leaky_relu_backward,
};
TFTR_REGISTER_OP(tftr_op_leaky_relu);
