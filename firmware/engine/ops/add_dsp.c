/*
 * int8 ADD on a core with the DSP extension, bit-exact with the plain-C reference (add.c) and so
 * with TFLM: the same arithmetic (inputs + offsets shifted left by p5, each rescaled by its own
 * MultiplyByQuantizedMultiplier, the sum rescaled by the output's, + output offset, clamp), four
 * elements per iteration: one word load per input, each rescaling with a right shift (or the
 * inputs' shift 0) as one 64-bit multiply-add (tfmb_rs_apply / tfmb_rs0_apply, constants hoisted,
 * the output offset folded in), SSAT and a bytewise max/min for the clamp, one word store. Other
 * shifts use tfmb_mbqm_fast; the last 0..3 elements run one at a time.
 *
 * Params as add.c: p0/p1 input offsets, p2/p3 activation range, p4 output offset, p5 left shift,
 * p6/p7, p8/p9, p10/p11 multiplier/shift of input 1, input 2 and the output.
 */
#include "../tfmb_simd.h"

#if TFMB_CORE == TFMB_CORE_DSP

typedef struct {
    int32_t off1, off2, out_off, left;
    int32_t m1, s1, m2, s2, mo, so;
    tfmb_rs_t r1, r2, ro; /* the output's with out_off folded in */
} add_q_t;

/* How an input's rescaling runs: MultiplyByQuantizedMultiplier in general, one multiply-add for a
 * right shift of 1..23 (tfmb_rs_apply), or for shift 0 (tfmb_rs0_apply: the larger-scaled input's
 * multiplier is 0.5, shift 0, in TFLM's ADD) with the doubling folded into the left shift. */
enum { ADD_GEN, ADD_RS, ADD_RS0 };

static inline __attribute__((always_inline)) int32_t add_in(int32_t v, int32_t off, int left, int32_t m, int32_t s,
                                                          const tfmb_rs_t *r, int kind)
{
    if (kind == ADD_RS0) return tfmb_rs0_apply(tfmb_wshl(v + off, left + 1), m);
    if (kind == ADD_RS) return tfmb_rs_apply(tfmb_wshl(v + off, left), r);
    return tfmb_mbqm_fast(tfmb_wshl(v + off, left), m, s);
}

/* One element before the clamp (out_off added). `rs`: the output's shift is 1..23 to the right. */
static inline __attribute__((always_inline)) int32_t add_one(int32_t a, int32_t b, const add_q_t *q, int k1, int k2,
                                                           bool rs)
{
    const int32_t r1 = add_in(a, q->off1, (int)q->left, q->m1, q->s1, &q->r1, k1);
    const int32_t r2 = add_in(b, q->off2, (int)q->left, q->m2, q->s2, &q->r2, k2);
    if (rs) return tfmb_rs_apply(tfmb_wadd(r1, r2), &q->ro);
    return tfmb_wadd(tfmb_mbqm_fast(tfmb_wadd(r1, r2), q->mo, q->so), q->out_off);
}

static inline __attribute__((always_inline)) void add_run(const int8_t *a, const int8_t *b, int8_t *y, uint32_t n,
                                                          const add_q_t *q, int32_t lo, int32_t hi, int k1, int k2,
                                                          bool rs)
{
    const uint32_t lo4 = tfmb_bytes4(lo), hi4 = tfmb_bytes4(hi);
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint32_t wa = tfmb_ld32(a + i), wb = tfmb_ld32(b + i);
        const uint32_t v =
            tfmb_pack4(tfmb_ssat8(add_one((int8_t)(wa & 0xFFu), (int8_t)(wb & 0xFFu), q, k1, k2, rs)),
                       tfmb_ssat8(add_one((int8_t)((wa >> 8) & 0xFFu), (int8_t)((wb >> 8) & 0xFFu), q, k1, k2, rs)),
                       tfmb_ssat8(add_one((int8_t)((wa >> 16) & 0xFFu), (int8_t)((wb >> 16) & 0xFFu), q, k1, k2, rs)),
                       tfmb_ssat8(add_one((int8_t)(wa >> 24), (int8_t)(wb >> 24), q, k1, k2, rs)));
        tfmb_st32(y + i, tfmb_min_s8x4(tfmb_max_s8x4(v, lo4), hi4));
    }
    for (; i < n; ++i) y[i] = (int8_t)tfmb_clamp(add_one(a[i], b[i], q, k1, k2, rs), lo, hi);
}

/* The instances TFLM's ADD produces (its larger-scaled input has multiplier 0.5, shift 0: one input
 * RS0 and the other RS, or both RS0 at equal scales) get their own loop. */
static __attribute__((noinline)) void add_fast(const int8_t *a, const int8_t *b, int8_t *y, uint32_t n,
                                               const add_q_t *q, int32_t lo, int32_t hi, int k1, int k2)
{
    if (k1 == ADD_RS0 && k2 == ADD_RS)
        add_run(a, b, y, n, q, lo, hi, ADD_RS0, ADD_RS, true);
    else if (k1 == ADD_RS && k2 == ADD_RS0)
        add_run(a, b, y, n, q, lo, hi, ADD_RS, ADD_RS0, true);
    else
        add_run(a, b, y, n, q, lo, hi, ADD_RS0, ADD_RS0, true);
}

/* Any other rescaling: one element at a time (rare, kept small). */
static __attribute__((noinline)) void add_general(const int8_t *a, const int8_t *b, int8_t *y, uint32_t n,
                                                  const add_q_t *q, int32_t lo, int32_t hi)
{
    for (uint32_t i = 0; i < n; ++i) y[i] = (int8_t)tfmb_clamp(add_one(a[i], b[i], q, ADD_GEN, ADD_GEN, false), lo, hi);
}

void tfmb_add_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c);

void tfmb_add_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *a = (const int8_t *)(c->arena + t[0].offset);
    const int8_t *b = (const int8_t *)(c->arena + t[1].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    add_q_t q = {
        .off1 = op->p[0], .off2 = op->p[1], .out_off = op->p[4], .left = op->p[5],
        .m1 = op->p[6], .s1 = op->p[7], .m2 = op->p[8], .s2 = op->p[9], .mo = op->p[10], .so = op->p[11],
    };
    /* shift 0 needs 2 * ((v + off) << left) exact: |v + off| <= 255, so left <= 22 */
    const int k1 = tfmb_rs_ok(q.s1) ? ADD_RS : (q.s1 == 0 && q.left <= 22 ? ADD_RS0 : ADD_GEN);
    const int k2 = tfmb_rs_ok(q.s2) ? ADD_RS : (q.s2 == 0 && q.left <= 22 ? ADD_RS0 : ADD_GEN);
    if (k1 != ADD_GEN && k2 != ADD_GEN && (k1 == ADD_RS0 || k2 == ADD_RS0) && tfmb_rs_ok(q.so)) {
        q.r1 = tfmb_rs_make(q.m1, k1 == ADD_RS ? q.s1 : -1, 0);
        q.r2 = tfmb_rs_make(q.m2, k2 == ADD_RS ? q.s2 : -1, 0);
        q.ro = tfmb_rs_make(q.mo, q.so, q.out_off);
        add_fast(a, b, y, out->elems, &q, op->p[2], op->p[3], k1, k2);
    } else {
        add_general(a, b, y, out->elems, &q, op->p[2], op->p[3]);
    }
}

#endif /* TFMB_CORE == TFMB_CORE_DSP */
