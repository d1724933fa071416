/*
 * int8 MUL: TFLM's reference_integer_ops::Mul / BroadcastMul4DSlow. Shapes are right-aligned to
 * 4-D and size-1 dimensions repeated; the second operand is an activation or an int8 constant.
 * Each product of the centred operands is requantized, offset by the output zero point and
 * clamped to the fused activation's range.
 *
 * Params: p0/p1 operand offsets (minus their zero points), p2 output zero point, p3/p4
 * multiplier/shift, p5/p6 activation range.
 */
#include "../tfmb_internal.h"

/* Dimension k (0..3) of t right-aligned to 4-D. */
static int32_t ext_dim(const tfmb_tensor_t *t, int k)
{
    const int lead = 4 - (int)t->rank;
    return k < lead ? 1 : t->d[k - lead];
}

/* Element strides of t over the 4-D output index (0 along broadcast dimensions). */
static void broadcast_strides(const tfmb_tensor_t *t, int32_t stride[4])
{
    int32_t s = 1;
    for (int k = 3; k >= 0; --k) {
        const int32_t n = ext_dim(t, k);
        stride[k] = n == 1 ? 0 : s;
        s *= n;
    }
}

static const char *mul_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                const tfmb_tensor_t *out)
{
    (void)m;
    if (t[1].type != TFMB_TYPE_INT8) return "mul operand not int8 at op";
    if (!t[1].constant && !(t[1].offset + t[1].nbytes <= out->offset || out->offset + out->nbytes <= t[1].offset))
        return "output overlaps input at op";
    if (t[0].rank > 4 || t[1].rank > 4 || out->rank > 4) return "mul rank above 4 at op";
    for (int k = 0; k < 4; ++k) {
        const int32_t a = ext_dim(&t[0], k), b = ext_dim(&t[1], k), o = ext_dim(out, k);
        if ((a != 1 && a != o) || (b != 1 && b != o) || o != (a == 1 ? b : a))
            return "mul shapes do not broadcast at op";
    }
    if (!tfmb_in_range(op->p[0], -127, 128) || !tfmb_in_range(op->p[1], -127, 128) ||
        !tfmb_in_range(op->p[2], -128, 127))
        return "zero point out of range at op";
    if (op->p[3] < 0 || !tfmb_in_range(op->p[4], -31, 30)) return "mul multiplier bad at op";
    if (!tfmb_in_range(op->p[5], -128, 127) || !tfmb_in_range(op->p[6], op->p[5], 127))
        return "activation range bad at op";
    for (int k = 7; k <= 12; ++k)
        if (op->p[k] != 0) return "unused parameter set at op";
    return 0;
}

static void mul_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    const int8_t *a = (const int8_t *)(c->arena + t[0].offset);
    const int8_t *b = (const int8_t *)((t[1].constant ? c->data : c->arena) + t[1].offset);
    int8_t *y = (int8_t *)(c->arena + out->offset);
    const int32_t off1 = op->p[0], off2 = op->p[1], out_off = op->p[2], mult = op->p[3], shift = op->p[4];
    const int32_t lo = op->p[5], hi = op->p[6];
    int32_t sa[4], sb[4];
    broadcast_strides(&t[0], sa);
    broadcast_strides(&t[1], sb);
    const int32_t n0 = ext_dim(out, 0), n1 = ext_dim(out, 1), n2 = ext_dim(out, 2), n3 = ext_dim(out, 3);
    uint32_t i = 0;
    for (int32_t i0 = 0; i0 < n0; ++i0)
        for (int32_t i1 = 0; i1 < n1; ++i1)
            for (int32_t i2 = 0; i2 < n2; ++i2) {
                const int32_t ra = i0 * sa[0] + i1 * sa[1] + i2 * sa[2], rb = i0 * sb[0] + i1 * sb[1] + i2 * sb[2];
                for (int32_t i3 = 0; i3 < n3; ++i3, ++i) {
                    const int32_t prod = ((int32_t)a[ra + i3 * sa[3]] + off1) * ((int32_t)b[rb + i3 * sb[3]] + off2);
                    y[i] = (int8_t)tfmb_clamp(tfmb_wadd(out_off, tfmb_mbqm(prod, mult, shift)), lo, hi);
                }
            }
}

static const tfmb_op_entry_t tfmb_op_mul = {
    .code = TFMB_OP_MUL,
    .inputs = 2,
    .required = 2,
    .activations = 1, /* the second operand may be a constant: validate checks its overlap itself */
    .in_place = false,
    .validate = mul_validate,
    .eval = mul_eval,
};
TFMB_REGISTER_OP(tfmb_op_mul);
