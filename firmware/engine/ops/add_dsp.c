/*
 * int8 ADD on a core with the DSP extension, bit-exact with the plain-C reference (add.c) and so
 * with TFLM: the same arithmetic (inputs + offsets shifted left by p5, each rescaled by its own
 * MultiplyByQuantizedMultiplier, the sum rescaled by the output's, + output offset, clamp), four
 * elements per iteration: one word load per input, the three rescalings with a right shift as one
 * 64-bit multiply-add each (tfmb_rs_apply, constants hoisted, the output offset folded in), SSAT and a bytewise max/min for the
 * clamp, one word store. Rescalings with a left shift use tfmb_mbqm_fast; the last 0..3
 * elements run one at a time.
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

/* One element before the clamp (out_off added). `rs`: every shift <= -1. */
static inline __attribute__((always_inline)) int32_t add_one(int32_t a, int32_t b, const add_q_t *q, bool rs)
{
    const int32_t v1 = tfmb_wshl(a + q->off1, (int)q->left);
    const int32_t v2 = tfmb_wshl(b + q->off2, (int)q->left);
    if (rs) {
        const int32_t r1 = tfmb_rs_apply(v1, &q->r1);
        const int32_t r2 = tfmb_rs_apply(v2, &q->r2);
        return tfmb_rs_apply(tfmb_wadd(r1, r2), &q->ro);
    }
    const int32_t r1 = tfmb_mbqm_fast(v1, q->m1, q->s1);
    const int32_t r2 = tfmb_mbqm_fast(v2, q->m2, q->s2);
    return tfmb_wadd(tfmb_mbqm_fast(tfmb_wadd(r1, r2), q->mo, q->so), q->out_off);
}

static inline __attribute__((always_inline)) void add_run(const int8_t *a, const int8_t *b, int8_t *y, uint32_t n,
                                                          const add_q_t *q, int32_t lo, int32_t hi, bool rs)
{
    const uint32_t lo4 = tfmb_bytes4(lo), hi4 = tfmb_bytes4(hi);
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint32_t wa = tfmb_ld32(a + i), wb = tfmb_ld32(b + i);
        const uint32_t v = tfmb_pack4(tfmb_ssat8(add_one((int8_t)(wa & 0xFFu), (int8_t)(wb & 0xFFu), q, rs)),
                                      tfmb_ssat8(add_one((int8_t)((wa >> 8) & 0xFFu), (int8_t)((wb >> 8) & 0xFFu), q, rs)),
                                      tfmb_ssat8(add_one((int8_t)((wa >> 16) & 0xFFu), (int8_t)((wb >> 16) & 0xFFu), q, rs)),
                                      tfmb_ssat8(add_one((int8_t)(wa >> 24), (int8_t)(wb >> 24), q, rs)));
        tfmb_st32(y + i, tfmb_min_s8x4(tfmb_max_s8x4(v, lo4), hi4));
    }
    for (; i < n; ++i) y[i] = (int8_t)tfmb_clamp(add_one(a[i], b[i], q, rs), lo, hi);
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
    const bool rs = tfmb_rs_ok(q.s1) && tfmb_rs_ok(q.s2) && tfmb_rs_ok(q.so);
    if (rs) {
        q.r1 = tfmb_rs_make(q.m1, q.s1, 0);
        q.r2 = tfmb_rs_make(q.m2, q.s2, 0);
        q.ro = tfmb_rs_make(q.mo, q.so, q.out_off);
        add_run(a, b, y, out->elems, &q, op->p[2], op->p[3], true);
    } else {
        add_run(a, b, y, out->elems, &q, op->p[2], op->p[3], false);
    }
}

#endif /* TFMB_CORE == TFMB_CORE_DSP */
