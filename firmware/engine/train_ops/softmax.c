/*
 * Training SOFTMAX: the program's last op. Forward: the probabilities, stable (max subtracted).
 * Under cross-entropy its backward never runs (the loss's gradient beta (p - onehot) enters
 * below it: tftr_loss.c); under MSE the backward is the softmax's Jacobian:
 * dx = beta p (g - sum(g p)).
 *
 * Params: p0 beta (float32 bits).
 */
#include <math.h>

#include "../tftr_internal.h"

static const char *softmax_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                    const tftr_tensor_t *out)
{
    float beta;
    memcpy(&beta, &op->p[0], sizeof(beta));
    if (!(beta > 0.0f && beta < INFINITY)) return "softmax beta bad at op";
    if (t[0].elems != out->elems || out->elems != p->classes || op->out != p->output_tensor)
        return "softmax shape bad at op";
    if (!tftr_params_zero_from(op, 1)) return "unused parameter set at op";
    return 0;
}

static void softmax_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                            const tftr_ctx_t *c)
{
    const tftr_tensor_t *in = &t[0];
    float beta;
    memcpy(&beta, &op->p[0], sizeof(beta));
    const float *x = tftr_val(c, in);
    float *y = tftr_val(c, out);
    const uint32_t n = in->elems;
    float mx = x[0] * beta;
    for (uint32_t i = 1; i < n; ++i)
        if (x[i] * beta > mx) mx = x[i] * beta;
    float sum = 0.0f;
    for (uint32_t i = 0; i < n; ++i) {
        y[i] = expf(x[i] * beta - mx);
        sum += y[i];
    }
    for (uint32_t i = 0; i < n; ++i) y[i] /= sum;
}

static void softmax_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out,
                             const tftr_ctx_t *c)
{
    float *dx = tftr_grd(c, &t[0]);
    if (!dx) return;
    const float *prob = tftr_val(c, out);
    const float *g = tftr_grd(c, out);
    float beta;
    memcpy(&beta, &op->p[0], sizeof(beta));
    float dot = 0.0f;
    for (uint32_t k = 0; k < out->elems; ++k) dot += g[k] * prob[k];
    for (uint32_t k = 0; k < out->elems; ++k) dx[k] += beta * (prob[k] * (g[k] - dot));
}

static const tftr_op_entry_t tftr_op_softmax = {
    .code = TFMB_OP_SOFTMAX,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .fused_activation = false,
    .in_place = false,
    .weighted = false,
    .validate = softmax_validate,
    .forward = softmax_forward,
    .backward = softmax_backward,
    .last_only = true,
};
TFTR_REGISTER_OP(tftr_op_softmax);
