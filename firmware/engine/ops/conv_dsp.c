/*
 * CONV_2D on a core with the DSP extension (Cortex-M4F/M33/M7): bit-exact with conv.c's reference.
 *
 * Output pixels go in pairs (A, B), flattened over batch, rows and columns. The pair's two im2col
 * columns (every tap of the filter, ic channels each: K = fh * fw * ic values) are expanded once
 * into the op's scratch as int16 with the input offset added, padding taps as 0 (what TFLM's
 * skipped taps contribute). Per group of 4 values k..k+3 the scratch holds four words:
 *   A(k, k+2)  A(k+1, k+3)  B(k, k+2)  B(k+1, k+3)
 * i.e. the halfword order SXTB16 / SXTB16 ROR 8 give a weight word, so one SMLAD pairs two
 * weights with their two inputs without reordering anything, and one LDM fetches both pixels.
 * The inner loop then takes 2 output channels x 2 pixels (4 accumulators) per weight word pair:
 * 2 LDR + 4 SXTB16 + 1 LDM + 8 SMLAD for 16 MACs. The tail of K (K % 4, only when ic % 4 != 0) is
 * zero in the scratch and its weights are read byte by byte, so no weight past the filter is read.
 * An odd last pixel runs with B's column zero, an odd last channel as channel pair (o, o), and
 * their extra results are not stored. Accumulation wraps modulo 2**32 like the reference, and
 * the order of the additions does not matter then.
 */
#include "../tfmb_internal.h"

#if TFMB_CORE == TFMB_CORE_DSP
#include "../tfmb_simd.h"

void tfmb_conv_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c);

typedef struct {
    const int8_t *x;
    int32_t ih, iw, ic, fh, fw, sh, sw, dh, dw, ph, pw;
    uint32_t off2; /* the input offset in both halfwords */
} col_args_t;

/* The input value of tap (ky, kx) channel ch for the pixel whose window starts at (iy0, ix0) of
 * batch item n, plus the offset; 0 for a padding tap. */
static inline int32_t col_value(const col_args_t *a, int32_t n, int32_t iy0, int32_t ix0, int32_t ky, int32_t kx,
                                int32_t ch)
{
    const int32_t iy = iy0 + a->dh * ky, ix = ix0 + a->dw * kx;
    if (iy < 0 || iy >= a->ih || ix < 0 || ix >= a->iw) return 0;
    return (int32_t)a->x[((n * a->ih + iy) * a->iw + ix) * a->ic + ch] + (int32_t)(int16_t)(a->off2 & 0xFFFFu);
}

/* One pixel's column into slot `s` (0: A, 1: B) of the pair's scratch `col` (4 words a group). */
static void col_fill(const col_args_t *a, uint32_t *col, int s, int32_t n, int32_t oy, int32_t ox)
{
    const int32_t iy0 = oy * a->sh - a->ph, ix0 = ox * a->sw - a->pw;
    uint32_t *dst = col + 2 * s;
    if ((a->ic & 3) == 0) {
        /* Whole words: every tap is ic / 4 groups. */
        const int32_t words = a->ic >> 2;
        for (int32_t ky = 0; ky < a->fh; ++ky) {
            const int32_t iy = iy0 + a->dh * ky;
            const bool row_in = iy >= 0 && iy < a->ih;
            const int8_t *row = a->x + (n * a->ih + iy) * a->iw * a->ic;
            for (int32_t kx = 0; kx < a->fw; ++kx) {
                const int32_t ix = ix0 + a->dw * kx;
                if (row_in && ix >= 0 && ix < a->iw) {
                    const int8_t *src = row + ix * a->ic;
                    for (int32_t i = 0; i < words; ++i, src += 4, dst += 4) {
                        const uint32_t w = tfmb_ld32(src);
                        dst[0] = tfmb_sadd16(tfmb_sxtb16(w), a->off2);
                        dst[1] = tfmb_sadd16(tfmb_sxtb16_ror8(w), a->off2);
                    }
                } else {
                    for (int32_t i = 0; i < words; ++i, dst += 4) {
                        dst[0] = 0;
                        dst[1] = 0;
                    }
                }
            }
        }
        return;
    }
    /* Any channel count: value by value, four at a time (K's tail padded with zeros). */
    const int32_t k_all = a->fh * a->fw * a->ic;
    int32_t ky = 0, kx = 0, ch = 0;
    for (int32_t k = 0; k < k_all; k += 4, dst += 4) {
        int32_t v[4];
        for (int j = 0; j < 4; ++j) {
            if (k + j >= k_all) {
                v[j] = 0;
                continue;
            }
            v[j] = col_value(a, n, iy0, ix0, ky, kx, ch);
            if (++ch == a->ic) {
                ch = 0;
                if (++kx == a->fw) {
                    kx = 0;
                    ++ky;
                }
            }
        }
        dst[0] = ((uint32_t)v[0] & 0xFFFFu) | ((uint32_t)v[2] << 16);
        dst[1] = ((uint32_t)v[1] & 0xFFFFu) | ((uint32_t)v[3] << 16);
    }
}

#if TFMB_NATIVE_DSP
/* One group of dot_2x2: 4 scratch words, a weight word of each channel, 8 SMLAD. */
#define TFMB_DOT_GROUP \
    "ldm %[c]!, {%[xa0], %[xa1], %[xb0], %[xb1]}\n\t"                                              \
    "ldr %[w], [%[p0]], #4\n\t"                                                                     \
    "sxtb16 %[wl], %[w]\n\t"                                                                        \
    "sxtb16 %[w], %[w], ror #8\n\t"                                                                 \
    "smlad %[a00], %[wl], %[xa0], %[a00]\n\t"                                                       \
    "smlad %[a00], %[w], %[xa1], %[a00]\n\t"                                                        \
    "smlad %[a01], %[wl], %[xb0], %[a01]\n\t"                                                       \
    "smlad %[a01], %[w], %[xb1], %[a01]\n\t"                                                        \
    "ldr %[w], [%[p1]], #4\n\t"                                                                     \
    "sxtb16 %[wl], %[w]\n\t"                                                                        \
    "sxtb16 %[w], %[w], ror #8\n\t"                                                                 \
    "smlad %[a10], %[wl], %[xa0], %[a10]\n\t"                                                       \
    "smlad %[a10], %[w], %[xa1], %[a10]\n\t"                                                        \
    "smlad %[a11], %[wl], %[xb0], %[a11]\n\t"                                                       \
    "smlad %[a11], %[w], %[xb1], %[a11]\n\t"
#endif

/* acc[0..3] += channel w0 / w1 (`groups` weight words each) dotted with pixel A / B of the scratch
 * at *cp; the three pointers are left after what was read. */
static inline void dot_2x2(const uint32_t **cp, const int8_t **w0, const int8_t **w1, int32_t groups, uint32_t acc[4])
{
#if TFMB_NATIVE_DSP
    /* 15 instructions a group (the compiler's version of the C loop below spills; LDM needs its
     * registers in ascending order, so the four scratch words get fixed ones). All 13 free
     * registers are in use, so the loop's end is read from memory, once per 4 groups. */
    register uint32_t xa0 __asm__("r2"), xa1 __asm__("r3"), xb0 __asm__("r4"), xb1 __asm__("r5");
    uint32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3], w, wl;
    const uint32_t *c = *cp;
    const int8_t *p0 = *w0, *p1 = *w1;
    const uint32_t *const end = c + 4 * groups;
    for (int32_t g = groups & 3; g > 0; --g)
        __asm__ volatile(TFMB_DOT_GROUP
                         : [c] "+r"(c), [p0] "+r"(p0), [p1] "+r"(p1), [a00] "+r"(a00), [a01] "+r"(a01),
                           [a10] "+r"(a10), [a11] "+r"(a11), [w] "=&r"(w), [wl] "=&r"(wl), [xa0] "=&r"(xa0),
                           [xa1] "=&r"(xa1), [xb0] "=&r"(xb0), [xb1] "=&r"(xb1)
                         :
                         : "memory");
    if (c != end)
        __asm__ volatile("1:\n\t" TFMB_DOT_GROUP TFMB_DOT_GROUP TFMB_DOT_GROUP TFMB_DOT_GROUP
                         "ldr %[wl], %[end]\n\t"
                         "cmp %[c], %[wl]\n\t"
                         "bne 1b\n\t"
                         : [c] "+r"(c), [p0] "+r"(p0), [p1] "+r"(p1), [a00] "+r"(a00), [a01] "+r"(a01),
                           [a10] "+r"(a10), [a11] "+r"(a11), [w] "=&r"(w), [wl] "=&r"(wl), [xa0] "=&r"(xa0),
                           [xa1] "=&r"(xa1), [xb0] "=&r"(xb0), [xb1] "=&r"(xb1)
                         : [end] "m"(end)
                         : "cc", "memory");
    acc[0] = a00;
    acc[1] = a01;
    acc[2] = a10;
    acc[3] = a11;
    *cp = c;
    *w0 = p0;
    *w1 = p1;
#else
    const uint32_t *c = *cp;
    const int8_t *p0 = *w0, *p1 = *w1;
    for (int32_t g = groups; g > 0; --g, c += 4, p0 += 4, p1 += 4) {
        uint32_t w = tfmb_ld32(p0), wl = tfmb_sxtb16(w), wh = tfmb_sxtb16_ror8(w);
        acc[0] = (uint32_t)tfmb_smlad(wh, c[1], tfmb_smlad(wl, c[0], (int32_t)acc[0]));
        acc[1] = (uint32_t)tfmb_smlad(wh, c[3], tfmb_smlad(wl, c[2], (int32_t)acc[1]));
        w = tfmb_ld32(p1);
        wl = tfmb_sxtb16(w);
        wh = tfmb_sxtb16_ror8(w);
        acc[2] = (uint32_t)tfmb_smlad(wh, c[1], tfmb_smlad(wl, c[0], (int32_t)acc[2]));
        acc[3] = (uint32_t)tfmb_smlad(wh, c[3], tfmb_smlad(wl, c[2], (int32_t)acc[3]));
    }
    *cp = c;
    *w0 = p0;
    *w1 = p1;
#endif
}

/* A weight word of the last k_tail (1..3) weights, the rest zero. */
static inline uint32_t tail_word(const int8_t *w, int32_t k_tail)
{
    uint32_t v = 0;
    for (int32_t j = 0; j < k_tail; ++j) v |= (uint32_t)(uint8_t)w[j] << (8 * j);
    return v;
}

/* Requantization parameters of one output channel (tfmb_requant's, read once per channel). */
typedef struct {
    int32_t bias, mult, left, right, mask_half;
    uint32_t mask;
} rq_t;

static inline rq_t rq_load(const uint8_t *b, const uint8_t *mult, const uint8_t *shift, int32_t o)
{
    const int32_t s = (int32_t)tfmb_ld32(shift + 4 * o);
    rq_t r;
    r.bias = b ? (int32_t)tfmb_ld32(b + 4 * o) : 0;
    r.mult = (int32_t)tfmb_ld32(mult + 4 * o);
    r.left = s > 0 ? s : 0;
    r.right = s > 0 ? 0 : -s;
    r.mask = (uint32_t)((1ull << r.right) - 1u);
    r.mask_half = (int32_t)(r.mask >> 1);
    return r;
}

/* tfmb_requant's exact result (see tfmb_mbqm_fast; RoundingDivideByPOT with the channel's mask). */
static inline int8_t rq_apply(const rq_t *r, uint32_t acc, int32_t out_off, int32_t lo, int32_t hi)
{
    const int32_t x = (int32_t)((acc + (uint32_t)r->bias) << r->left);
    const int64_t ab = (int64_t)x * (int64_t)r->mult;
    const int32_t h = (int32_t)((ab + (1LL << 30)) >> 31);
    const int32_t rem = (int32_t)((uint32_t)h & r->mask);
    const int32_t threshold = r->mask_half - (h >> 31); /* + 1 when h < 0 */
    int32_t v = (h >> r->right) + (rem > threshold ? 1 : 0);
    v = tfmb_wadd(v, out_off);
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

void tfmb_conv_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *in = &t[0], *filt = &t[1];
    const int32_t in_off = op->p[0];
    const col_args_t a = {
        .x = (const int8_t *)(c->arena + in->offset),
        .ih = in->d[1], .iw = in->d[2], .ic = in->d[3], .fh = filt->d[1], .fw = filt->d[2],
        .sh = op->p[4], .sw = op->p[5], .dh = op->p[6], .dw = op->p[7], .ph = op->p[8], .pw = op->p[9],
        .off2 = ((uint32_t)in_off & 0xFFFFu) | ((uint32_t)in_off << 16),
    };
    const int8_t *f = (const int8_t *)(c->data + filt->offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const uint8_t *b = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0;
    const uint8_t *mult = c->data + op->p[10], *shift = c->data + op->p[11];
    const int32_t out_off = op->p[1], lo = op->p[2], hi = op->p[3];
    const int32_t oh = out->d[1], ow = out->d[2], oc = out->d[3];
    const int32_t k_all = a.fh * a.fw * a.ic, groups = k_all >> 2, k_tail = k_all & 3;
    const int32_t pixels = in->d[0] * oh * ow;
    uint32_t *col = (uint32_t *)tfmb_scratch(op, c);

    int32_t n = 0, oy = 0, ox = 0; /* pixel A's position */
    for (int32_t p = 0; p < pixels; p += 2) {
        const bool pair = p + 1 < pixels;
        col_fill(&a, col, 0, n, oy, ox);
        if (++ox == ow) {
            ox = 0;
            if (++oy == oh) {
                oy = 0;
                ++n;
            }
        }
        if (pair) {
            col_fill(&a, col, 1, n, oy, ox);
            if (++ox == ow) {
                ox = 0;
                if (++oy == oh) {
                    oy = 0;
                    ++n;
                }
            }
        } else {
            for (int32_t g = 0; g < (k_all + 3) >> 2; ++g) col[4 * g + 2] = col[4 * g + 3] = 0;
        }
        int8_t *ya = y + p * oc, *yb = ya + oc;
        for (int32_t o = 0; o < oc; o += 2) {
            const bool two = o + 1 < oc;
            const int8_t *w0 = f + o * k_all, *w1 = two ? w0 + k_all : w0;
            uint32_t acc[4] = {0, 0, 0, 0}; /* channel 0 pixel A, B; channel 1 pixel A, B */
            const uint32_t *cp = col;
            dot_2x2(&cp, &w0, &w1, groups, acc);
            if (k_tail) {
                const uint32_t xa0 = cp[0], xa1 = cp[1], xb0 = cp[2], xb1 = cp[3];
                uint32_t w = tail_word(w0, k_tail), wl = tfmb_sxtb16(w), wh = tfmb_sxtb16_ror8(w);
                acc[0] = (uint32_t)tfmb_smlad(wh, xa1, tfmb_smlad(wl, xa0, (int32_t)acc[0]));
                acc[1] = (uint32_t)tfmb_smlad(wh, xb1, tfmb_smlad(wl, xb0, (int32_t)acc[1]));
                w = tail_word(w1, k_tail);
                wl = tfmb_sxtb16(w);
                wh = tfmb_sxtb16_ror8(w);
                acc[2] = (uint32_t)tfmb_smlad(wh, xa1, tfmb_smlad(wl, xa0, (int32_t)acc[2]));
                acc[3] = (uint32_t)tfmb_smlad(wh, xb1, tfmb_smlad(wl, xb0, (int32_t)acc[3]));
            }
            const rq_t r0 = rq_load(b, mult, shift, o);
            ya[o] = rq_apply(&r0, acc[0], out_off, lo, hi);
            if (pair) yb[o] = rq_apply(&r0, acc[1], out_off, lo, hi);
            if (two) {
                const rq_t r1 = rq_load(b, mult, shift, o + 1);
                ya[o + 1] = rq_apply(&r1, acc[2], out_off, lo, hi);
                if (pair) yb[o + 1] = rq_apply(&r1, acc[3], out_off, lo, hi);
            }
        }
    }
}

#endif /* TFMB_CORE == TFMB_CORE_DSP */
