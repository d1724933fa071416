/*
 * Training STRIDED_SLICE: the float32 gather of the int8 kernel (engine/ops/strided_slice.c);
 * backward adds each output gradient to the element it was taken from (each is taken once).
 *
 * Params: p0..p3 start, p4..p7 stride, p8..p11 count of dims 0..3 (p0 = 0, p8 = 1: one sample).
 */
#include "../tftr_internal.h"

static const char *strided_slice_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                          const tftr_tensor_t *out)
{
    (void)p;
    uint64_t elems = 1;
    for (int k = 0; k < 4; ++k) {
        const int64_t start = op->p[k], stride = op->p[4 + k], count = op->p[8 + k], size = t[0].d[k];
        if (!tftr_in_range(count, 1, TFMB_MAX_DIM) || stride == 0 || !tftr_in_range(stride, -TFMB_MAX_DIM, TFMB_MAX_DIM))
            return "slice count or stride bad at op";
        const int64_t last = start + (count - 1) * stride;
        if (start < 0 || start >= size || last < 0 || last >= size) return "slice outside the input at op";
        elems *= (uint64_t)count;
    }
    if (elems != out->elems) return "slice shape bad at op";
    if (!tftr_params_zero_from(op, 12)) return "unused parameter set at op";
    return 0;
}

/* Every output element o and the input element i it takes: forward y[o] = x[i], backward x[i] += y[o]. */
static inline __attribute__((always_inline)) void slice_walk(const tftr_op_t *op, const tftr_tensor_t *in, float *x,
                                                             float *y, bool forward)
{
    const int32_t *d = in->d, *s = op->p, *st = op->p + 4, *n = op->p + 8;
    uint32_t o = 0;
    for (int32_t i0 = 0; i0 < n[0]; ++i0)
        for (int32_t i1 = 0; i1 < n[1]; ++i1)
            for (int32_t i2 = 0; i2 < n[2]; ++i2) {
                const int32_t a0 = s[0] + i0 * st[0], a1 = s[1] + i1 * st[1], a2 = s[2] + i2 * st[2];
                const uint32_t row = (((uint32_t)a0 * (uint32_t)d[1] + (uint32_t)a1) * (uint32_t)d[2] + (uint32_t)a2) *
                                     (uint32_t)d[3];
                for (int32_t i3 = 0; i3 < n[3]; ++i3, ++o) {
                    const uint32_t i = row + (uint32_t)(s[3] + i3 * st[3]);
                    if (forward)
                        y[o] = x[i];
                    else
                        x[i] += y[o];
                }
            }
}

static void strided_slice_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                                  const tftr_ctx_t *c)
{
    slice_walk(op, &t[0], tftr_val(c, &t[0]), tftr_val(c, out), true);
}

static void strided_slice_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                                   const tftr_ctx_t *c)
{
    float *dx = tftr_grd(c, &t[0]);
    if (dx) slice_walk(op, &t[0], dx, tftr_grd(c, out), false);
}

static const tftr_op_entry_t tftr_op_strided_slice = {
    .code = TFMB_OP_STRIDED_SLICE,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = strided_slice_validate,
    .forward = strided_slice_forward,
    .backward = strided_slice_backward,
};
TFTR_REGISTER_OP(tftr_op_strided_slice);
