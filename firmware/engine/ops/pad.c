/*
 * int8 PAD and PADV2, as TFLM's reference Pad: the input's bytes inside the output at offset
 * `before`, every other element the fill value (the output zero point, or PADV2's constant).
 *
 * Params: p0..p3 padding before dims 0..3 of the 4-D record, p4..p7 padding after,
 * p8 the int8 fill value.
 */
#include "../tfmb_internal.h"

static const char *pad_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                const tfmb_tensor_t *out)
{
    (void)m;
    for (int k = 0; k < 4; ++k) {
        if (!tfmb_in_range(op->p[k], 0, TFMB_MAX_DIM) || !tfmb_in_range(op->p[4 + k], 0, TFMB_MAX_DIM))
            return "padding out of range at op";
        if ((int64_t)t[0].d[k] + op->p[k] + op->p[4 + k] != out->d[k]) return "pad shape bad at op";
    }
    if (!tfmb_in_range(op->p[8], -128, 127)) return "pad value out of range at op";
    for (int k = 9; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void pad_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t *d = out->d, *b = op->p;
    const int32_t *e = t[0].d;
    memset(y, (int)(int8_t)op->p[8], out->nbytes);
    for (int32_t i0 = 0; i0 < e[0]; ++i0)
        for (int32_t i1 = 0; i1 < e[1]; ++i1)
            for (int32_t i2 = 0; i2 < e[2]; ++i2) {
                const uint32_t src = (((uint32_t)i0 * (uint32_t)e[1] + (uint32_t)i1) * (uint32_t)e[2] + (uint32_t)i2) *
                                     (uint32_t)e[3];
                const uint32_t dst = (((uint32_t)(i0 + b[0]) * (uint32_t)d[1] + (uint32_t)(i1 + b[1])) * (uint32_t)d[2] +
                                      (uint32_t)(i2 + b[2])) * (uint32_t)d[3] + (uint32_t)b[3];
                memcpy(y + dst, x + src, (uint32_t)e[3]);
            }
}

static const tfmb_op_entry_t tfmb_op_pad = {
    .code = TFMB_OP_PAD,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = pad_validate,
    .eval = pad_eval,
};
TFMB_REGISTER_OP(tfmb_op_pad);

static const tfmb_op_entry_t tfmb_op_padv2 = {
    .code = TFMB_OP_PADV2,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = pad_validate,
    .eval = pad_eval,
};
TFMB_REGISTER_OP(tfmb_op_padv2);
