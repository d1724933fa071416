/*
 * Training CONCATENATION of up to three activations (the record's input slots) along one axis;
 * backward hands each input its slice of the output gradient.
 *
 * Params: p0 axis (1..3 of the 4-D record; never the batch axis).
 */
#include "../tftr_internal.h"

static int concat_count(const tftr_op_t *op) { return op->in[2] != TFTR_NONE16 ? 3 : (op->in[1] != TFTR_NONE16 ? 2 : 1); }

static const char *concat_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                   const tftr_tensor_t *out)
{
    (void)p;
    const int32_t axis = op->p[0];
    if (!tftr_in_range(axis, 1, 3) || axis >= out->rank) return "concatenation axis bad at op";
    if (op->in[1] == TFTR_NONE16 && op->in[2] != TFTR_NONE16) return "missing input at op";
    int64_t along = 0;
    for (int k = 0; k < concat_count(op); ++k) {
        if (!tftr_is_act(&t[k]) || t[k].rank != out->rank) return "input/output not an activation at op";
        for (int i = 0; i < 4; ++i)
            if (i != axis && t[k].d[i] != out->d[i]) return "concatenation shape bad at op";
        along += t[k].d[axis];
    }
    if (along != out->d[axis]) return "concatenation shape bad at op";
    if (!tftr_params_zero_from(op, 1)) return "unused parameter set at op";
    return 0;
}

/* Rows before the axis, and each input's elements per row. */
static uint32_t concat_rows(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, uint32_t inner[3])
{
    uint32_t outer = 1;
    for (int i = 0; i < op->p[0]; ++i) outer *= (uint32_t)out->d[i];
    for (int k = 0; k < 3; ++k) inner[k] = k < concat_count(op) ? t[k].elems / outer : 0;
    return outer;
}

static void concat_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                           const tftr_ctx_t *c)
{
    uint32_t inner[3];
    const uint32_t outer = concat_rows(op, t, out, inner);
    float *y = tftr_val(c, out);
    for (uint32_t o = 0; o < outer; ++o)
        for (int k = 0; k < concat_count(op); ++k) {
            memcpy(y, tftr_val(c, &t[k]) + o * inner[k], 4u * inner[k]);
            y += inner[k];
        }
}

static void concat_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                            const tftr_ctx_t *c)
{
    uint32_t inner[3];
    const uint32_t outer = concat_rows(op, t, out, inner);
    const float *g = tftr_grd(c, out);
    for (uint32_t o = 0; o < outer; ++o)
        for (int k = 0; k < concat_count(op); ++k) {
            float *dx = tftr_grd(c, &t[k]);
            if (dx)
                for (uint32_t j = 0; j < inner[k]; ++j) dx[o * inner[k] + j] += g[j];
            g += inner[k];
        }
}

static const tftr_op_entry_t tftr_op_concatenation = {
    .code = TFMB_OP_CONCATENATION,
    .inputs = 3,
    .required = 1,
    .activations = 3, /* every present input (validate checks their kind) */
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = concat_validate,
    .forward = concat_forward,
    .backward = concat_backward,
};
TFTR_REGISTER_OP(tftr_op_concatenation);
