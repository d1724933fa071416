/*
 * Training PAD / PADV2: the float32 input inside the output at offset `before`, the border
 * the fill value; backward passes the output gradient's interior to the input.
 *
 * Params: p0..p3 padding before dims 0..3 of the 4-D record (p0 = 0: one sample), p4 the
 * fill value as float32 bits.
 */
#include "../tftr_internal.h"

static const char *pad_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                const tftr_tensor_t *out)
{
    (void)p;
    if (op->p[0] != 0) return "pad of the batch axis at op";
    for (int k = 0; k < 4; ++k)
        if (!tftr_in_range(op->p[k], 0, TFMB_MAX_DIM) || (int64_t)t[0].d[k] + op->p[k] > out->d[k])
            return "pad shape bad at op";
    if (!tftr_params_zero_from(op, 5)) return "unused parameter set at op";
    return 0;
}

/* Index in the output of the input's row (i0, i1, i2, 0). */
static inline uint32_t pad_row(const tftr_op_t *op, const tftr_tensor_t *out, int32_t i0, int32_t i1, int32_t i2)
{
    const int32_t *d = out->d, *b = op->p;
    return (((uint32_t)(i0 + b[0]) * (uint32_t)d[1] + (uint32_t)(i1 + b[1])) * (uint32_t)d[2] + (uint32_t)(i2 + b[2])) *
               (uint32_t)d[3] + (uint32_t)b[3];
}

static void pad_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const float *x = tftr_val(c, &t[0]);
    float *y = tftr_val(c, out);
    float fill;
    memcpy(&fill, &op->p[4], sizeof(fill));
    for (uint32_t i = 0; i < out->elems; ++i) y[i] = fill;
    const int32_t *e = t[0].d;
    uint32_t src = 0;
    for (int32_t i0 = 0; i0 < e[0]; ++i0)
        for (int32_t i1 = 0; i1 < e[1]; ++i1)
            for (int32_t i2 = 0; i2 < e[2]; ++i2, src += (uint32_t)e[3])
                memcpy(y + pad_row(op, out, i0, i1, i2), x + src, 4u * (uint32_t)e[3]);
}

static void pad_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                         const tftr_ctx_t *c)
{
    float *dx = tftr_grd(c, &t[0]);
    const float *gy = tftr_grd(c, out);
    if (!dx) return;
    const int32_t *e = t[0].d;
    uint32_t src = 0;
    for (int32_t i0 = 0; i0 < e[0]; ++i0)
        for (int32_t i1 = 0; i1 < e[1]; ++i1)
            for (int32_t i2 = 0; i2 < e[2]; ++i2, src += (uint32_t)e[3]) {
                const float *g = gy + pad_row(op, out, i0, i1, i2);
                for (int32_t i3 = 0; i3 < e[3]; ++i3) dx[src + (uint32_t)i3] += g[i3];
            }
}

static const tftr_op_entry_t tftr_op_pad = {
    .code = TFMB_OP_PAD,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = pad_validate,
    .forward = pad_forward,
    .backward = pad_backward,
};
TFTR_REGISTER_OP(tftr_op_pad);

static const tftr_op_entry_t tftr_op_padv2 = {
    .code = TFMB_OP_PADV2,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = pad_validate,
    .forward = pad_forward,
    .backward = pad_backward,
};
TFTR_REGISTER_OP(tftr_op_padv2);
