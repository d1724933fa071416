/*
 * Training RESHAPE, SQUEEZE and EXPAND_DIMS: a copy of the values (and of the gradient back), skipped when the planner
 * gave input and output the same buffers. No params, no fused activation.
 */
#include "../tftr_internal.h"

static const char *reshape_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                    const tftr_tensor_t *out)
{
    (void)p;
    if (t[0].elems != out->elems) return "reshape size mismatch at op";
    if (!tftr_params_zero_from(op, 0)) return "unused parameter set at op";
    return 0;
}

static void reshape_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                            const tftr_ctx_t *c)
{
    (void)op;
    if (t[0].voff != out->voff) memmove(tftr_val(c, out), tftr_val(c, &t[0]), 4u * out->elems);
}

static void reshape_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                             const tftr_ctx_t *c)
{
    (void)op;
    float *dx = tftr_grd(c, &t[0]);
    const float *gy = tftr_grd(c, out);
    if (dx && t[0].goff != out->goff)
        for (uint32_t i = 0; i < out->elems; ++i) dx[i] += gy[i];
}

static const tftr_op_entry_t tftr_op_reshape = {
    .code = TFMB_OP_RESHAPE,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = true,
    .weighted = false,
    .validate = reshape_validate,
    .forward = reshape_forward,
    .backward = reshape_backward,
};
TFTR_REGISTER_OP(tftr_op_reshape);

static const tftr_op_entry_t tftr_op_squeeze = {
    .code = TFMB_OP_SQUEEZE,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = true,
    .weighted = false,
    .validate = reshape_validate,
    .forward = reshape_forward,
    .backward = reshape_backward,
};
TFTR_REGISTER_OP(tftr_op_squeeze);

static const tftr_op_entry_t tftr_op_expand_dims = {
    .code = TFMB_OP_EXPAND_DIMS,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = true,
    .weighted = false,
    .validate = reshape_validate,
    .forward = reshape_forward,
    .backward = reshape_backward,
};
TFTR_REGISTER_OP(tftr_op_expand_dims);
