/*
 * int8 STRIDED_SLICE: a gather of the input's values, never rescaled. The host resolved
 * TFLM's masks, negative indices and clamping into a start, a stride (non-zero, possibly
 * negative) and a count per dim of the 4-D record; every index the kernel reads was checked
 * to lie inside the input.
 *
 * Params: p0..p3 start, p4..p7 stride, p8..p11 count of dims 0..3.
 */
#include "../tfmb_internal.h"

static const char *strided_slice_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                          const tfmb_tensor_t *out)
{
    (void)m;
    uint64_t elems = 1;
    for (int k = 0; k < 4; ++k) {
        const int64_t start = op->p[k], stride = op->p[4 + k], count = op->p[8 + k], size = t[0].d[k];
        if (!tfmb_in_range(op->p[8 + k], 1, TFMB_MAX_DIM) || stride == 0 || stride < -TFMB_MAX_DIM ||
            stride > TFMB_MAX_DIM)
            return "slice count or stride bad at op";
        const int64_t last = start + (count - 1) * stride;
        if (start < 0 || start >= size || last < 0 || last >= size) return "slice outside the input at op";
        elems *= (uint64_t)count;
    }
    if (elems != out->elems) return "slice shape bad at op";
    if (op->p[12] != 0) return "unused parameter set at op";
    return 0;
}

static void strided_slice_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                               const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t *d = t[0].d, *s = op->p, *st = op->p + 4, *n = op->p + 8;
    uint32_t o = 0;
    for (int32_t i0 = 0; i0 < n[0]; ++i0)
        for (int32_t i1 = 0; i1 < n[1]; ++i1)
            for (int32_t i2 = 0; i2 < n[2]; ++i2) {
                const int32_t a0 = s[0] + i0 * st[0], a1 = s[1] + i1 * st[1], a2 = s[2] + i2 * st[2];
                const int8_t *row = x + (((uint32_t)a0 * (uint32_t)d[1] + (uint32_t)a1) * (uint32_t)d[2] + (uint32_t)a2) *
                                            (uint32_t)d[3];
                for (int32_t i3 = 0; i3 < n[3]; ++i3) y[o++] = row[s[3] + i3 * st[3]];
            }
}

static const tfmb_op_entry_t tfmb_op_strided_slice = {
    .code = TFMB_OP_STRIDED_SLICE,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = strided_slice_validate,
    .eval = strided_slice_eval,
};
TFMB_REGISTER_OP(tfmb_op_strided_slice);
