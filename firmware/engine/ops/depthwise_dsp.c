/*
 * int8 DEPTHWISE_CONV_2D on a core with the DSP extension, bit-exact with the plain-C reference
 * (conv.c) and so with TFLM.
 *
 * Channels-last: four consecutive channels are one word of input and one word of a filter tap.
 * Depth multiplier 1: the loop runs per group of four channels over every output position, so
 * each channel's bias, multiplier, shift and filter taps are read once per group (the taps
 * sign-extended to halfwords once, kept on the stack), and a tap costs one input load, two
 * SXTB16 and four SMLABB/SMLATT. Interior positions (every tap inside the input) skip the input
 * offset: sum(w*(x+off)) == sum(w*x) + off*sum(w) (mod 2**32), so the group starts each
 * accumulator at bias + off*sum(w); border positions walk their clipped tap range and add the
 * offset per tap (SADD16), as the reference skips the taps outside. Requantization with a right
 * shift is one 64-bit multiply-add (tfmb_rs_apply, the output offset folded in), the clamp a
 * bytewise max/min of the packed word. The 3x3 interior taps and the border taps run as asm blocks
 * (the compiler's schedule spills the accumulators). Depth multipliers above 1 gather each tap's
 * four input bytes (lane j reads input channel (o + j) / dm) and clip every position. Channel
 * tails (C % 4) and filters of more than DW_MAX_TAPS taps take a scalar loop with the same hoisting.
 */
#include "../tfmb_simd.h"

#if TFMB_CORE == TFMB_CORE_DSP

#define DW_COLS 32     /* output columns whose clipped tap range is computed once per op */
#define DW_MAX_TAPS TFMB_DW_DSP_MAX_TAPS /* filter taps of the packed path (7x7): 2 words each on the stack (392 bytes) */

typedef struct {
    const int8_t *x, *f;
    int8_t *y;
    const uint8_t *b, *mult, *shift;
    int32_t in_off, out_off, lo, hi;
    int32_t sh, sw, dh, dw, ph, pw, dm;
    int32_t batches, ih, iw, ic, oh, ow, oc, fh, fw;
    int32_t ox_a, ox_b; /* output columns whose taps are all inside the input: [ox_a, ox_b) */
    uint8_t kx0[DW_COLS], kx1[DW_COLS]; /* the first DW_COLS output columns' taps inside (fw <= DW_MAX_TAPS) */
} dw_args_t;

/* The signed halfwords of a word. */
static inline int32_t dw_half_lo(uint32_t x) { return (int16_t)(x & 0xFFFFu); }
static inline int32_t dw_half_hi(uint32_t x) { return (int16_t)(x >> 16); }

/* One channel's requantization, hoisted out of the position loop. */
typedef struct {
    tfmb_rs_t rs; /* the output offset folded in (when tfmb_rs_ok(shift)) */
    int32_t bias, mult, shift;
} dw_rq_t;

static inline dw_rq_t dw_rq(const dw_args_t *a, int32_t o)
{
    dw_rq_t q;
    q.bias = a->b ? (int32_t)tfmb_ld32(a->b + 4 * o) : 0;
    q.mult = (int32_t)tfmb_ld32(a->mult + 4 * o);
    q.shift = (int32_t)tfmb_ld32(a->shift + 4 * o);
    q.rs = tfmb_rs_make(q.mult, tfmb_rs_ok(q.shift) ? q.shift : -1, a->out_off);
    return q;
}

/* acc (bias included) requantized, + output offset, before the clamp. */
static inline __attribute__((always_inline)) int32_t dw_out(int32_t acc, const dw_rq_t *q, int32_t out_off, bool rs)
{
    return rs ? tfmb_rs_apply(acc, &q->rs) : tfmb_wadd(tfmb_mbqm_fast(acc, q->mult, q->shift), out_off);
}

/* The first output column from which every later tap column up to `last` lies inside, i.e. the
 * columns [first, end) whose whole filter row falls inside [0, size). */
static void dw_inside_cols(int32_t outs, int32_t stride, int32_t pad, int32_t dil, int32_t taps, int32_t size,
                           int32_t *first, int32_t *end)
{
    int32_t o = 0;
    while (o < outs && o * stride - pad < 0) ++o;
    *first = o;
    while (o < outs && o * stride - pad + dil * (taps - 1) < size) ++o;
    *end = o;
}

/* What one group of four channels keeps for its whole position loop. */
typedef struct {
    const uint32_t *wq;  /* tap k: channels 0, 2 and 1, 3 sign-extended to halfwords (wq[2k], wq[2k+1]) */
    int32_t full[4];     /* bias + in_off * sum(w): the accumulators' start at interior positions */
    int32_t bias[4];     /* at border positions, where the offset is added per tap */
    int32_t side[4][4];  /* 3x3: bias + in_off * sum(w) without filter row 0, row 2, column 0, column 2 */
    bool sides;          /* side[] is set (the op has positions with one side of the window outside) */
    dw_rq_t q[4];
    uint32_t lo4, hi4, off2;
    int32_t out_off, row_step, col_step, step, ystep, fh, fw;
} dw_group_t;

/* Requantize, clamp and store four channels. */
static inline __attribute__((always_inline)) void dw_store4(int8_t *yp, int32_t a0, int32_t a1, int32_t a2, int32_t a3,
                                                          const dw_group_t *g, bool rs)
{
    const uint32_t v = tfmb_pack4(tfmb_ssat8(dw_out(a0, &g->q[0], g->out_off, rs)),
                                  tfmb_ssat8(dw_out(a1, &g->q[1], g->out_off, rs)),
                                  tfmb_ssat8(dw_out(a2, &g->q[2], g->out_off, rs)),
                                  tfmb_ssat8(dw_out(a3, &g->q[3], g->out_off, rs)));
    tfmb_st32(yp, tfmb_min_s8x4(tfmb_max_s8x4(v, g->lo4), g->hi4));
}

/* dw_store4 for a group whose shifts are not all right shifts of 1..23 (rare: multipliers >= 1
 * or tiny ones), one out-of-line copy. */
static __attribute__((noinline)) void dw_store4_gen(int8_t *yp, int32_t a0, int32_t a1, int32_t a2, int32_t a3,
                                                    const dw_group_t *g)
{
    dw_store4(yp, a0, a1, a2, a3, g, false);
}

/* One tap of four channels: the input word split into halfwords, multiplied lane by lane. */
#define DW_TAP(p, k)                                                  \
    do {                                                              \
        const uint32_t x_ = tfmb_ld32(p);                             \
        const uint32_t xe_ = tfmb_sxtb16(x_), xo_ = tfmb_sxtb16_ror8(x_); \
        const uint32_t we_ = wq[2 * (k)], wo_ = wq[2 * (k) + 1];      \
        a0 = tfmb_smlabb(xe_, we_, a0);                               \
        a2 = tfmb_smlatt(xe_, we_, a2);                               \
        a1 = tfmb_smlabb(xo_, wo_, a1);                               \
        a3 = tfmb_smlatt(xo_, wo_, a3);                               \
    } while (0)

#if TFMB_NATIVE_DSP
/* The nine taps of a 3x3 interior position in one block (the compiler's own schedule spills the
 * four accumulators, two steps, two pointers and the temporaries): per tap one input load, two
 * SXTB16, one LDRD of the tap's two weight words and four SMLAxy. */
#define DW_ASM_TAP(addr)                   \
    "ldr %[x], " addr "\n\t"               \
    "ldrd %[we], %[wo], [%[w]], #8\n\t"    \
    "sxtb16 %[xe], %[x]\n\t"               \
    "sxtb16 %[x], %[x], ror #8\n\t"        \
    "smlabb %[a0], %[xe], %[we], %[a0]\n\t" \
    "smlatt %[a2], %[xe], %[we], %[a2]\n\t" \
    "smlabb %[a1], %[x], %[wo], %[a1]\n\t"  \
    "smlatt %[a3], %[x], %[wo], %[a3]\n\t"
#define DW_ASM_ROW                                   \
    DW_ASM_TAP("[%[p]]")                             \
    DW_ASM_TAP("[%[p], %[cs]]")                      \
    "add %[xe], %[p], %[cs], lsl #1\n\t"             \
    DW_ASM_TAP("[%[xe]]")
static inline __attribute__((always_inline)) void dw_mac_3x3_asm(const int8_t *xp, int32_t rstep, int32_t cstep,
                                                               const uint32_t *wq, int32_t *a0, int32_t *a1,
                                                               int32_t *a2, int32_t *a3)
{
    int32_t r0 = *a0, r1 = *a1, r2 = *a2, r3 = *a3;
    uint32_t x, xe, we, wo;
    const int8_t *p = xp;
    const uint32_t *w = wq;
    __asm__(DW_ASM_ROW "add %[p], %[p], %[rs]\n\t" DW_ASM_ROW "add %[p], %[p], %[rs]\n\t" DW_ASM_ROW
            : [a0] "+r"(r0), [a1] "+r"(r1), [a2] "+r"(r2), [a3] "+r"(r3), [p] "+r"(p), [w] "+r"(w),
              [x] "=&r"(x), [xe] "=&r"(xe), [we] "=&r"(we), [wo] "=&r"(wo)
            : [rs] "r"(rstep), [cs] "r"(cstep)
            : "memory");
    *a0 = r0, *a1 = r1, *a2 = r2, *a3 = r3;
}
/* A 3x3 border position with one side outside (accumulators from the matching dw_group_t init):
 * two full rows (from xp, weights from wq on), or three rows of two taps (the third tap's weights
 * skipped, before or after as wq points). */
static inline __attribute__((always_inline)) void dw_mac_3x3_side_asm(const int8_t *xp, int32_t rstep, int32_t cstep,
                                                                    const uint32_t *wq, bool two_rows, int32_t *a0,
                                                                    int32_t *a1, int32_t *a2, int32_t *a3)
{
    int32_t r0 = *a0, r1 = *a1, r2 = *a2, r3 = *a3;
    uint32_t x, xe, we, wo;
    const int8_t *p = xp;
    const uint32_t *w = wq;
    if (two_rows)
        __asm__(DW_ASM_ROW "add %[p], %[p], %[rs]\n\t" DW_ASM_ROW
                : [a0] "+r"(r0), [a1] "+r"(r1), [a2] "+r"(r2), [a3] "+r"(r3), [p] "+r"(p), [w] "+r"(w),
                  [x] "=&r"(x), [xe] "=&r"(xe), [we] "=&r"(we), [wo] "=&r"(wo)
                : [rs] "r"(rstep), [cs] "r"(cstep)
                : "memory");
    else
        __asm__(DW_ASM_TAP("[%[p]]") DW_ASM_TAP("[%[p], %[cs]]") "add %[w], %[w], #8\n\t"
                "add %[p], %[p], %[rs]\n\t"
                DW_ASM_TAP("[%[p]]") DW_ASM_TAP("[%[p], %[cs]]") "add %[w], %[w], #8\n\t"
                "add %[p], %[p], %[rs]\n\t"
                DW_ASM_TAP("[%[p]]") DW_ASM_TAP("[%[p], %[cs]]")
                : [a0] "+r"(r0), [a1] "+r"(r1), [a2] "+r"(r2), [a3] "+r"(r3), [p] "+r"(p), [w] "+r"(w),
                  [x] "=&r"(x), [xe] "=&r"(xe), [we] "=&r"(we), [wo] "=&r"(wo)
                : [rs] "r"(rstep), [cs] "r"(cstep)
                : "memory");
    *a0 = r0, *a1 = r1, *a2 = r2, *a3 = r3;
}
#undef DW_ASM_ROW
#undef DW_ASM_TAP
#else
static inline void dw_mac_3x3_asm(const int8_t *xp, int32_t rstep, int32_t cstep, const uint32_t *wq, int32_t *r0,
                                  int32_t *r1, int32_t *r2, int32_t *r3)
{
    int32_t a0 = *r0, a1 = *r1, a2 = *r2, a3 = *r3;
    for (int32_t ky = 0, k = 0; ky < 3; ++ky, xp += rstep)
        for (int32_t kx = 0; kx < 3; ++kx, ++k) DW_TAP(xp + kx * cstep, k);
    *r0 = a0, *r1 = a1, *r2 = a2, *r3 = a3;
}
static inline void dw_mac_3x3_side_asm(const int8_t *xp, int32_t rstep, int32_t cstep, const uint32_t *wq,
                                       bool two_rows, int32_t *r0, int32_t *r1, int32_t *r2, int32_t *r3)
{
    int32_t a0 = *r0, a1 = *r1, a2 = *r2, a3 = *r3;
    const int32_t rows = two_rows ? 2 : 3, cols = two_rows ? 3 : 2;
    for (int32_t ky = 0, k = 0; ky < rows; ++ky, xp += rstep, k += 3 - cols)
        for (int32_t kx = 0; kx < cols; ++kx, ++k) DW_TAP(xp + kx * cstep, k);
    *r0 = a0, *r1 = a1, *r2 = a2, *r3 = a3;
}
#endif


/* `count` interior positions of a row (every tap inside), from input xp and output yp on: the
 * accumulators start at g->full and the offset is not added. The 3x3 instance is unrolled. */
static inline __attribute__((always_inline)) void dw_run(const dw_group_t *g, const int8_t *xp, int8_t *yp,
                                                       int32_t count, bool rs, bool k3x3)
{
    const uint32_t *wq = g->wq;
    const int32_t rstep = g->row_step, cstep = g->col_step;
    for (; count > 0; --count) {
        int32_t a0 = g->full[0], a1 = g->full[1], a2 = g->full[2], a3 = g->full[3];
        if (k3x3) {
            dw_mac_3x3_asm(xp, rstep, cstep, wq, &a0, &a1, &a2, &a3);
        } else {
            const int8_t *r = xp;
            int32_t k = 0;
            for (int32_t ky = 0; ky < g->fh; ++ky, r += rstep) {
                const int8_t *p = r;
                for (int32_t kx = 0; kx < g->fw; ++kx, ++k, p += cstep) DW_TAP(p, k);
            }
        }
        if (rs)
            dw_store4(yp, a0, a1, a2, a3, g, true);
        else
            dw_store4_gen(yp, a0, a1, a2, a3, g);
        xp += g->step;
        yp += g->ystep;
    }
}

static __attribute__((noinline)) void dw_run_3x3_rs(const dw_group_t *g, const int8_t *xp, int8_t *yp, int32_t n)
{
    dw_run(g, xp, yp, n, true, true);
}
static __attribute__((noinline)) void dw_run_any_rs(const dw_group_t *g, const int8_t *xp, int8_t *yp, int32_t n)
{
    dw_run(g, xp, yp, n, true, false);
}
static __attribute__((noinline)) void dw_run_any(const dw_group_t *g, const int8_t *xp, int8_t *yp, int32_t n)
{
    dw_run(g, xp, yp, n, false, false);
}

/* The clipped taps of a border position, input offset added: `rows` x `cols` taps (both > 0) from
 * xp / wp on, the next row `radv` input bytes and `wadv` weight words after a row's last tap. Per
 * tap one load, LDRD of the weights, two SXTB16, two SADD16, four SMLAxy and the loop's two; one
 * block with both loops (the compiler's schedule spills around a row-sized one). */
#if TFMB_NATIVE_DSP
static inline __attribute__((always_inline)) void dw_mac_clip_off(const int8_t *xp, int32_t cstep, int32_t radv,
                                                                const uint32_t *wp, int32_t wadv, int32_t rows,
                                                                int32_t cols, uint32_t off2, int32_t acc[4])
{
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    uint32_t x, xe, we, wo, n;
    const int32_t wadv_bytes = 4 * wadv;
    __asm__("2:\n\t"
            "ldr %[n], %[cols]\n\t"
            "1:\n\t"
            "ldr %[x], [%[p]]\n\t"
            "add %[p], %[p], %[cs]\n\t"
            "ldrd %[we], %[wo], [%[w]], #8\n\t"
            "sxtb16 %[xe], %[x]\n\t"
            "sxtb16 %[x], %[x], ror #8\n\t"
            "sadd16 %[xe], %[xe], %[off]\n\t"
            "sadd16 %[x], %[x], %[off]\n\t"
            "smlabb %[a0], %[xe], %[we], %[a0]\n\t"
            "smlatt %[a2], %[xe], %[we], %[a2]\n\t"
            "smlabb %[a1], %[x], %[wo], %[a1]\n\t"
            "smlatt %[a3], %[x], %[wo], %[a3]\n\t"
            "subs %[n], %[n], #1\n\t"
            "bne 1b\n\t"
            "ldr %[x], %[radv]\n\t"
            "add %[p], %[p], %[x]\n\t"
            "ldr %[x], %[wadv]\n\t"
            "add %[w], %[w], %[x]\n\t"
            "ldr %[x], %[rows]\n\t"
            "subs %[x], %[x], #1\n\t"
            "str %[x], %[rows]\n\t"
            "bne 2b"
            : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [p] "+r"(xp), [w] "+r"(wp),
              [n] "=&r"(n), [x] "=&r"(x), [xe] "=&r"(xe), [we] "=&r"(we), [wo] "=&r"(wo), [rows] "+m"(rows)
            : [cs] "r"(cstep), [off] "r"(off2), [cols] "m"(cols), [radv] "m"(radv), [wadv] "m"(wadv_bytes)
            : "cc", "memory");
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
}
#else
static inline void dw_mac_clip_off(const int8_t *xp, int32_t cstep, int32_t radv, const uint32_t *wp, int32_t wadv,
                                   int32_t rows, int32_t cols, uint32_t off2, int32_t acc[4])
{
    for (; rows > 0; --rows, xp += radv, wp += wadv)
        for (int32_t n = cols; n > 0; --n, wp += 2, xp += cstep) {
            const uint32_t v = tfmb_ld32(xp);
            const uint32_t xe = tfmb_sadd16(tfmb_sxtb16(v), off2), xo = tfmb_sadd16(tfmb_sxtb16_ror8(v), off2);
            acc[0] = tfmb_smlabb(xe, wp[0], acc[0]);
            acc[2] = tfmb_smlatt(xe, wp[0], acc[2]);
            acc[1] = tfmb_smlabb(xo, wp[1], acc[1]);
            acc[3] = tfmb_smlatt(xo, wp[1], acc[3]);
        }
}
#endif

/* A border position: taps [ky0, ky1) x [kx0, kx1) only (the rest fall outside the input, which
 * the reference skips), the input offset added per tap (x + off fits a halfword), accumulators
 * from the bias. `at` is the index of tap (0, 0), which may lie outside the input. */
static inline __attribute__((always_inline)) void dw_edge_body(const dw_group_t *g, const int8_t *x, int32_t at,
                                                               int8_t *yp, int32_t ky0, int32_t ky1, int32_t kx0,
                                                               int32_t kx1, bool rs)
{
    int32_t acc[4] = {g->bias[0], g->bias[1], g->bias[2], g->bias[3]};
    const int32_t rows = ky1 - ky0, cols = kx1 - kx0;
    if (rows > 0 && cols > 0)
        dw_mac_clip_off(x + at + ky0 * g->row_step + kx0 * g->col_step, g->col_step,
                        g->row_step - cols * g->col_step, g->wq + 2 * (ky0 * g->fw + kx0), 2 * (g->fw - cols), rows,
                        cols, g->off2, acc);
    const int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    if (rs)
        dw_store4(yp, a0, a1, a2, a3, g, true);
    else
        dw_store4_gen(yp, a0, a1, a2, a3, g);
}

static __attribute__((noinline)) void dw_edge(const dw_group_t *g, const int8_t *x, int32_t at, int8_t *yp,
                                              int32_t ky0, int32_t ky1, int32_t kx0, int32_t kx1, bool rs)
{
    if (rs)
        dw_edge_body(g, x, at, yp, ky0, ky1, kx0, kx1, true);
    else
        dw_edge_body(g, x, at, yp, ky0, ky1, kx0, kx1, false);
}

/* A 3x3 border position with one side outside: side 1 (top row out) / 0 (bottom row out): two full
 * rows from xp; side 3 (left column out) / 2 (right column out): three rows of two taps. The
 * accumulators start at the matching g->side, so no offset is added per tap. */
static inline __attribute__((always_inline)) void dw_side_body(const dw_group_t *g, const int8_t *xp, int8_t *yp,
                                                               int32_t side, bool rs)
{
    static const uint8_t left_out[4] = {1, 0, 3, 2}; /* g->side index: row 2, row 0, column 2, column 0 out */
    const int32_t *init = g->side[left_out[side]];
    int32_t a0 = init[0], a1 = init[1], a2 = init[2], a3 = init[3];
    const uint32_t *w = g->wq + (side == 1 ? 6 : side == 3 ? 2 : 0); /* the first inside tap's weights */
    dw_mac_3x3_side_asm(xp, g->row_step, g->col_step, w, side < 2, &a0, &a1, &a2, &a3);
    if (rs)
        dw_store4(yp, a0, a1, a2, a3, g, true);
    else
        dw_store4_gen(yp, a0, a1, a2, a3, g);
}

/* The right-shift instance has no call in it (the compiler then keeps more in registers). */
static __attribute__((noinline)) void dw_side_rs(const dw_group_t *g, const int8_t *xp, int8_t *yp, int32_t side)
{
    dw_side_body(g, xp, yp, side, true);
}
static __attribute__((noinline)) void dw_side_gen(const dw_group_t *g, const int8_t *xp, int8_t *yp, int32_t side)
{
    dw_side_body(g, xp, yp, side, false);
}

/* Every output position of one group of four channels (c0 .. c0+3), depth multiplier 1. */
static void dw_group4(const dw_args_t *a, int32_t c0, const dw_group_t *g, bool rs)
{
    const int32_t ic = a->ic;
    const bool k3x3 = a->fh == 3 && a->fw == 3;
    void (*run)(const dw_group_t *, const int8_t *, int8_t *, int32_t) =
        k3x3 && rs ? dw_run_3x3_rs : (rs ? dw_run_any_rs : dw_run_any);
    for (int32_t n = 0; n < a->batches; ++n)
        for (int32_t oy = 0; oy < a->oh; ++oy) {
            const int32_t iy0 = oy * a->sh - a->ph;
            int32_t ky0, ky1;
            tfmb_taps_inside(iy0, a->dh, a->fh, a->ih, &ky0, &ky1);
            const bool rows_full = ky0 == 0 && ky1 == a->fh;
            const int32_t xrow = (n * a->ih + iy0) * a->iw * ic + c0; /* may be negative: taps inside add to it */
            int8_t *yrow = a->y + (n * a->oh + oy) * a->ow * a->oc + c0;
            for (int32_t ox = 0; ox < a->ow; ++ox) {
                if (rows_full && ox == a->ox_a && a->ox_b > a->ox_a) {
                    run(g, a->x + xrow + (ox * a->sw - a->pw) * ic, yrow + ox * a->oc, a->ox_b - a->ox_a);
                    ox = a->ox_b - 1;
                    continue;
                }
                const int32_t ix0 = ox * a->sw - a->pw;
                int32_t kx0, kx1;
                if (ox < DW_COLS) {
                    kx0 = a->kx0[ox];
                    kx1 = a->kx1[ox];
                } else {
                    tfmb_taps_inside(ix0, a->dw, a->fw, a->iw, &kx0, &kx1);
                }
                const int32_t at = xrow + ix0 * ic;
                int32_t side = -1; /* which one side of a 3x3 window lies outside */
                if (k3x3 && g->sides) {
                    if (kx0 == 0 && kx1 == 3 && ky1 - ky0 == 2) side = ky0;     /* 1: top row out, 0: bottom */
                    if (ky0 == 0 && ky1 == 3 && kx1 - kx0 == 2) side = 2 + kx0; /* 3: left out, 2: right */
                }
                if (side >= 0)
                    (rs ? dw_side_rs : dw_side_gen)(g, a->x + at + ky0 * g->row_step + kx0 * g->col_step,
                                                    yrow + ox * a->oc, side);
                else
                    dw_edge(g, a->x, at, yrow + ox * a->oc, ky0, ky1, kx0, kx1, rs);
            }
        }
}

/* Every output position of output channels o0 .. o0+3 with a depth multiplier above 1: lane j reads
 * input channel (o0 + j) / dm, so each tap's input word is gathered from up to four bytes; the
 * taps are clipped and the offset added per tap as at a border position. */
static void dw_group4_dm(const dw_args_t *a, int32_t o0, const dw_group_t *g, bool rs)
{
    const int32_t ci = o0 / a->dm, ic = a->ic;
    const int32_t d1 = (o0 + 1) / a->dm - ci, d2 = (o0 + 2) / a->dm - ci, d3 = (o0 + 3) / a->dm - ci;
    for (int32_t n = 0; n < a->batches; ++n)
        for (int32_t oy = 0; oy < a->oh; ++oy) {
            const int32_t iy0 = oy * a->sh - a->ph;
            int32_t ky0, ky1;
            tfmb_taps_inside(iy0, a->dh, a->fh, a->ih, &ky0, &ky1);
            int8_t *yp = a->y + (n * a->oh + oy) * a->ow * a->oc + o0;
            for (int32_t ox = 0; ox < a->ow; ++ox, yp += a->oc) {
                const int32_t ix0 = ox * a->sw - a->pw;
                int32_t kx0, kx1;
                tfmb_taps_inside(ix0, a->dw, a->fw, a->iw, &kx0, &kx1);
                int32_t a0 = g->bias[0], a1 = g->bias[1], a2 = g->bias[2], a3 = g->bias[3];
                for (int32_t ky = ky0; ky < ky1; ++ky) {
                    const int8_t *xr = a->x + ((n * a->ih + iy0 + a->dh * ky) * a->iw + ix0) * ic + ci;
                    const uint32_t *wr = g->wq + 2 * (ky * a->fw + kx0);
                    for (int32_t kx = kx0; kx < kx1; ++kx, wr += 2) {
                        const int8_t *p = xr + kx * g->col_step;
                        const uint32_t v = tfmb_pack4(p[0], p[d1], p[d2], p[d3]);
                        const uint32_t xe = tfmb_sadd16(tfmb_sxtb16(v), g->off2);
                        const uint32_t xo = tfmb_sadd16(tfmb_sxtb16_ror8(v), g->off2);
                        a0 = tfmb_smlabb(xe, wr[0], a0);
                        a2 = tfmb_smlatt(xe, wr[0], a2);
                        a1 = tfmb_smlabb(xo, wr[1], a1);
                        a3 = tfmb_smlatt(xo, wr[1], a3);
                    }
                }
                if (rs)
                    dw_store4(yp, a0, a1, a2, a3, g, true);
                else
                    dw_store4_gen(yp, a0, a1, a2, a3, g);
            }
        }
}

/* Every output position of output channel o (input channel o / dm), one channel at a time. */
static void dw_channel(const dw_args_t *a, int32_t o)
{
    const int32_t ci = o / a->dm;
    const dw_rq_t q = dw_rq(a, o);
    const bool rs = tfmb_rs_ok(q.shift);
    for (int32_t n = 0; n < a->batches; ++n)
        for (int32_t oy = 0; oy < a->oh; ++oy) {
            const int32_t iy0 = oy * a->sh - a->ph;
            int32_t ky0, ky1;
            tfmb_taps_inside(iy0, a->dh, a->fh, a->ih, &ky0, &ky1);
            for (int32_t ox = 0; ox < a->ow; ++ox) {
                const int32_t ix0 = ox * a->sw - a->pw;
                int32_t kx0, kx1;
                tfmb_taps_inside(ix0, a->dw, a->fw, a->iw, &kx0, &kx1);
                uint32_t acc = (uint32_t)q.bias;
                for (int32_t ky = ky0; ky < ky1; ++ky) {
                    const int8_t *xr = a->x + ((n * a->ih + iy0 + a->dh * ky) * a->iw + ix0) * a->ic + ci;
                    const int8_t *fr = a->f + ky * a->fw * a->oc + o;
                    for (int32_t kx = kx0; kx < kx1; ++kx)
                        acc += (uint32_t)((int32_t)fr[kx * a->oc] * ((int32_t)xr[a->dw * kx * a->ic] + a->in_off));
                }
                const int32_t v =
                    rs ? dw_out((int32_t)acc, &q, a->out_off, true) : dw_out((int32_t)acc, &q, a->out_off, false);
                a->y[((n * a->oh + oy) * a->ow + ox) * a->oc + o] = (int8_t)tfmb_clamp(v, a->lo, a->hi);
            }
        }
}

void tfmb_depthwise_conv_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                const tfmb_ctx_t *c);

void tfmb_depthwise_conv_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *in = &t[0], *filt = &t[1];
    dw_args_t a = {
        .x = (const int8_t *)(c->arena + in->offset), .f = (const int8_t *)(c->data + filt->offset),
        .y = (int8_t *)(c->arena + out->offset),
        .b = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0,
        .mult = c->data + op->p[10], .shift = c->data + op->p[11],
        .in_off = op->p[0], .out_off = op->p[1], .lo = op->p[2], .hi = op->p[3],
        .sh = op->p[4], .sw = op->p[5], .dh = op->p[6], .dw = op->p[7], .ph = op->p[8], .pw = op->p[9],
        .dm = op->p[12],
        .batches = in->d[0], .ih = in->d[1], .iw = in->d[2], .ic = in->d[3],
        .oh = out->d[1], .ow = out->d[2], .oc = out->d[3], .fh = filt->d[1], .fw = filt->d[2],
    };
    dw_inside_cols(a.ow, a.sw, a.pw, a.dw, a.fw, a.iw, &a.ox_a, &a.ox_b);
    for (int32_t ox = 0; ox < a.ow && ox < DW_COLS && a.fw <= DW_MAX_TAPS; ++ox) {
        int32_t k0, k1;
        tfmb_taps_inside(ox * a.sw - a.pw, a.dw, a.fw, a.iw, &k0, &k1);
        k0 = k0 < a.fw ? k0 : a.fw; /* an empty range stays empty, within a byte */
        a.kx0[ox] = (uint8_t)k0;
        a.kx1[ox] = (uint8_t)(k1 > k0 ? k1 : k0);
    }
    const int32_t taps = a.fh * a.fw;
    int32_t groups = 0;
    if (taps <= DW_MAX_TAPS) groups = a.oc / 4;
    uint32_t wq[2 * DW_MAX_TAPS];
    dw_group_t g;
    g.wq = wq;
    g.lo4 = tfmb_bytes4(a.lo);
    g.hi4 = tfmb_bytes4(a.hi);
    g.off2 = ((uint32_t)a.in_off & 0xFFFFu) * 0x10001u;
    g.out_off = a.out_off;
    g.row_step = a.dh * a.iw * a.ic;
    g.col_step = a.dw * a.ic;
    g.step = a.sw * a.ic;
    g.ystep = a.oc;
    g.fh = a.fh;
    g.fw = a.fw;
    /* whether any position has exactly one side of its 3x3 window outside (dw_side): rows or columns
     * with clipped taps exist */
    const bool sides = a.ox_a > 0 || a.ox_b < a.ow || a.ph > 0 || (a.oh - 1) * a.sh - a.ph + 2 * a.dh >= a.ih;
    g.sides = sides;
    for (int32_t grp = 0; grp < groups; ++grp) {
        const int32_t c0 = 4 * grp;
        bool rs = true;
        for (int32_t j = 0; j < 4; ++j) {
            g.q[j] = dw_rq(&a, c0 + j);
            g.bias[j] = g.q[j].bias;
            rs = rs && tfmb_rs_ok(g.q[j].shift);
        }
        uint32_t sum_e = 0, sum_o = 0; /* sum(w) per channel as halfwords, |sum| <= 49*128 */
        const int8_t *fp = a.f + c0;
        for (int32_t k = 0; k < 2 * taps; k += 2, fp += a.oc) {
            const uint32_t w = tfmb_ld32(fp), we = tfmb_sxtb16(w), wo = tfmb_sxtb16_ror8(w);
            wq[k] = we;
            wq[k + 1] = wo;
            sum_e = tfmb_sadd16(sum_e, we);
            sum_o = tfmb_sadd16(sum_o, wo);
        }
        const int32_t sums[4] = {dw_half_lo(sum_e), dw_half_lo(sum_o), dw_half_hi(sum_e), dw_half_hi(sum_o)};
        for (int32_t j = 0; j < 4; ++j)
            g.full[j] = tfmb_wadd(g.bias[j], (int32_t)((uint32_t)sums[j] * (uint32_t)a.in_off));
        if (a.fh == 3 && a.fw == 3 && sides) {
            /* the taps each side init leaves out: row 0 (0, 1, 2), row 2 (6, 7, 8), column 0 (0, 3, 6),
             * column 2 (2, 5, 8); halfword sums as in sum_e / sum_o */
            const uint32_t *w = wq;
            const uint32_t out_e[4] = {tfmb_sadd16(tfmb_sadd16(w[0], w[2]), w[4]),
                                       tfmb_sadd16(tfmb_sadd16(w[12], w[14]), w[16]),
                                       tfmb_sadd16(tfmb_sadd16(w[0], w[6]), w[12]),
                                       tfmb_sadd16(tfmb_sadd16(w[4], w[10]), w[16])};
            const uint32_t out_o[4] = {tfmb_sadd16(tfmb_sadd16(w[1], w[3]), w[5]),
                                       tfmb_sadd16(tfmb_sadd16(w[13], w[15]), w[17]),
                                       tfmb_sadd16(tfmb_sadd16(w[1], w[7]), w[13]),
                                       tfmb_sadd16(tfmb_sadd16(w[5], w[11]), w[17])};
            const uint32_t off = (uint32_t)a.in_off;
            for (int32_t sd = 0; sd < 4; ++sd) {
                g.side[sd][0] = tfmb_wsub(g.full[0], (int32_t)((uint32_t)dw_half_lo(out_e[sd]) * off));
                g.side[sd][1] = tfmb_wsub(g.full[1], (int32_t)((uint32_t)dw_half_lo(out_o[sd]) * off));
                g.side[sd][2] = tfmb_wsub(g.full[2], (int32_t)((uint32_t)dw_half_hi(out_e[sd]) * off));
                g.side[sd][3] = tfmb_wsub(g.full[3], (int32_t)((uint32_t)dw_half_hi(out_o[sd]) * off));
            }
        }
        if (a.dm == 1)
            dw_group4(&a, c0, &g, rs);
        else
            dw_group4_dm(&a, c0, &g, rs);
    }
    for (int32_t o = 4 * groups; o < a.oc; ++o) dw_channel(&a, o);
}

#endif /* TFMB_CORE == TFMB_CORE_DSP */
