/*
 * int8 MAX_POOL_2D and AVERAGE_POOL_2D as TFLM's reference kernels compute them: the window
 * is clipped to the input (padding contributes nothing), the average is rounded half away
 * from zero, then the fused activation range is applied.
 *
 * Params: p2/p3 activation range, p4/p5 stride h/w, p6/p7 window h/w, p8/p9 padding top/left.
 */
#include "../tfmb_internal.h"

static const char *pool_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                 const tfmb_tensor_t *out)
{
    (void)m;
    const tfmb_tensor_t *in = &t[0];
    if (in->rank != 4 || out->rank != 4) return "pool tensors must be 4-D at op";
    if (in->d[0] != out->d[0] || in->d[3] != out->d[3]) return "pool shape bad at op";
    if (op->p[0] || op->p[1]) return "unused parameter set at op";
    if (!tfmb_in_range(op->p[2], -128, 127) || !tfmb_in_range(op->p[3], op->p[2], 127))
        return "activation range bad at op";
    if (!tfmb_in_range(op->p[4], 1, TFMB_MAX_STRIDE) || !tfmb_in_range(op->p[5], 1, TFMB_MAX_STRIDE))
        return "pool stride out of range at op";
    if (!tfmb_in_range(op->p[6], 1, TFMB_MAX_DIM) || !tfmb_in_range(op->p[7], 1, TFMB_MAX_DIM) ||
        (int64_t)op->p[6] * op->p[7] > (1 << 20))
        return "pool window out of range at op";
    if (!tfmb_in_range(op->p[8], 0, TFMB_MAX_DIM) || !tfmb_in_range(op->p[9], 0, TFMB_MAX_DIM))
        return "padding out of range at op";
    for (int k = 10; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

/* The loops both kernels share: every output position, its window clipped to the input, every
 * channel. Always inlined, so each kernel is compiled with its `is_max` fixed and carries no
 * test of it. */
static inline __attribute__((always_inline)) void pool_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                                            const tfmb_tensor_t *out, const tfmb_ctx_t *c,
                                                            bool is_max)
{
    const tfmb_tensor_t *in = &t[0];
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
                int32_t ky0, ky1, kx0, kx1;
                tfmb_taps_inside(iy0, 1, fh, ih, &ky0, &ky1);
                tfmb_taps_inside(ix0, 1, fw, iw, &kx0, &kx1);
                for (int32_t ci = 0; ci < ch; ++ci) {
                    int32_t acc = is_max ? -128 : 0, count = 0; /* sum: |acc| <= 128 * fh * fw <= 2**27 */
                    for (int32_t ky = ky0; ky < ky1; ++ky)
                        for (int32_t kx = kx0; kx < kx1; ++kx) {
                            const int32_t v = x[((n * ih + iy0 + ky) * iw + ix0 + kx) * ch + ci];
                            if (is_max) {
                                if (v > acc) acc = v;
                            } else {
                                acc += v;
                                ++count;
                            }
                        }
                    if (!is_max && count > 0)
                        acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                    y[((n * oh + oy) * ow + ox) * ch + ci] = (int8_t)tfmb_clamp(acc, lo, hi);
                }
            }
}

static void max_pool_2d_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                             const tfmb_ctx_t *c)
{
    pool_eval(op, t, out, c, true);
}

static void average_pool_2d_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                 const tfmb_ctx_t *c)
{
    pool_eval(op, t, out, c, false);
}

#if TFMB_CORE == TFMB_CORE_DSP
/* pool_dsp.c */
void tfmb_max_pool_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                          const tfmb_ctx_t *c);
void tfmb_average_pool_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                              const tfmb_ctx_t *c);
#endif

static const tfmb_op_entry_t tfmb_op_max_pool_2d = {
    .code = TFMB_OP_MAX_POOL_2D,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = pool_validate,
    .eval = max_pool_2d_eval,
#if TFMB_CORE == TFMB_CORE_DSP
    .fast = tfmb_max_pool_2d_dsp,
#endif
};
TFMB_REGISTER_OP(tfmb_op_max_pool_2d);

static const tfmb_op_entry_t tfmb_op_average_pool_2d = {
    .code = TFMB_OP_AVERAGE_POOL_2D,
    .inputs = 1,
    .required = 1,
    .activations = 1,
    .in_place = false,
    .validate = pool_validate,
    .eval = average_pool_2d_eval,
#if TFMB_CORE == TFMB_CORE_DSP
    .fast = tfmb_average_pool_2d_dsp,
#endif
};
TFMB_REGISTER_OP(tfmb_op_average_pool_2d);
