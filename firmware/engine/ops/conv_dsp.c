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
 * The columns come from: the input pixels themselves (1x1 filters without padding), runs of
 * whole words (ic % 4 == 0; a filter row on the input is one run), an int8 gather on the stack
 * (ic % 4 != 0, K <= 64: first layers with 1 or 3 channels), else value by value.
 *
 * The dot products take 2 output channels x 2 pixels (4 accumulators, started at the bias) per
 * weight word pair: 2 LDR + 4 SXTB16 + 1 LDM + 8 SMLAD for 16 MACs. On the target the whole loop
 * over channel pairs is assembly (conv_pairs_native) with the requantization of the four outputs
 * (a shorter exact rounding, see rq_store2) when every channel's shift allows it. For the first
 * CONV_RS_MAX channels the op first lays out a table on the stack (bias, tfmb_rs_t: the output
 * offset folded into one 64-bit multiply-add) that conv_pairs_rs reads, so a channel's outputs
 * cost 6 instructions each; the C blocks
 * below do the rest (and are what host test builds run, with tfmb_simd.h's portable intrinsics).
 * The tail of K (K % 4) is zero in the scratch; its weights are read byte by byte in C, and the
 * assembly reads a whole word only where the bytes after a filter are the next filter's.
 * An odd last pixel runs as pixel pair (A, A), an odd last channel as channel pair (o, o), and
 * their extra results are not stored. Accumulation wraps modulo 2**32 like the reference, and the
 * order of the additions does not matter then.
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

/* `words` input words from src expanded into the slot's two words of as many groups (stride 4). */
static inline uint32_t *expand_run(uint32_t *dst, const int8_t *src, int32_t words, uint32_t off2)
{
#pragma GCC unroll 2
    for (int32_t i = 0; i < words; ++i, src += 4, dst += 4) {
        const uint32_t w = tfmb_ld32(src);
        dst[0] = tfmb_sadd16(tfmb_sxtb16(w), off2);
        dst[1] = tfmb_sadd16(tfmb_sxtb16_ror8(w), off2);
    }
    return dst;
}

/* One pixel's column into slot `s` (0: A, 1: B) of the pair's scratch `col` (4 words a group). */
static void col_fill(const col_args_t *a, uint32_t *col, int s, int32_t n, int32_t oy, int32_t ox)
{
    const int32_t iy0 = oy * a->sh - a->ph, ix0 = ox * a->sw - a->pw;
    const int32_t ih = a->ih, iw = a->iw, ic = a->ic, fh = a->fh, fw = a->fw, dh = a->dh, dw = a->dw;
    const uint32_t off2 = a->off2; /* a local: the scratch stores cannot change it */
    uint32_t *dst = col + 2 * s;
    if ((ic & 3) == 0) {
        /* Whole words: every tap is ic / 4 groups; a filter row wholly on the input (dilation 1) is
         * one run of fw * ic / 4 words. */
        const int32_t words = ic >> 2;
        const bool row_run = dw == 1 && ix0 >= 0 && ix0 + fw <= iw;
        for (int32_t ky = 0; ky < fh; ++ky) {
            const int32_t iy = iy0 + dh * ky;
            const bool row_in = iy >= 0 && iy < ih;
            const int8_t *row = a->x + (n * ih + iy) * iw * ic;
            if (row_in && row_run) {
                dst = expand_run(dst, row + ix0 * ic, words * fw, off2);
                continue;
            }
            for (int32_t kx = 0; kx < fw; ++kx) {
                const int32_t ix = ix0 + dw * kx;
                if (row_in && ix >= 0 && ix < iw) {
                    dst = expand_run(dst, row + ix * ic, words, off2);
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

/* Columns of at most this many values (rounded up to 4) are gathered as int8 on the stack before
 * they are expanded (any channel count); longer ones with ic % 4 != 0 go value by value. */
#define CONV_GATHER_MAX 64
/* Filters up to this long (rounded up to 4) with K % 4 != 0 get the last channel pair's copy. */
#define CONV_LAST_MAX 64
/* Layers with at most this many output channels keep their constants in a table on the stack
 * (20 bytes a channel). */
#define CONV_RS_MAX 64

/* One pixel's int8 column (padding taps as -input offset, which expands to 0), up to k4 values. */
static void col_gather(const col_args_t *a, int8_t *dst, int32_t k4, int32_t n, int32_t oy, int32_t ox)
{
    const int32_t iy0 = oy * a->sh - a->ph, ix0 = ox * a->sw - a->pw;
    const int8_t pad = (int8_t)-(int32_t)(int16_t)(a->off2 & 0xFFFFu);
    int8_t *d = dst;
    for (int32_t ky = 0; ky < a->fh; ++ky) {
        const int32_t iy = iy0 + a->dh * ky;
        const bool row_in = iy >= 0 && iy < a->ih;
        const int8_t *row = a->x + (n * a->ih + iy) * a->iw * a->ic;
        int32_t kx = 0;
        if (row_in && a->dw == 1 && ix0 >= 0 && ix0 + a->fw <= a->iw) {
            /* The whole filter row on the input: one run of fw * ic bytes. */
            const int8_t *src = row + ix0 * a->ic;
            int32_t len = a->fw * a->ic;
            for (; len >= 4; len -= 4, src += 4, d += 4) tfmb_st32(d, tfmb_ld32(src));
            for (; len > 0; --len) *d++ = *src++;
            continue;
        }
        for (; kx < a->fw; ++kx) {
            const int32_t ix = ix0 + a->dw * kx;
            if (row_in && ix >= 0 && ix < a->iw) {
                const int8_t *src = row + ix * a->ic;
                for (int32_t i = a->ic; i > 0; --i) *d++ = *src++;
            } else {
                for (int32_t i = a->ic; i > 0; --i) *d++ = pad;
            }
        }
    }
    while (d < dst + k4) *d++ = pad;
}

/* The pair's scratch from two int8 columns (gathered, or input pixels; k4 values each, k4 % 4 == 0). */
static void col_expand(const col_args_t *a, uint32_t *col, const int8_t *ca, const int8_t *cb, int32_t k4)
{
    for (int32_t k = 0; k < k4; k += 4, col += 4) {
        const uint32_t wa = tfmb_ld32(ca + k), wb = tfmb_ld32(cb + k);
        col[0] = tfmb_sadd16(tfmb_sxtb16(wa), a->off2);
        col[1] = tfmb_sadd16(tfmb_sxtb16_ror8(wa), a->off2);
        col[2] = tfmb_sadd16(tfmb_sxtb16(wb), a->off2);
        col[3] = tfmb_sadd16(tfmb_sxtb16_ror8(wb), a->off2);
    }
}

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

/* What requantization reads: per channel arrays and the op's output constants. */
typedef struct {
    const uint8_t *mult, *shift;
    int32_t out_off, lo, hi;
} rq_ctx_t;

/* Requantization of one channel's two outputs (pixel A to *ya, B to *yb), the accumulators
 * already holding the bias. The common case (no left shift, a right shift e in 1..23) takes a
 * shorter exact route: with h = SaturatingRoundingDoublingHighMul's result, RoundingDivideByPOT
 * (h, e) is floor((h + 2**(e-1) - (h < 0)) / 2**e); that addend is >= 0, and when adding it
 * would overflow, h is so large that the saturated sum (QADD), shifted, still exceeds 255, so
 * the output clamps to hi either way (out_off >= -128, hi <= 127). Other shifts take
 * tfmb_mbqm_fast (tfmb_requant's arithmetic). */
static inline void rq_store2(const rq_ctx_t *q, int32_t o, uint32_t acc_a, uint32_t acc_b, int8_t *ya, int8_t *yb)
{
    const int32_t m = (int32_t)tfmb_ld32(q->mult + 4 * o), shift = (int32_t)tfmb_ld32(q->shift + 4 * o);
    const int32_t right = -shift;
    if ((uint32_t)(right - 1) < 23u) {
        const int32_t half = (int32_t)(1u << (right - 1));
#if TFMB_NATIVE_DSP
        uint32_t t0, t1;
        __asm__ volatile("mov %[t0], #0x40000000\n\t"
                "movs %[t1], #0\n\t"
                "smlal %[t0], %[t1], %[xa], %[m]\n\t"
                "lsrs %[t0], %[t0], #31\n\t"
                "orr %[xa], %[t0], %[t1], lsl #1\n\t"
                "add %[t0], %[half], %[xa], asr #31\n\t"
                "qadd %[xa], %[xa], %[t0]\n\t"
                "asrs %[xa], %[xa], %[r]\n\t"
                "add %[xa], %[xa], %[off]\n\t"
                "cmp %[xa], %[lo]\n\t"
                "it lt\n\t"
                "movlt %[xa], %[lo]\n\t"
                "cmp %[xa], %[hi]\n\t"
                "it gt\n\t"
                "movgt %[xa], %[hi]\n\t"
                "strb %[xa], [%[ya]]\n\t"
                "mov %[t0], #0x40000000\n\t"
                "movs %[t1], #0\n\t"
                "smlal %[t0], %[t1], %[xb], %[m]\n\t"
                "lsrs %[t0], %[t0], #31\n\t"
                "orr %[xb], %[t0], %[t1], lsl #1\n\t"
                "add %[t0], %[half], %[xb], asr #31\n\t"
                "qadd %[xb], %[xb], %[t0]\n\t"
                "asrs %[xb], %[xb], %[r]\n\t"
                "add %[xb], %[xb], %[off]\n\t"
                "cmp %[xb], %[lo]\n\t"
                "it lt\n\t"
                "movlt %[xb], %[lo]\n\t"
                "cmp %[xb], %[hi]\n\t"
                "it gt\n\t"
                "movgt %[xb], %[hi]\n\t"
                "strb %[xb], [%[yb]]\n\t"
                : [xa] "+&r"(acc_a), [xb] "+&r"(acc_b), [t0] "=&r"(t0), [t1] "=&r"(t1)
                : [m] "r"(m), [half] "r"(half), [r] "r"(right), [off] "r"(q->out_off), [lo] "r"(q->lo),
                  [hi] "r"(q->hi), [ya] "r"(ya), [yb] "r"(yb)
                : "cc", "memory");
#else
        const uint32_t accs[2] = {acc_a, acc_b};
        int8_t *ys[2] = {ya, yb};
        for (int i = 0; i < 2; ++i) {
            const int64_t ab = (int64_t)(int32_t)accs[i] * (int64_t)m;
            const int32_t h = (int32_t)((ab + (1LL << 30)) >> 31);
            const int32_t v = tfmb_wadd(tfmb_qadd(h, half + (h >> 31)) >> right, q->out_off);
            *ys[i] = (int8_t)(v < q->lo ? q->lo : (v > q->hi ? q->hi : v));
        }
#endif
        return;
    }
    const int32_t va = tfmb_wadd(tfmb_mbqm_fast((int32_t)acc_a, m, shift), q->out_off);
    const int32_t vb = tfmb_wadd(tfmb_mbqm_fast((int32_t)acc_b, m, shift), q->out_off);
    *ya = (int8_t)tfmb_clamp(va, q->lo, q->hi);
    *yb = (int8_t)tfmb_clamp(vb, q->lo, q->hi);
}

#if TFMB_NATIVE_DSP
/* What conv_pairs_native reads and advances, at fixed offsets (the assembly below names them). */
typedef struct {
    const uint32_t *col;      /*  0: the pair's scratch */
    const int8_t *w;          /*  4: filter of the next channel pair (advanced) */
    int32_t k;                /*  8: K, bytes a filter */
    const uint32_t *col_mid;  /* 12: col + 4 * (groups % 4): single groups before it */
    const int32_t *bias;      /* 16: bias of the next pair (advanced by bias_step) */
    int32_t bias_step;        /* 20: 8, or 0 with no bias (a pair of zeros) */
    const int32_t *mult;      /* 24: (advanced) */
    const int32_t *shift;     /* 28: (advanced) */
    int8_t *ya;               /* 32: pixel A's output at the next pair (advanced) */
    int32_t yb_off;           /* 36: pixel B's output - pixel A's (0 for a lone pixel) */
    int32_t out_off;          /* 40 */
    uint32_t lo4, hi4;        /* 44, 48: the clamp's bounds in each byte */
    int32_t pairs;            /* 52: channel pairs left */
    const uint32_t *col_end;  /* 56 */
    const struct conv_rs *rs; /* 60: conv_pairs_rs: the next pair's channel constants (advanced) */
} conv_run_t;

/* One output channel's constants for conv_pairs_rs: its bias and tfmb_rs_t's requantization
 * (the output offset folded in), in the order the assembly loads them (LDRD pairs). */
typedef struct conv_rs {
    int32_t bias;  /*  0 */
    uint32_t k_lo; /*  4 */
    int32_t k_hi;  /*  8 */
    int32_t mult;  /* 12 */
    int32_t rsh;   /* 16 */
} conv_rs_t;

/* One group (4 values) of both channels x both pixels: r2-r5 the scratch words, r12 / r1 a weight
 * word split, r6-r9 the accumulators, r10 / r11 the two filters, lr the scratch pointer. */
#define CONV_G                                                                                     \
    "ldm lr!, {r2, r3, r4, r5}\n\t"                                                                \
    "ldr r12, [r10], #4\n\t"                                                                       \
    "sxtb16 r1, r12\n\t"                                                                           \
    "sxtb16 r12, r12, ror #8\n\t"                                                                  \
    "smlad r6, r1, r2, r6\n\t"                                                                     \
    "smlad r6, r12, r3, r6\n\t"                                                                    \
    "smlad r7, r1, r4, r7\n\t"                                                                     \
    "smlad r7, r12, r5, r7\n\t"                                                                    \
    "ldr r12, [r11], #4\n\t"                                                                       \
    "sxtb16 r1, r12\n\t"                                                                           \
    "sxtb16 r12, r12, ror #8\n\t"                                                                  \
    "smlad r8, r1, r2, r8\n\t"                                                                     \
    "smlad r8, r12, r3, r8\n\t"                                                                    \
    "smlad r9, r1, r4, r9\n\t"                                                                     \
    "smlad r9, r12, r5, r9\n\t"

/* rq_store2's fast route on accumulator x up to the clamp (saturated to int8 first): r2 the
 * multiplier, r4 the right shift, r12 2**(right-1), lr out_off. */
#define CONV_OUT(x)                                                                                \
    "mov r10, #0x40000000\n\t"                                                                     \
    "mov r11, #0\n\t"                                                                              \
    "smlal r10, r11, " x ", r2\n\t"                                                                \
    "lsr r10, r10, #31\n\t"                                                                        \
    "orr " x ", r10, r11, lsl #1\n\t"                                                              \
    "add r10, r12, " x ", asr #31\n\t"                                                             \
    "qadd " x ", " x ", r10\n\t"                                                                   \
    "asr " x ", " x ", r4\n\t"                                                                     \
    "add " x ", " x ", lr\n\t"                                                                     \
    "ssat " x ", #8, " x "\n\t"

/* Channel ch (0, 1) of the pair: its parameters, its two outputs. */
#define CONV_CH(ch, xa, xb)                                                                        \
    "ldr r5, [r0, #24]\n\t"                                                                        \
    "ldr r2, [r5, #" #ch "*4]\n\t"                                                                 \
    "ldr r5, [r0, #28]\n\t"                                                                        \
    "ldr r4, [r5, #" #ch "*4]\n\t"                                                                 \
    "rsb r4, r4, #0\n\t"                                                                           \
    "sub r5, r4, #1\n\t"                                                                           \
    "mov r12, #1\n\t"                                                                              \
    "lsl r12, r12, r5\n\t"                                                                         \
    CONV_OUT(xa) CONV_OUT(xb)

/* The four int8 outputs packed A0 A1 B0 B1 in one word, clamped to [lo, hi] byte-wise (SSUB8 sets
 * the GE flags, SEL picks), stored as pixel A's and pixel B's halfwords. */
#define CONV_STORE                                                                                 \
    "pkhbt r6, r6, r7, lsl #16\n\t"                                                                \
    "pkhbt r8, r8, r9, lsl #16\n\t"                                                                \
    "uxtb16 r6, r6\n\t"                                                                            \
    "uxtb16 r8, r8\n\t"                                                                            \
    "orr r6, r6, r8, lsl #8\n\t"                                                                   \
    "ldr r1, [r0, #44]\n\t"                                                                        \
    "ssub8 r2, r6, r1\n\t"                                                                         \
    "sel r6, r6, r1\n\t"                                                                           \
    "ldr r1, [r0, #48]\n\t"                                                                        \
    "ssub8 r2, r1, r6\n\t"                                                                         \
    "sel r6, r6, r1\n\t"                                                                           \
    "ldr r5, [r0, #32]\n\t"                                                                        \
    "ldr r10, [r0, #36]\n\t"                                                                       \
    "strh r6, [r5]\n\t"                                                                            \
    "lsr r6, r6, #16\n\t"                                                                          \
    "strh r6, [r5, r10]\n\t"

/* The dot products of one channel pair and pixel pair (both loops' bodies): the pair's two filter
 * pointers (advancing the run's by two filters), then the single groups up to col_mid and the
 * groups by four up to col_end; the accumulators r6-r9 hold the bias on entry. */
#define CONV_DOTS                                                                                  \
    "ldr r10, [r0, #4]\n\t" \
    "ldr r2, [r0, #8]\n\t" \
    "add r11, r10, r2\n\t" \
    "add r2, r11, r2\n\t" \
    "str r2, [r0, #4]\n\t" \
    "ldr lr, [r0, #0]\n\t" \
    "ldr r1, [r0, #12]\n\t" \
    "cmp lr, r1\n\t" \
    "beq 3f\n\t" \
    "2:\n\t" CONV_G \
    "ldr r1, [r0, #12]\n\t" \
    "cmp lr, r1\n\t" \
    "bne 2b\n\t" \
    "3:\n\t" \
    "ldr r1, [r0, #56]\n\t" \
    "cmp lr, r1\n\t" \
    "beq 5f\n\t" \
    "4:\n\t" CONV_G CONV_G CONV_G CONV_G \
    "ldr r1, [r0, #56]\n\t" \
    "cmp lr, r1\n\t" \
    "bne 4b\n\t" \
    "5:\n\t"

/* Count the channel pair done; back to the loop's top (label 1) while pairs are left. */
#define CONV_NEXT_PAIR                                                                             \
    "ldr r5, [r0, #52]\n\t"                                                                        \
    "subs r5, r5, #1\n\t"                                                                          \
    "str r5, [r0, #52]\n\t"                                                                        \
    "bne 1b\n\t"

/* Every channel pair of a pixel pair in one loop of assembly (the compiler's version of the
 * C blocks spends about as many instructions around each block as in its requantization): the
 * dot products as dot_2x2, then rq_store2's fast route for the four outputs (the clamp of all four
 * at once: they are saturated to int8 first, which changes nothing as lo >= -128 and hi <= 127;
 * the stores are halfwords: channels o, o + 1 are adjacent). Needs every
 * channel's right shift in 1..23; s->pairs >= 1. It uses every register but sp and pc (r7
 * included: the firmware builds with -O2, no frame pointer). */
static void conv_pairs_native(conv_run_t *s)
{
    register conv_run_t *r0 __asm__("r0") = s;
    __asm__ volatile(
        "1:\n\t"
        "ldr r1, [r0, #16]\n\t"
        "ldr r6, [r1]\n\t"
        "ldr r8, [r1, #4]\n\t"
        "ldr r2, [r0, #20]\n\t"
        "add r1, r1, r2\n\t"
        "str r1, [r0, #16]\n\t"
        "mov r7, r6\n\t"
        "mov r9, r8\n\t"
        CONV_DOTS
        "ldr lr, [r0, #40]\n\t"
        CONV_CH(0, "r6", "r7") CONV_CH(1, "r8", "r9") CONV_STORE
        "ldr r5, [r0, #24]\n\t"
        "add r5, r5, #8\n\t"
        "str r5, [r0, #24]\n\t"
        "ldr r5, [r0, #28]\n\t"
        "add r5, r5, #8\n\t"
        "str r5, [r0, #28]\n\t"
        "ldr r5, [r0, #32]\n\t"
        "add r5, r5, #2\n\t"
        "str r5, [r0, #32]\n\t"
        CONV_NEXT_PAIR
        : "+r"(r0)
        :
        : "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "lr", "cc", "memory");
}

/* tfmb_rs_apply on accumulator x, saturated to int8: r2 / r3 K's words, r4 the multiplier, r12
 * the shift e - 1 (the output offset is in K). */
#define CONV_RS_OUT(x)                                                                             \
    "and r10, " x ", #0x80000000\n\t"                                                              \
    "adds r10, r2, r10\n\t"                                                                        \
    "adc r11, r3, " x ", asr #31\n\t"                                                              \
    "smlal r10, r11, " x ", r4\n\t"                                                                \
    "asr " x ", r11, r12\n\t"                                                                      \
    "ssat " x ", #8, " x "\n\t"

/* Channel `at` (byte offset 0 or 20 of the pair's constants at r5): its two outputs. */
#define CONV_RS_CH(at, xa, xb)                                                                     \
    "ldrd r2, r3, [r5, #" #at " + 4]\n\t"                                                          \
    "ldrd r4, r12, [r5, #" #at " + 12]\n\t"                                                        \
    CONV_RS_OUT(xa) CONV_RS_OUT(xb)

/* conv_pairs_native with each channel's constants precomputed (conv_rs_t, s->rs): the bias
 * and the requantization come from one table, so a channel's outputs take 6 instructions each
 * instead of 10 and its set-up 2 loads instead of 8 instructions. Same conditions. */
static void conv_pairs_rs(conv_run_t *s)
{
    register conv_run_t *r0 __asm__("r0") = s;
    __asm__ volatile(
        "1:\n\t"
        "ldr r5, [r0, #60]\n\t"
        "ldr r6, [r5]\n\t"
        "ldr r8, [r5, #20]\n\t"
        "mov r7, r6\n\t"
        "mov r9, r8\n\t"
        CONV_DOTS
        "ldr r5, [r0, #60]\n\t"
        CONV_RS_CH(0, "r6", "r7") CONV_RS_CH(20, "r8", "r9")
        "add r5, r5, #40\n\t"
        "str r5, [r0, #60]\n\t"
        CONV_STORE /* (leaves r5 at pixel A's outputs) */
        "add r5, r5, #2\n\t"
        "str r5, [r0, #32]\n\t"
        CONV_NEXT_PAIR
        : "+r"(r0)
        :
        : "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "lr", "cc", "memory");
}
#endif

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
    const rq_ctx_t q = {c->data + op->p[10], c->data + op->p[11], op->p[1], op->p[2], op->p[3]};
    const int32_t oh = out->d[1], ow = out->d[2], oc = out->d[3];
    const int32_t k_all = a.fh * a.fw * a.ic, groups = k_all >> 2, k_tail = k_all & 3;
    const int32_t pixels = in->d[0] * oh * ow;
    const int32_t k4 = (k_all + 3) & ~3;
    uint32_t *col = (uint32_t *)tfmb_scratch(op, c);
    /* ic % 4 != 0: the int8 columns on the stack first. */
    const bool gathered = (a.ic & 3) != 0 && k4 <= CONV_GATHER_MAX;
    int8_t ga[CONV_GATHER_MAX], gb[CONV_GATHER_MAX];
    /* (the last output pixel's input inside too: validate does not tie output to input sizes) */
    const bool pointwise = a.fh == 1 && a.fw == 1 && a.ph == 0 && a.pw == 0 && (a.ic & 3) == 0 &&
                           (oh - 1) * a.sh < a.ih && (ow - 1) * a.sw < a.iw;
#if TFMB_NATIVE_DSP
    /* The assembly loop over channel pairs, every channel on the fast route. With K % 4 != 0 it runs
     * over K rounded up to 4 (the scratch's tail is 0, the weights read past a filter belong to the
     * next channel) on all pairs but the last, so no weight past the filter tensor is read. */
    const int32_t native_pairs = k_tail ? (oc - 1) >> 1 : oc >> 1;
    /* With K % 4 != 0 and an even channel count, the last pair runs on a zero-padded copy of its
     * two filters (short filters: first layers). */
    const bool last_copy = k_tail != 0 && (oc & 1) == 0 && k4 <= CONV_LAST_MAX;
    int8_t w_last[2 * CONV_LAST_MAX];
    bool native = native_pairs >= 1 || last_copy;
    for (int32_t o = 0; native && o < oc; ++o) {
        const int32_t right = -(int32_t)tfmb_ld32(q.shift + 4 * o);
        native = (uint32_t)(right - 1) < 23u;
    }
    if (native && last_copy)
        for (int32_t j = 0; j < k4; ++j) {
            w_last[j] = j < k_all ? f[(oc - 2) * k_all + j] : 0;
            w_last[k4 + j] = j < k_all ? f[(oc - 1) * k_all + j] : 0;
        }
    /* The first CONV_RS_MAX channels: their constants precomputed once for every pixel pair. */
    conv_rs_t rs[CONV_RS_MAX];
    const int32_t rs_channels = native ? (oc < CONV_RS_MAX ? oc : CONV_RS_MAX) : 0;
    for (int32_t o = 0; o < rs_channels; ++o) {
        const tfmb_rs_t r = tfmb_rs_make((int32_t)tfmb_ld32(q.mult + 4 * o), (int32_t)tfmb_ld32(q.shift + 4 * o),
                                         q.out_off);
        rs[o] = (conv_rs_t){b ? (int32_t)tfmb_ld32(b + 4 * o) : 0, r.k_lo, r.k_hi, r.mult, r.rsh};
    }
    static const int32_t no_bias[2] = {0, 0};
    conv_run_t run = {
        .col = col, .k = k_all, .col_mid = col + 4 * ((k4 >> 2) & 3), .col_end = col + k4,
        .bias_step = b ? 8 : 0, .out_off = q.out_off,
        .lo4 = ((uint32_t)q.lo & 0xFFu) * 0x01010101u, .hi4 = ((uint32_t)q.hi & 0xFFu) * 0x01010101u,
    };
#endif

    int32_t n = 0, oy = 0, ox = 0; /* pixel A's position */
    for (int32_t p = 0; p < pixels; p += 2) {
        const bool pair = p + 1 < pixels;
        const int32_t na = n, oya = oy, oxa = ox;
        if (++ox == ow) {
            ox = 0;
            if (++oy == oh) {
                oy = 0;
                ++n;
            }
        }
        /* An odd last pixel pairs with itself (B's results are not stored). */
        const int32_t nb = pair ? n : na, oyb = pair ? oy : oya, oxb = pair ? ox : oxa;
        if (pair && ++ox == ow) {
            ox = 0;
            if (++oy == oh) {
                oy = 0;
                ++n;
            }
        }
        if (pointwise) {
            /* A 1x1 filter without padding: each column is one input pixel, expanded in place. */
            col_expand(&a, col, a.x + ((na * a.ih + oya * a.sh) * a.iw + oxa * a.sw) * a.ic,
                       a.x + ((nb * a.ih + oyb * a.sh) * a.iw + oxb * a.sw) * a.ic, k4);
        } else if (gathered) {
            col_gather(&a, ga, k4, na, oya, oxa);
            col_gather(&a, gb, k4, nb, oyb, oxb);
            col_expand(&a, col, ga, gb, k4);
        } else {
            col_fill(&a, col, 0, na, oya, oxa);
            col_fill(&a, col, 1, nb, oyb, oxb);
        }
        /* A lone last pixel's B results are A's again (same column): stored over A's. */
        int8_t *ya = y + p * oc, *yb = pair ? ya + oc : ya;
        int32_t o_first = 0;
#if TFMB_NATIVE_DSP
        if (native) {
            run.yb_off = (int32_t)(yb - ya);
            if (native_pairs) {
                run.w = f;
                run.k = k_all;
                run.bias = b ? (const int32_t *)(const void *)b : no_bias;
                run.mult = (const int32_t *)(const void *)q.mult;
                run.shift = (const int32_t *)(const void *)q.shift;
                run.ya = ya;
                run.rs = rs;
                const int32_t rs_pairs = native_pairs < (rs_channels >> 1) ? native_pairs : rs_channels >> 1;
                if (rs_pairs) {
                    run.pairs = rs_pairs;
                    conv_pairs_rs(&run);
                }
                if (native_pairs > rs_pairs) {
                    /* the channels past the table (conv_pairs_rs advanced w and ya) */
                    const int32_t o = 2 * rs_pairs;
                    run.bias = b ? (const int32_t *)(const void *)(b + 4 * o) : no_bias;
                    run.mult = (const int32_t *)(const void *)(q.mult + 4 * o);
                    run.shift = (const int32_t *)(const void *)(q.shift + 4 * o);
                    run.pairs = native_pairs - rs_pairs;
                    conv_pairs_native(&run);
                }
            }
            o_first = 2 * native_pairs;
            if (last_copy) {
                const int32_t o = oc - 2;
                run.w = w_last;
                run.k = k4;
                run.bias = b ? (const int32_t *)(const void *)(b + 4 * o) : no_bias;
                run.mult = (const int32_t *)(const void *)(q.mult + 4 * o);
                run.shift = (const int32_t *)(const void *)(q.shift + 4 * o);
                run.ya = ya + o;
                run.pairs = 1;
                run.rs = rs + o;
                if (oc <= rs_channels)
                    conv_pairs_rs(&run);
                else
                    conv_pairs_native(&run);
                o_first = oc;
            }
        }
#endif
        for (int32_t o = o_first; o < oc; o += 2) {
            const bool two = o + 1 < oc;
            const int8_t *w0 = f + o * k_all, *w1 = two ? w0 + k_all : w0;
            const uint32_t b0 = b ? tfmb_ld32(b + 4 * o) : 0u, b1 = b && two ? tfmb_ld32(b + 4 * o + 4) : 0u;
            /* channel 0 pixel A, B; channel 1 pixel A, B; started at the bias (wrapping sums commute) */
            uint32_t acc[4] = {b0, b0, b1, b1};
            const uint32_t *cp = col;
#ifndef CONV_NO_DOT
            dot_2x2(&cp, &w0, &w1, groups, acc);
#endif
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
            rq_store2(&q, o, acc[0], acc[1], ya + o, yb + o);
            if (two) rq_store2(&q, o + 1, acc[2], acc[3], ya + o + 1, yb + o + 1);
        }
    }
}

#endif /* TFMB_CORE == TFMB_CORE_DSP */
