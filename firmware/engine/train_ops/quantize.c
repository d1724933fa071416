/*
 * Training QUANTIZE (int8 -> int8 requantization): in float32 both tensors hold the same real
 * values, so the forward is a copy and the gradient passes unchanged. No params.
 */
#include "../tftr_internal.h"

static const char *quantize_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                     const tftr_tensor_t *out)
{
    (void)p;
    if (t[0].elems != out->elems) return "quantize sizes differ at op";
    if (!tftr_params_zero_from(op, 0)) return "unused parameter set at op";
    return 0;
}

static void quantize_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                             const tftr_ctx_t *c)
{
    (void)op;
    memcpy(tftr_val(c, out), tftr_val(c, &t[0]), 4u * out->elems);
}

static void quantize_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                              const tftr_ctx_t *c)
{
    (void)op;
    float *dx = tftr_grd(c, &t[0]);
    const float *gy = tftr_grd(c, out);
    if (dx)
        for (uint32_t i = 0; i < out->elems; ++i) dx[i] += gy[i];
}

static const tftr_op_entry_t tftr_op_quantize = {
    .code = TFMB_OP_QUANTIZE,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = quantize_validate,
    .forward = quantize_forward,
    .backward = quantize_backward,
};
TFTR_REGISTER_OP(tftr_op_quantize);
