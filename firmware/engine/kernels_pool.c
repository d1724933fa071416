/*
 * int8 MAX_POOL_2D and AVERAGE_POOL_2D as TFLM's reference kernels compute them: the window
 * is clipped to the input (padding contributes nothing), the average is rounded half away
 * from zero, then the fused activation range is applied.
 */
#include "tfmb_internal.h"

void tfmb_k_max_pool(const tfmb_op_t *op, const tfmb_tensor_t *in, const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + in->offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t lo = op->p[2], hi = op->p[3], sh = op->p[4], sw = op->p[5];
    const int32_t fh = op->p[6], fw = op->p[7], ph = op->p[8], pw = op->p[9];
    const int32_t batches = in->d[0], ih = in->d[1], iw = in->d[2], ch = in->d[3];
    const int32_t oh = out->d[1], ow = out->d[2];

    for (int32_t n = 0; n < batches; ++n)
        for (int32_t oy = 0; oy < oh; ++oy)
            for (int32_t ox = 0; ox < ow; ++ox) {
                const int32_t iy0 = oy * sh - ph, ix0 = ox * sw - pw;
                const int32_t ky0 = iy0 < 0 ? -iy0 : 0, kx0 = ix0 < 0 ? -ix0 : 0;
                const int32_t ky1 = fh < ih - iy0 ? fh : ih - iy0, kx1 = fw < iw - ix0 ? fw : iw - ix0;
                for (int32_t ci = 0; ci < ch; ++ci) {
                    int32_t m = -128;
                    for (int32_t ky = ky0; ky < ky1; ++ky)
                        for (int32_t kx = kx0; kx < kx1; ++kx) {
                            const int32_t v = x[((n * ih + iy0 + ky) * iw + ix0 + kx) * ch + ci];
                            if (v > m) m = v;
                        }
                    y[((n * oh + oy) * ow + ox) * ch + ci] = (int8_t)tfmb_clamp(m, lo, hi);
                }
            }
}

void tfmb_k_avg_pool(const tfmb_op_t *op, const tfmb_tensor_t *in, const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *x = (const int8_t *)(c->arena + in->offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t lo = op->p[2], hi = op->p[3], sh = op->p[4], sw = op->p[5];
    const int32_t fh = op->p[6], fw = op->p[7], ph = op->p[8], pw = op->p[9];
    const int32_t batches = in->d[0], ih = in->d[1], iw = in->d[2], ch = in->d[3];
    const int32_t oh = out->d[1], ow = out->d[2];

    for (int32_t n = 0; n < batches; ++n)
        for (int32_t oy = 0; oy < oh; ++oy)
            for (int32_t ox = 0; ox < ow; ++ox) {
                const int32_t iy0 = oy * sh - ph, ix0 = ox * sw - pw;
                const int32_t ky0 = iy0 < 0 ? -iy0 : 0, kx0 = ix0 < 0 ? -ix0 : 0;
                const int32_t ky1 = fh < ih - iy0 ? fh : ih - iy0, kx1 = fw < iw - ix0 ? fw : iw - ix0;
                for (int32_t ci = 0; ci < ch; ++ci) {
                    int32_t acc = 0, count = 0; /* |acc| <= 128 * fh * fw <= 2**27 */
                    for (int32_t ky = ky0; ky < ky1; ++ky)
                        for (int32_t kx = kx0; kx < kx1; ++kx) {
                            acc += x[((n * ih + iy0 + ky) * iw + ix0 + kx) * ch + ci];
                            ++count;
                        }
                    if (count > 0) acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                    y[((n * oh + oy) * ow + ox) * ch + ci] = (int8_t)tfmb_clamp(acc, lo, hi);
                }
            }
}
