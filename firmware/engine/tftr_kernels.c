/*
 * Helpers the training kernels (train_ops/) share: weight rows, bias values and gradient rows
 * of a channel.
 *
 * Weight rows: a channel of w* is contiguous in RAM (values), any other channel is
 * dequantized from the int8 program into the scratch row: w = scale[c] * (q - zp[c]).
 * Every index here is inside its tensor because tftr_open validated the shapes.
 */
#include "tftr_internal.h"

/* Map entry of channel ch: index of its first value in w*, or -1 (frozen). */
static int32_t chan_map(const tftr_ctx_t *c, const tftr_tensor_t *w, uint32_t ch)
{
    return tfmb_rd32(c->data + w->map + 4u * ch);
}

/* Values per channel P; the element k of channel ch is at (axis 0) ch*P + k, else k*C + ch. */
const float *tftr_weight_row(const tftr_ctx_t *c, const tftr_tensor_t *w, uint32_t ch)
{
    const int32_t m = chan_map(c, w, ch);
    if (m >= 0) return c->values + m;
    const uint32_t per = w->elems / w->ch;
    const float s = tftr_rdf(c->data + w->sc + 4u * ch);
    const int32_t z = tfmb_rd32(c->data + w->zp + 4u * ch);
    const int8_t *q = (const int8_t *)(c->data + w->q);
    float *row = c->scratch;
    if (w->axis == 0)
        for (uint32_t k = 0; k < per; ++k) row[k] = (float)((int32_t)q[ch * per + k] - z) * s;
    else
        for (uint32_t k = 0; k < per; ++k) row[k] = (float)((int32_t)q[k * w->ch + ch] - z) * s;
    return row;
}

float tftr_bias_value(const tftr_ctx_t *c, const tftr_tensor_t *b, uint32_t ch)
{
    if (!b) return 0.0f;
    const int32_t m = chan_map(c, b, ch);
    if (m >= 0) return c->values[m];
    const int32_t q = tfmb_rd32(c->data + b->q + 4u * ch);
    return (float)q * tftr_rdf(c->data + b->sc + 4u * ch); /* zero point validated 0 */
}

float *tftr_grad_row(const tftr_ctx_t *c, const tftr_tensor_t *w, uint32_t ch)
{
    if (!w) return 0;
    const int32_t m = chan_map(c, w, ch);
    return m >= 0 ? c->grad + m : 0;
}
