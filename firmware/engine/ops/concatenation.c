/*
 * int8 CONCATENATION as TFLM's reference kernel: the inputs' bytes interleaved along one axis,
 * never rescaled. Up to TFMB_CONCAT_MAX inputs (TFLM's limit): a record has three input
 * slots, so the data section lists every input as (tensor id, arena offset, elements per outer
 * row); validate checks the list against the tensor records, eval reads only the list.
 *
 * Params: p0 input count n, p1 axis (of the 4-D record), p2 data offset of the list
 * (3 x n int32), p3 outer rows (the product of the output dims before the axis).
 */
#include "../tfmb_internal.h"

#define TFMB_CONCAT_MAX 10

static const char *concat_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                   const tfmb_tensor_t *out)
{
    (void)t;
    const int32_t n = op->p[0], axis = op->p[1], list = op->p[2];
    if (!tfmb_in_range(n, 1, TFMB_CONCAT_MAX)) return "concatenation input count bad at op";
    if (!tfmb_in_range(axis, 0, 3) || axis >= (out->rank ? out->rank : 1)) return "concatenation axis bad at op";
    if (list < 0 || (list & 3) || (uint64_t)list + 12u * (uint64_t)n > m->data_bytes)
        return "concatenation list outside data at op";
    int64_t outer = 1;
    for (int k = 0; k < axis; ++k) outer *= out->d[k];
    if (op->p[3] != outer) return "concatenation shape bad at op";
    const uint8_t *e = m->blob + m->data_offset + list;
    int64_t along = 0, elems = 0;
    for (int32_t i = 0; i < n; ++i, e += 12) {
        const int32_t id = tfmb_rd32(e), offset = tfmb_rd32(e + 4), inner = tfmb_rd32(e + 8);
        if (id < 0 || (uint32_t)id >= m->tensor_count) return "concatenation input id out of range at op";
        if (i < 3 ? op->in[i] != (uint16_t)id : false) return "concatenation list disagrees with the inputs at op";
        tfmb_tensor_t x;
        tfmb_read_tensor(m, (uint16_t)id, &x);
        if (!tfmb_is_activation(&x) || x.rank != out->rank) return "concatenation input bad at op";
        int64_t row = 1;
        for (int k = 0; k < 4; ++k) {
            if (k != axis && x.d[k] != out->d[k]) return "concatenation shape bad at op";
            if (k >= axis) row *= x.d[k];
        }
        if ((uint32_t)offset != x.offset || inner != row) return "concatenation list disagrees with the inputs at op";
        if (!((uint64_t)x.offset + x.nbytes <= out->offset || (uint64_t)out->offset + out->nbytes <= x.offset))
            return "output overlaps input at op";
        along += x.d[axis];
        elems += x.elems;
    }
    for (int32_t i = n; i < 3; ++i)
        if (op->in[i] != TFMB_NONE) return "extra input at op";
    if (along != out->d[axis] || elems != out->elems) return "concatenation shape bad at op";
    for (int k = 4; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void concat_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                        const tfmb_ctx_t *c)
{
    (void)t;
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t n = op->p[0], outer = op->p[3];
    const uint8_t *list = c->data + op->p[2];
    for (int32_t o = 0; o < outer; ++o)
        for (int32_t i = 0; i < n; ++i) {
            const uint32_t inner = tfmb_rdu32(list + 12u * (uint32_t)i + 8u);
            const int8_t *x = (const int8_t *)(c->arena + tfmb_rdu32(list + 12u * (uint32_t)i + 4u));
            memcpy(y, x + (uint32_t)o * inner, inner);
            y += inner;
        }
}

static const tfmb_op_entry_t tfmb_op_concatenation = {
    .code = TFMB_OP_CONCATENATION,
    .inputs = 3,
    .required = 1,
    .activations = 1, /* validate checks every listed input against the output */
    .in_place = false,
    .validate = concat_validate,
    .eval = concat_eval,
};
TFMB_REGISTER_OP(tfmb_op_concatenation);
