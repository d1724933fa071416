/*
 * int8 MAX_POOL_2D and AVERAGE_POOL_2D on a core with the DSP extension, bit-exact with the
 * plain-C reference (pool.c) and so with TFLM.
 *
 * Channels-last: four consecutive channels are one word. Max: a bytewise signed max per window
 * tap (SSUB8 + SEL) from -128, then the activation range as a bytewise max/min. Average: per tap
 * two SXTAB16 add the four channels into halfword sums (exact while the window has at most 256
 * taps inside: |sum| <= 128 * 256 fits a halfword), then per channel the reference's division
 * rounding half away from zero. Channels past the last multiple of four, and average windows of
 * more than 256 taps, take a scalar loop with the reference's arithmetic.
 *
 * Params as pool.c: p2/p3 activation range, p4/p5 stride h/w, p6/p7 window h/w, p8/p9 padding.
 */
#include "../tfmb_simd.h"

#if TFMB_CORE == TFMB_CORE_DSP

typedef struct {
    const int8_t *x;
    int8_t *y;
    int32_t lo, hi, sh, sw, fh, fw, ph, pw;
    int32_t batches, ih, iw, ch, oh, ow;
} pool_args_t;

static pool_args_t pool_args(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                             const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *in = &t[0];
    return (pool_args_t){
        .x = (const int8_t *)(c->arena + in->offset), .y = (int8_t *)(c->arena + out->offset),
        .lo = op->p[2], .hi = op->p[3], .sh = op->p[4], .sw = op->p[5], .fh = op->p[6], .fw = op->p[7],
        .ph = op->p[8], .pw = op->p[9],
        .batches = in->d[0], .ih = in->d[1], .iw = in->d[2], .ch = in->d[3], .oh = out->d[1], .ow = out->d[2],
    };
}

/* The reference's average: the sum divided by the tap count, rounded half away from zero. */
static inline int32_t pool_average(int32_t sum, int32_t count)
{
    if (count <= 0) return sum;
    return sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
}

static inline __attribute__((always_inline)) void pool_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                                           const tfmb_tensor_t *out, const tfmb_ctx_t *c,
                                                           bool is_max)
{
    const pool_args_t a = pool_args(op, t, out, c);
    const int32_t ch = a.ch, row = a.iw * ch;
    const uint32_t lo4 = tfmb_bytes4(a.lo), hi4 = tfmb_bytes4(a.hi);
    for (int32_t n = 0; n < a.batches; ++n)
        for (int32_t oy = 0; oy < a.oh; ++oy) {
            const int32_t iy0 = oy * a.sh - a.ph;
            int32_t ky0, ky1;
            tfmb_taps_inside(iy0, 1, a.fh, a.ih, &ky0, &ky1);
            for (int32_t ox = 0; ox < a.ow; ++ox) {
                const int32_t ix0 = ox * a.sw - a.pw;
                int32_t kx0, kx1;
                tfmb_taps_inside(ix0, 1, a.fw, a.iw, &kx0, &kx1);
                const int32_t rows = ky1 - ky0, cols = kx1 - kx0;
                const int32_t count = rows > 0 && cols > 0 ? rows * cols : 0;
                /* the window's first tap (when it has one) and the output position */
                const int8_t *x0 = count ? a.x + ((n * a.ih + iy0 + ky0) * a.iw + ix0 + kx0) * ch : a.x;
                int8_t *yp = a.y + ((n * a.oh + oy) * a.ow + ox) * ch;
                int32_t ci = 0;
                if (is_max) {
                    for (; ci + 4 <= ch; ci += 4) {
                        uint32_t m = 0x80808080u;
                        const int8_t *xr = x0 + ci;
                        for (int32_t ky = 0; ky < rows; ++ky, xr += row) {
                            const int8_t *xp = xr;
                            for (int32_t kx = 0; kx < cols; ++kx, xp += ch) m = tfmb_max_s8x4(m, tfmb_ld32(xp));
                        }
                        tfmb_st32(yp + ci, tfmb_min_s8x4(tfmb_max_s8x4(m, lo4), hi4));
                    }
                } else if (count <= 256) {
                    for (; ci + 4 <= ch; ci += 4) {
                        uint32_t se = 0, so = 0; /* channels 0, 2 and 1, 3 as halfwords */
                        const int8_t *xr = x0 + ci;
                        for (int32_t ky = 0; ky < rows; ++ky, xr += row) {
                            const int8_t *xp = xr;
                            for (int32_t kx = 0; kx < cols; ++kx, xp += ch) {
                                const uint32_t v = tfmb_ld32(xp);
                                se = tfmb_sxtab16(se, v);
                                so = tfmb_sxtab16_ror8(so, v);
                            }
                        }
                        const uint32_t v = tfmb_pack4(tfmb_ssat8(pool_average((int16_t)(se & 0xFFFFu), count)),
                                                      tfmb_ssat8(pool_average((int16_t)(so & 0xFFFFu), count)),
                                                      tfmb_ssat8(pool_average((int16_t)(se >> 16), count)),
                                                      tfmb_ssat8(pool_average((int16_t)(so >> 16), count)));
                        tfmb_st32(yp + ci, tfmb_min_s8x4(tfmb_max_s8x4(v, lo4), hi4));
                    }
                }
                for (; ci < ch; ++ci) {
                    int32_t acc = is_max ? -128 : 0; /* sum: |acc| <= 128 * fh * fw <= 2**27 */
                    const int8_t *xr = x0 + ci;
                    for (int32_t ky = 0; ky < rows; ++ky, xr += row)
                        for (int32_t kx = 0; kx < cols; ++kx) {
                            const int32_t v = xr[kx * ch];
                            if (is_max)
                                acc = v > acc ? v : acc;
                            else
                                acc += v;
                        }
                    if (!is_max) acc = pool_average(acc, count);
                    yp[ci] = (int8_t)tfmb_clamp(acc, a.lo, a.hi);
                }
            }
        }
}

void tfmb_max_pool_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                          const tfmb_ctx_t *c);
void tfmb_average_pool_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                              const tfmb_ctx_t *c);

void tfmb_max_pool_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                          const tfmb_ctx_t *c)
{
    pool_dsp(op, t, out, c, true);
}

void tfmb_average_pool_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                              const tfmb_ctx_t *c)
{
    pool_dsp(op, t, out, c, false);
}

#endif /* TFMB_CORE == TFMB_CORE_DSP */
