/*
 * Training FULLY_CONNECTED: float32 forward and backward. Weights [n_out, depth], channel axis
 * 0; the input is read as rows of depth values. No params.
 */
#include "../tftr_fpu.h"
#include "../tftr_internal.h"

static const char *fully_connected_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                            const tftr_tensor_t *out)
{
    (void)p;
    const tftr_tensor_t *f = &t[1];
    if (f->kind != TFTR_KIND_Q8 || f->rank != 2 || f->axis != 0)
        return "fc weights not 2-D int8 at op";
    const uint32_t n_out = (uint32_t)f->d[0], depth = (uint32_t)f->d[1];
    if (out->elems % n_out || (uint64_t)(out->elems / n_out) * depth != t[0].elems)
        return "fc sizes bad at op";
    if (!tftr_params_zero_from(op, 0)) return "unused parameter set at op";
    if (op->in[2] != TFTR_NONE16 && !tftr_check_bias(&t[2], (int32_t)n_out))
        return "bias bad at op";
    return 0;
}

static void fully_connected_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                                    const tftr_ctx_t *c)
{
    const tftr_tensor_t *w = &t[1], *b = op->in[2] != TFTR_NONE16 ? &t[2] : 0;
    const uint32_t nout = (uint32_t)w->d[0], depth = (uint32_t)w->d[1], rows = out->elems / nout;
    const float *x = tftr_val(c, &t[0]);
    float *y = tftr_val(c, out);
    for (uint32_t o = 0; o < nout; ++o) {
        const float *row = tftr_weight_row(c, w, o);
        const float bv = tftr_bias_value(c, b, o);
        for (uint32_t r = 0; r < rows; ++r) {
            y[r * nout + o] = tftr_activate(tftr_dot(bv, x + r * depth, row, depth), op->act);
        }
    }
}

static void fully_connected_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                                     const tftr_ctx_t *c)
{
    const tftr_tensor_t *w = &t[1], *b = op->in[2] != TFTR_NONE16 ? &t[2] : 0;
    const uint32_t nout = (uint32_t)w->d[0], depth = (uint32_t)w->d[1], rows = out->elems / nout;
    const float *x = tftr_val(c, &t[0]);
    const float *gz = tftr_grd(c, out);
    float *dx = tftr_grd(c, &t[0]);
    for (uint32_t o = 0; o < nout; ++o) {
        float *gw = tftr_grad_row(c, w, o);
        float *gb = tftr_grad_row(c, b, o);
        if (!gw && !gb && !dx) continue;
        const float *row = dx ? tftr_weight_row(c, w, o) : 0;
        for (uint32_t r = 0; r < rows; ++r) {
            const float g = gz[r * nout + o];
            if (g == 0.0f) continue;
            if (gb) *gb += g;
            if (gw) tftr_axpy(gw, g, x + r * depth, depth);
            if (dx) tftr_axpy(dx + r * depth, g, row, depth);
        }
    }
}

static const tftr_op_entry_t tftr_op_fully_connected = {
    .code = TFMB_OP_FULLY_CONNECTED,
    .inputs = 3, /* input, weights, optional bias */
    .required = 2,
    .activations = 1,
    .fused_activation = true,
    .in_place = false,
    .weighted = true,
    .validate = fully_connected_validate,
    .forward = fully_connected_forward,
    .backward = fully_connected_backward,
};
TFTR_REGISTER_OP(tftr_op_fully_connected);
