/*
 * int8 LOGISTIC and TANH: TFLM's reference_integer_ops::Logistic and ::Tanh, which differ only in
 * the gemmlowp function and the output grid. The centred input is rescaled to Q4.27 (saturating to
 * -128 / 127 at or beyond the input radius) and the function gives Q0.31, rounded to the output
 * grid: LOGISTIC's 1/256 with zero point -128, TANH's 1/128 around zero (TFLM reads no output
 * quantization for either).
 *
 * Params: p0 input zero point, p1 input radius, p2 input multiplier, p3 input left shift.
 */
#include "../tfmb_gemmlowp.h"

static const char *q4_unary_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                     const tfmb_tensor_t *out)
{
    (void)m;
    const bool tanh = op->code == TFMB_OP_TANH;
    if (t[0].elems != out->elems) return tanh ? "tanh shapes differ at op" : "logistic shapes differ at op";
    if (!tfmb_in_range(op->p[0], -128, 127)) return "zero point out of range at op";
    if (!tfmb_in_range(op->p[1], 0, 1 << 30) || op->p[2] < 0 || !tfmb_in_range(op->p[3], -31, 31) ||
        (op->p[1] > 0 && op->p[3] > 30))
        return tanh ? "tanh rescaling bad at op" : "logistic rescaling bad at op";
    for (int k = 4; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void q4_unary_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t zp = op->p[0], radius = op->p[1], mult = op->p[2], shift = op->p[3];
    const bool tanh = op->code == TFMB_OP_TANH;
    for (uint32_t i = 0; i < out->elems; ++i) {
        const int32_t v = (int32_t)x[i] - zp;
        if (v <= -radius) {
            y[i] = -128;
        } else if (v >= radius) {
            y[i] = 127;
        } else {
            const int32_t q4 = tfmb_mbqm(v, mult, shift);
            const int32_t q = tanh ? tfmb_rdbp(tfmb_tanh_q4(q4), 24) : tfmb_rdbp(tfmb_logistic_q4(q4), 23) - 128;
            y[i] = (int8_t)tfmb_clamp(q, -128, 127);
        }
    }
}

static const tfmb_op_entry_t tfmb_op_logistic = {
    .code = TFMB_OP_LOGISTIC,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = q4_unary_validate,
    .eval = q4_unary_eval,
};
TFMB_REGISTER_OP(tfmb_op_logistic);

static const tfmb_op_entry_t tfmb_op_tanh = {
    .code = TFMB_OP_TANH,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = q4_unary_validate,
    .eval = q4_unary_eval,
};
TFMB_REGISTER_OP(tfmb_op_tanh);
