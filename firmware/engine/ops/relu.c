/*
 * int8 RELU (standalone): TFLM's ReluQuantized. The centred input is requantized to the output
 * scale, offset by the output zero point and clamped below at the output's zero.
 *
 * Params: p0 input zero point, p1 output zero point, p2/p3 multiplier/shift, p4/p5 activation range.
 */
#include "../tfmb_internal.h"

static const char *relu_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                 const tfmb_tensor_t *out)
{
    (void)m;
    if (t[0].elems != out->elems) return "relu shapes differ at op";
    if (!tfmb_in_range(op->p[0], -128, 127) || !tfmb_in_range(op->p[1], -128, 127))
        return "zero point out of range at op";
    if (op->p[2] < 0 || !tfmb_in_range(op->p[3], -31, 30)) return "relu multiplier bad at op";
    if (!tfmb_in_range(op->p[4], -128, 127) || !tfmb_in_range(op->p[5], op->p[4], 127))
        return "activation range bad at op";
    for (int k = 6; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void relu_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t in_zp = op->p[0], out_zp = op->p[1], mult = op->p[2], shift = op->p[3];
    const int32_t lo = op->p[4], hi = op->p[5];
    for (uint32_t i = 0; i < out->elems; ++i)
        y[i] = (int8_t)tfmb_clamp(tfmb_wadd(out_zp, tfmb_mbqm((int32_t)x[i] - in_zp, mult, shift)), lo, hi);
}

static const tfmb_op_entry_t tfmb_op_relu = {
    .code = TFMB_OP_RELU,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = relu_validate,
    .eval = relu_eval,
};
TFMB_REGISTER_OP(tfmb_op_relu);
