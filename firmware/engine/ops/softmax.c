/*
 * int8 SOFTMAX: TFLM's reference Softmax<int8, int8>, gemmlowp fixed-point exp and reciprocal.
 *
 * Params: p0 input multiplier, p1 input left shift, p2 diff_min (as TFLM's Prepare computes them).
 */
#include "../tfmb_gemmlowp.h"

static const char *softmax_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                    const tfmb_tensor_t *out)
{
    (void)m;
    if (t[0].rank < 1 || t[0].rank != out->rank) return "softmax shape bad at op";
    for (int i = 0; i < 4; ++i)
        if (t[0].d[i] != out->d[i]) return "softmax shape bad at op";
    if (op->p[0] < 0 || !tfmb_in_range(op->p[1], 0, 31) || op->p[2] > 0)
        return "softmax parameters bad at op";
    for (int k = 3; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static int clz32(uint32_t x)
{
    int n = 0;
    if (x == 0) return 32;
    while (!(x & 0x80000000u)) {
        x <<= 1;
        ++n;
    }
    return n;
}

static void softmax_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *in = &t[0];
    const int8_t *x = (const int8_t *)(c->arena + in->offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t mult = op->p[0], left = op->p[1], diff_min = op->p[2];
    const int32_t depth = in->d[in->rank - 1];
    const int32_t outer = (int32_t)(in->elems / (uint32_t)depth);

    for (int32_t r = 0; r < outer; ++r) {
        const int8_t *xr = x + r * depth;
        int8_t *yr = y + r * depth;
        int32_t max_v = -128;
        for (int32_t i = 0; i < depth; ++i)
            if (xr[i] > max_v) max_v = xr[i];
        uint32_t sum = 0; /* Q12.19 */
        for (int32_t i = 0; i < depth; ++i) {
            const int32_t diff = (int32_t)xr[i] - max_v;
            if (diff >= diff_min) {
                const int32_t scaled = tfmb_srdhm(tfmb_wshl(diff, (int)left), mult);
                sum += (uint32_t)tfmb_rdbp(tfmb_exp_on_negative_values(scaled, 5), 12);
            }
        }
        const int headroom = clz32(sum);
        const int num_bits_over_unit = 12 - headroom;
        const uint32_t shifted = headroom >= 32 ? 0u : (sum << headroom);
        const int32_t shifted_scale = tfmb_one_over_one_plus_x((int32_t)(shifted - 0x80000000u));
        int exponent = num_bits_over_unit + 31 - 8;
        if (exponent > 31) exponent = 31; /* only reachable when the int32 sum wrapped */
        for (int32_t i = 0; i < depth; ++i) {
            const int32_t diff = (int32_t)xr[i] - max_v;
            if (diff >= diff_min) {
                const int32_t scaled = tfmb_srdhm(tfmb_wshl(diff, (int)left), mult);
                const int32_t e = tfmb_exp_on_negative_values(scaled, 5);
                const int32_t unsat = tfmb_rdbp(tfmb_srdhm(shifted_scale, e), exponent);
                yr[i] = (int8_t)tfmb_clamp(tfmb_wsub(unsat, 128), -128, 127);
            } else {
                yr[i] = -128;
            }
        }
    }
}

static const tfmb_op_entry_t tfmb_op_softmax = {
    .code = TFMB_OP_SOFTMAX,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = softmax_validate,
    .eval = softmax_eval,
};
TFMB_REGISTER_OP(tfmb_op_softmax);
