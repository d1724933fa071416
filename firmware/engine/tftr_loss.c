/*
 * tftr: the loss of a training program (its header's loss and target kind), per sample.
 *
 *   SOFTMAX_CE   last op SOFTMAX, target a class byte. Loss -log p[class] (p clamped at
 *                1e-30); gradient beta (p - onehot) added at the SOFTMAX input.
 *   SIGMOID_BCE  last op LOGISTIC, target k bytes 0/1. Loss the mean over the k outputs of
 *                max(z, 0) - z y + log(1 + exp(-|z|)) from the logits z (the LOGISTIC input:
 *                stable for any z); gradient (p - y) / k added at the LOGISTIC input, so
 *                LOGISTIC's own backward never runs.
 *   MSE          any last op, target k float32 (REAL) or the model's k int8 input values
 *                (INPUT, dequantized with the target scale and zero point). Loss the mean of
 *                (out - t)^2; gradient 2 (out - t) / k written at the output, from where the
 *                last op's fused activation and backward carry it down.
 *
 * The host's reference is tinyfed/training/tail.py (head_loss, head_gradient).
 */
#include <math.h>

#include "tftr_internal.h"

static bool overlaps(uint64_t a, uint64_t an, uint64_t b, uint64_t bn) { return a < b + bn && b < a + an; }

const char *tftr_loss_check(const tftr_program_t *p, const tftr_op_t *last, const tftr_tensor_t in[3],
                            const tftr_tensor_t *out)
{
    const uint8_t kind = p->target_kind;
    switch (p->loss) {
    case TFTR_LOSS_SOFTMAX_CE:
        if (kind != TFTR_TARGET_CLASS) return "softmax cross-entropy needs class targets";
        if (last->code != TFMB_OP_SOFTMAX) return "softmax cross-entropy needs SOFTMAX as the last op";
        break;
    case TFTR_LOSS_SIGMOID_BCE:
        if (kind != TFTR_TARGET_LABELS) return "sigmoid cross-entropy needs label targets";
        if (last->code != TFMB_OP_LOGISTIC || in[0].elems != out->elems)
            return "sigmoid cross-entropy needs LOGISTIC as the last op";
        break;
    case TFTR_LOSS_MSE:
        if (kind != TFTR_TARGET_REAL && kind != TFTR_TARGET_INPUT) return "mse needs real or input targets";
        if (p->first_trainable_op < p->op_count) {
            if (out->goff == TFTR_NONE32) return "mse needs a gradient buffer at the output";
            if (overlaps(out->goff, 4u * (uint64_t)out->elems, out->voff, 4u * (uint64_t)out->elems))
                return "output gradient overlaps the output";
        }
        break;
    default:
        return "loss kind unknown";
    }
    if (kind == TFTR_TARGET_INPUT) {
        if (!(p->target_scale > 0.0f && p->target_scale < INFINITY) || !tftr_in_range(p->target_zero_point, -128, 127))
            return "target quantization bad";
    } else if (p->target_scale != 0.0f || p->target_zero_point != 0) {
        return "target quantization set for non-input targets";
    }
    return 0;
}

/* Target value k of an MSE sample. */
static float real_target(const tftr_program_t *p, const uint8_t *target, uint32_t k)
{
    if (p->target_kind == TFTR_TARGET_REAL) return tftr_rdf(target + 4u * k);
    return (float)((int32_t)(int8_t)target[k] - p->target_zero_point) * p->target_scale;
}

/* The last op's input values (the logits of SIGMOID_BCE). */
static const float *last_input(const tftr_program_t *p, const tftr_ctx_t *c)
{
    tftr_op_t op;
    tftr_tensor_t t;
    tftr_read_op(p, (uint16_t)(p->op_count - 1), &op);
    tftr_read_tensor(p, op.in[0], &t);
    return tftr_val(c, &t);
}

float tftr_loss_value(const tftr_program_t *p, const tftr_ctx_t *c, const uint8_t *target, uint8_t *correct)
{
    tftr_tensor_t tout;
    tftr_read_tensor(p, p->output_tensor, &tout);
    const float *y = tftr_val(c, &tout);
    const uint32_t n = p->classes;
    *correct = 0;
    if (p->loss == TFTR_LOSS_SOFTMAX_CE) {
        uint32_t best = 0;
        for (uint32_t k = 1; k < n; ++k)
            if (y[k] > y[best]) best = k;
        const uint8_t label = target[0];
        *correct = best == label ? 1u : 0u;
        const float pl = label < n ? y[label] : 0.0f; /* an unknown label has p = 0 */
        return -logf(pl > 1e-30f ? pl : 1e-30f);
    }
    float sum = 0.0f;
    if (p->loss == TFTR_LOSS_SIGMOID_BCE) {
        const float *z = last_input(p, c);
        uint8_t all = 1;
        for (uint32_t k = 0; k < n; ++k) {
            const float label = target[k] ? 1.0f : 0.0f;
            sum += (z[k] > 0.0f ? z[k] : 0.0f) - z[k] * label + log1pf(expf(-fabsf(z[k])));
            if ((y[k] >= 0.5f) != (target[k] != 0)) all = 0;
        }
        *correct = all;
        return sum / (float)n;
    }
    for (uint32_t k = 0; k < n; ++k) {
        const float d = y[k] - real_target(p, target, k);
        sum += d * d;
    }
    return sum / (float)n;
}

void tftr_loss_backward(const tftr_program_t *p, const tftr_ctx_t *c, const tftr_op_t *last, const tftr_tensor_t in[3],
                        const tftr_tensor_t *out, const uint8_t *target)
{
    const float *y = tftr_val(c, out);
    const uint32_t n = out->elems;
    if (p->loss == TFTR_LOSS_MSE) {
        float *g = tftr_grd(c, out);
        if (!g) return;
        for (uint32_t k = 0; k < n; ++k) g[k] = 2.0f * (y[k] - real_target(p, target, k)) / (float)n;
        return;
    }
    float *dx = tftr_grd(c, &in[0]);
    if (!dx) return;
    if (p->loss == TFTR_LOSS_SOFTMAX_CE) {
        float beta;
        memcpy(&beta, &last->p[0], sizeof(beta));
        for (uint32_t k = 0; k < n; ++k) dx[k] += beta * (y[k] - (k == target[0] ? 1.0f : 0.0f));
        return;
    }
    for (uint32_t k = 0; k < n; ++k) dx[k] += (y[k] - (target[k] ? 1.0f : 0.0f)) / (float)n;
}
