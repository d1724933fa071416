/*
 * Training ADD: float32 elementwise sum of two activations of equal size (no broadcasting);
 * the output gradient flows unchanged to both inputs. No params.
 */
#include "../tftr_internal.h"

static const char *add_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                const tftr_tensor_t *out)
{
    (void)p;
    if (!tftr_is_act(&t[1])) return "input/output not an activation at op";
    if (t[0].elems != out->elems || t[1].elems != out->elems)
        return "add shapes differ (no broadcast) at op";
    if (!tftr_params_zero_from(op, 0)) return "unused parameter set at op";
    return 0;
}

static void add_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const float *a = tftr_val(c, &t[0]), *b = tftr_val(c, &t[1]);
    float *y = tftr_val(c, out);
    for (uint32_t i = 0; i < out->elems; ++i) y[i] = tftr_activate(a[i] + b[i], op->act);
}

static void add_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    (void)op;
    const float *gz = tftr_grd(c, out);
    for (int k = 0; k < 2; ++k) {
        float *dx = tftr_grd(c, &t[k]);
        if (dx)
            for (uint32_t i = 0; i < out->elems; ++i) dx[i] += gz[i];
    }
}

static const tftr_op_entry_t tftr_op_add = {
    .code = TFMB_OP_ADD,
    .inputs = 2,
    .required = 2,
    .activations = 2, /* both inputs are activations (validate checks the second one's kind) */
    .fused_activation = true,
    .in_place = false,
    .weighted = false,
    .validate = add_validate,
    .forward = add_forward,
    .backward = add_backward,
};
TFTR_REGISTER_OP(tftr_op_add);
