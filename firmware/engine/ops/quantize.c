/*
 * int8 -> int8 QUANTIZE (requantization between two scales), as TFLM's reference Requantize:
 * MultiplyByQuantizedMultiplier(x - zp_in) + zp_out, saturated to int8.
 *
 * Params: p0 input offset (-zp_in), p1 output zero point, p2/p3 range (-128, 127),
 * p4/p5 multiplier/shift of scale_in / scale_out.
 */
#include "../tfmb_internal.h"

static const char *quantize_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                     const tfmb_tensor_t *out)
{
    (void)m;
    if (t[0].elems != out->elems) return "quantize sizes differ at op";
    const char *q = tfmb_check_common_q(op);
    if (q) return q;
    if (op->p[4] < 0 || !tfmb_in_range(op->p[5], -31, 30)) return "quantize multiplier bad at op";
    for (int k = 6; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void quantize_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                          const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t in_off = op->p[0], out_zp = op->p[1], lo = op->p[2], hi = op->p[3], mult = op->p[4], shift = op->p[5];
    for (uint32_t i = 0; i < out->elems; ++i)
        y[i] = (int8_t)tfmb_clamp(tfmb_wadd(tfmb_mbqm((int32_t)x[i] + in_off, mult, shift), out_zp), lo, hi);
}

static const tfmb_op_entry_t tfmb_op_quantize = {
    .code = TFMB_OP_QUANTIZE,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = quantize_validate,
    .eval = quantize_eval,
};
TFMB_REGISTER_OP(tfmb_op_quantize);
