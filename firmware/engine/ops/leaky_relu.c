/*
 * int8 LEAKY_RELU: TFLM's QuantizeLeakyRelu. The centred input is requantized with the identity
 * multiplier when non-negative, with the alpha multiplier otherwise (for a negative alpha: by
 * its magnitude, then negated), then offset by the output zero point and clamped to int8.
 *
 * Params: p0 input zero point, p1 output zero point, p2/p3 alpha multiplier/shift, p4/p5
 * identity multiplier/shift.
 */
#include "../tfmb_internal.h"

static const char *leaky_relu_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                       const tfmb_tensor_t *out)
{
    (void)m;
    if (t[0].elems != out->elems) return "leaky relu shapes differ at op";
    if (!tfmb_in_range(op->p[0], -128, 127) || !tfmb_in_range(op->p[1], -128, 127))
        return "zero point out of range at op";
    if (op->p[2] == INT32_MIN || !tfmb_in_range(op->p[3], -31, 30) || op->p[4] < 0 ||
        !tfmb_in_range(op->p[5], -31, 30))
        return "leaky relu multiplier bad at op";
    for (int k = 6; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void leaky_relu_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                            const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t in_zp = op->p[0], out_zp = op->p[1];
    for (uint32_t i = 0; i < out->elems; ++i) {
        const int32_t v = (int32_t)x[i] - in_zp;
        int32_t r;
        if (v >= 0)
            r = tfmb_mbqm(v, op->p[4], op->p[5]);
        else /* a negative alpha multiplier: scale by its magnitude, negate the result (as TFLM) */
            r = op->p[2] < 0 ? -tfmb_mbqm(v, -op->p[2], op->p[3]) : tfmb_mbqm(v, op->p[2], op->p[3]);
        y[i] = (int8_t)tfmb_clamp(tfmb_wadd(out_zp, r), -128, 127);
    }
}

static const tfmb_op_entry_t tfmb_op_leaky_relu = {
    .code = TFMB_OP_LEAKY_RELU,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = leaky_relu_validate,
    .eval = leaky_relu_eval,
};
TFMB_REGISTER_OP(tfmb_op_leaky_relu);
