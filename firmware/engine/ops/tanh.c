/*
 * int8 TANH: TFLM's reference_integer_ops::Tanh. The centred input is rescaled to Q4.27
 * (saturating to -128 / 127 at or beyond the input radius), gemmlowp's tanh gives Q0.31,
 * which is rounded to the 1/128 output grid around zero (TFLM reads no output quantization).
 *
 * Params: p0 input zero point, p1 input radius, p2 input multiplier, p3 input left shift.
 */
#include "../tfmb_gemmlowp.h"

static const char *tanh_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                     const tfmb_tensor_t *out)
{
    (void)m;
    if (t[0].elems != out->elems) return "tanh shapes differ at op";
    if (!tfmb_in_range(op->p[0], -128, 127)) return "zero point out of range at op";
    if (!tfmb_in_range(op->p[1], 0, 1 << 30) || op->p[2] < 0 || !tfmb_in_range(op->p[3], -31, 31) ||
        (op->p[1] > 0 && op->p[3] > 30))
        return "tanh rescaling bad at op";
    for (int k = 4; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void tanh_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t zp = op->p[0], radius = op->p[1], mult = op->p[2], shift = op->p[3];
    for (uint32_t i = 0; i < out->elems; ++i) {
        const int32_t v = (int32_t)x[i] - zp;
        if (v <= -radius) {
            y[i] = -128;
        } else if (v >= radius) {
            y[i] = 127;
        } else {
            const int32_t q0 = tfmb_tanh_q4(tfmb_mbqm(v, mult, shift));
            y[i] = (int8_t)tfmb_clamp(tfmb_rdbp(q0, 24), -128, 127);
        }
    }
}

static const tfmb_op_entry_t tfmb_op_tanh = {
    .code = TFMB_OP_TANH,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = tanh_validate,
    .eval = tanh_eval,
};
TFMB_REGISTER_OP(tfmb_op_tanh);
