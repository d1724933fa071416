/*
 * int8 MEAN over up to two axes, as TFLM's reference QuantizedMeanOrSum: the int32 (wrapping)
 * sum of the raw values, minus zp_in * n, MultiplyByQuantizedMultiplier with 1/n folded into
 * the multiplier by the host, + zp_out, saturated. The output order is the input's with the
 * reduced axes removed, whether or not the output keeps them as ones.
 *
 * Params: p0 input offset (-zp_in), p1 output zero point, p2/p3 range (-128, 127),
 * p4 reduced-axis mask (bit k: dim k of the 4-D record), p5 n (elements averaged),
 * p6/p7 multiplier/shift.
 */
#include "../tfmb_internal.h"

static const char *mean_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                 const tfmb_tensor_t *out)
{
    (void)m;
    const char *q = tfmb_check_common_q(op);
    if (q) return q;
    const int32_t mask = op->p[4];
    if (!tfmb_in_range(mask, 1, 15)) return "mean axis mask bad at op";
    int64_t count = 1;
    int axes = 0;
    for (int k = 0; k < 4; ++k)
        if (mask >> k & 1) {
            count *= t[0].d[k];
            ++axes;
        }
    if (axes > 2) return "mean over more than two axes at op";
    if (count != op->p[5] || (uint64_t)out->elems * (uint64_t)count != t[0].elems) return "mean shape bad at op";
    if (op->p[6] < 0 || !tfmb_in_range(op->p[7], -31, 30)) return "mean multiplier bad at op";
    for (int k = 8; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void mean_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t *d = t[0].d;
    const int32_t mask = op->p[4];
    int32_t keep[4], red[4];
    for (int k = 0; k < 4; ++k) {
        keep[k] = (mask >> k & 1) ? 1 : d[k];
        red[k] = (mask >> k & 1) ? d[k] : 1;
    }
    /* zp_in * n, wrapped as TFLM's int32 cast of the int64 difference */
    const int32_t offset_sum = (int32_t)(uint32_t)((uint64_t)(int64_t)op->p[0] * (uint64_t)(uint32_t)op->p[5]);
    uint32_t o = 0;
    for (int32_t a0 = 0; a0 < keep[0]; ++a0)
        for (int32_t a1 = 0; a1 < keep[1]; ++a1)
            for (int32_t a2 = 0; a2 < keep[2]; ++a2)
                for (int32_t a3 = 0; a3 < keep[3]; ++a3) {
                    uint32_t acc = 0;
                    for (int32_t r0 = 0; r0 < red[0]; ++r0)
                        for (int32_t r1 = 0; r1 < red[1]; ++r1)
                            for (int32_t r2 = 0; r2 < red[2]; ++r2) {
                                const int8_t *row = x + (((uint32_t)(a0 + r0) * (uint32_t)d[1] + (uint32_t)(a1 + r1)) *
                                                             (uint32_t)d[2] + (uint32_t)(a2 + r2)) * (uint32_t)d[3];
                                for (int32_t r3 = 0; r3 < red[3]; ++r3) acc += (uint32_t)(int32_t)row[a3 + r3];
                            }
                    const int32_t v = tfmb_mbqm(tfmb_wadd((int32_t)acc, offset_sum), op->p[6], op->p[7]);
                    y[o++] = (int8_t)tfmb_clamp(tfmb_wadd(v, op->p[1]), op->p[2], op->p[3]);
                }
}

static const tfmb_op_entry_t tfmb_op_mean = {
    .code = TFMB_OP_MEAN,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = mean_validate,
    .eval = mean_eval,
};
TFMB_REGISTER_OP(tfmb_op_mean);
