/*
 * int8 FULLY_CONNECTED (per-channel), with the arithmetic of TFLM's reference int8 kernel:
 * int32 accumulation of (weight + weight_offset) * (input + input_offset) wrapping modulo
 * 2**32, plus bias, MultiplyByQuantizedMultiplier per output, + output_offset, clamp.
 *
 * Params: p0 input offset, p1 output offset, p2/p3 activation range, p4 weight offset,
 * p10/p11 multiplier/shift arrays (data offsets).
 */
#include "fully_connected.h"

static const char *fully_connected_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                            const tfmb_tensor_t *out)
{
    const tfmb_tensor_t *in = &t[0], *f = &t[1];
    if (!f->constant || f->type != TFMB_TYPE_INT8 || f->rank != 2)
        return "fc weights not 2-D int8 constant at op";
    const int32_t n_out = f->d[0], depth = f->d[1];
    if (out->rank < 1 || out->d[out->rank - 1] != n_out) return "fc output shape bad at op";
    if ((uint64_t)(out->elems / (uint32_t)n_out) * (uint64_t)depth != in->elems)
        return "fc input size bad at op";
    const char *problem = tfmb_check_common_q(op);
    if (problem) return problem;
    if (!tfmb_in_range(op->p[4], -127, 128)) return "fc weight offset out of range at op";
    for (int k = 5; k <= 9; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    if (op->p[12] != 0) return "unused parameter set at op";
    if (op->in[2] != TFMB_NONE) {
        const tfmb_tensor_t *b = &t[2];
        if (!b->constant || b->type != TFMB_TYPE_INT32 || b->elems != (uint32_t)n_out)
            return "bias bad at op";
    }
    return tfmb_check_requant_arrays(m, op, n_out);
}

void tfmb_fully_connected_ref(const tfmb_fc_args_t *args)
{
    const tfmb_fc_args_t a = *args; /* a local copy: the int8 stores below cannot alias it */
    for (int32_t n = 0; n < a.batches; ++n) {
        const int8_t *xp = a.x + n * a.depth;
        for (int32_t o = 0; o < a.n_out; ++o) {
            const int8_t *fp = a.f + o * a.depth;
            uint32_t acc = 0;
            for (int32_t k = 0; k < a.depth; ++k)
                acc += (uint32_t)(((int32_t)fp[k] + a.f_off) * ((int32_t)xp[k] + a.in_off));
            a.y[n * a.n_out + o] = tfmb_requant(acc, a.bias, a.mult, a.shift, o, a.out_off, a.lo, a.hi);
        }
    }
}

static void fully_connected_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                 const tfmb_ctx_t *c)
{
    const tfmb_fc_args_t a = tfmb_fc_args(op, t, out, c);
    tfmb_fully_connected_ref(&a);
}

/* FULLY_CONNECTED's scratch: one input row of the weights' depth. */
static uint32_t fully_connected_scratch(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out)
{
    (void)op;
    (void)out;
    return tfmb_kernel_scratch((uint64_t)t[1].d[1], 1);
}

static const tfmb_op_entry_t tfmb_op_fully_connected = {
    .code = TFMB_OP_FULLY_CONNECTED,
    .inputs = 3, /* input, weights, optional bias */
    .required = 2,
    .activations = 1,
    .in_place = false,
    .validate = fully_connected_validate,
    .eval = fully_connected_eval,
#if TFMB_CORE == TFMB_CORE_DSP
    .fast = tfmb_fully_connected_dsp,
#elif TFMB_CORE == TFMB_CORE_MVE
    .fast = tfmb_fully_connected_mve,
#endif
    .scratch = fully_connected_scratch,
};
TFMB_REGISTER_OP(tfmb_op_fully_connected);
