/*
 * RESHAPE, SQUEEZE and EXPAND_DIMS: a copy of the bytes; the host planner normally aliases
 * input and output, and then there is nothing to do. No params.
 */
#include <string.h>

#include "../tfmb_internal.h"

static const char *reshape_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                    const tfmb_tensor_t *out)
{
    (void)m;
    if (t[0].elems != out->elems) return "reshape size mismatch at op";
    for (int k = 0; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void reshape_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    (void)op;
    if (t[0].offset != out->offset) memmove(c->arena + out->offset, c->arena + t[0].offset, out->nbytes);
}

static const tfmb_op_entry_t tfmb_op_reshape = {
    .code = TFMB_OP_RESHAPE,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = true,
    .validate = reshape_validate,
    .eval = reshape_eval,
};
TFMB_REGISTER_OP(tfmb_op_reshape);

static const tfmb_op_entry_t tfmb_op_squeeze = {
    .code = TFMB_OP_SQUEEZE,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = true,
    .validate = reshape_validate,
    .eval = reshape_eval,
};
TFMB_REGISTER_OP(tfmb_op_squeeze);

static const tfmb_op_entry_t tfmb_op_expand_dims = {
    .code = TFMB_OP_EXPAND_DIMS,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = true,
    .validate = reshape_validate,
    .eval = reshape_eval,
};
TFMB_REGISTER_OP(tfmb_op_expand_dims);
