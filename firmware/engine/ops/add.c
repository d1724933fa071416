/*
 * int8 ADD: TFLM's quantized add with general rescaling; equal shapes only (no broadcasting).
 *
 * Params: p0/p1 input offsets, p2/p3 activation range, p4 output offset, p5 left shift,
 * p6/p7, p8/p9, p10/p11 multiplier/shift of input 1, input 2 and the output.
 */
#include "../tfmb_internal.h"
#include "../tfmb_mve.h"

static const char *add_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                const tfmb_tensor_t *out)
{
    (void)m;
    if (!tfmb_is_activation(&t[1])) return "input is not an int8 activation at op";
    if (t[0].elems != out->elems || t[1].elems != out->elems)
        return "add shapes differ (no broadcast) at op";
    if (!tfmb_in_range(op->p[0], -127, 128) || !tfmb_in_range(op->p[1], -127, 128) ||
        !tfmb_in_range(op->p[4], -128, 127))
        return "zero point out of range at op";
    if (!tfmb_in_range(op->p[2], -128, 127) || !tfmb_in_range(op->p[3], op->p[2], 127))
        return "activation range bad at op";
    if (!tfmb_in_range(op->p[5], 0, 23)) return "add left shift out of range at op";
    for (int k = 6; k <= 10; k += 2)
        if (op->p[k] < 0 || !tfmb_in_range(op->p[k + 1], -31, 30))
            return "add multiplier bad at op";
    if (op->p[12] != 0) return "unused parameter set at op";
    return 0;
}

static void add_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *a = (const int8_t *)(c->arena + t[0].offset);
    const int8_t *b = (const int8_t *)(c->arena + t[1].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t off1 = op->p[0], off2 = op->p[1], lo = op->p[2], hi = op->p[3], out_off = op->p[4];
    const int left = (int)op->p[5];
    const int32_t m1 = op->p[6], s1 = op->p[7], m2 = op->p[8], s2 = op->p[9], mo = op->p[10], so = op->p[11];

    for (uint32_t i = 0; i < out->elems; ++i) {
        const int32_t v1 = tfmb_wshl((int32_t)a[i] + off1, left);
        const int32_t v2 = tfmb_wshl((int32_t)b[i] + off2, left);
        const int32_t r1 = tfmb_mbqm(v1, m1, s1);
        const int32_t r2 = tfmb_mbqm(v2, m2, s2);
        const int32_t raw = tfmb_wadd(tfmb_mbqm(tfmb_wadd(r1, r2), mo, so), out_off);
        y[i] = (int8_t)tfmb_clamp(raw, lo, hi);
    }
}

#if TFMB_CORE == TFMB_CORE_DSP
/* add_dsp.c */
void tfmb_add_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c);
#endif

static const tfmb_op_entry_t tfmb_op_add = {
    .code = TFMB_OP_ADD,
    .inputs = 2,
    .required = 2,
    .activations = 2, /* both inputs are activations (validate checks the second one's kind) */
    .in_place = false,
    .validate = add_validate,
    .eval = add_eval,
#if TFMB_CORE == TFMB_CORE_DSP
    .fast = tfmb_add_dsp,
#elif TFMB_CORE == TFMB_CORE_MVE
    .fast = tfmb_add_mve,
#endif
};
TFMB_REGISTER_OP(tfmb_op_add);
