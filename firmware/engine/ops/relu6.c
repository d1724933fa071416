/*
 * int8 RELU6 (standalone): TFLM's Relu6Quantized, a clamp of the input to its own quantized
 * 0 and 6 (TFLM reads no output quantization).
 *
 * Params: p0 the input's quantized 0, p1 its quantized 6.
 */
#include "../tfmb_internal.h"

static const char *relu6_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                  const tfmb_tensor_t *out)
{
    (void)m;
    if (t[0].elems != out->elems) return "relu6 shapes differ at op";
    if (!tfmb_in_range(op->p[0], -128, 127) || !tfmb_in_range(op->p[1], op->p[0], 127))
        return "relu6 range bad at op";
    for (int k = 2; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void relu6_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + t[0].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    for (uint32_t i = 0; i < out->elems; ++i) y[i] = (int8_t)tfmb_clamp(x[i], op->p[0], op->p[1]);
}

static const tfmb_op_entry_t tfmb_op_relu6 = {
    .code = TFMB_OP_RELU6,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = relu6_validate,
    .eval = relu6_eval,
};
TFMB_REGISTER_OP(tfmb_op_relu6);
