/*
 * Training MUL: y = act(a * b) with TFLM's broadcasting (shapes right-aligned to 4-D, size-1
 * dimensions repeated); b is an activation or an int8 constant (dequantized per channel of
 * its axis 0). Backward: da += dy * b and db += dy * a, summed over broadcast positions.
 * No params.
 */
#include "../tftr_internal.h"

static int32_t ext_dim(const tftr_tensor_t *t, int k)
{
    const int lead = 4 - (int)t->rank;
    return k < lead ? 1 : t->d[k - lead];
}

/* Element strides of t over the 4-D output index (0 along broadcast dimensions). */
static void broadcast_strides(const tftr_tensor_t *t, int32_t stride[4])
{
    int32_t s = 1;
    for (int k = 3; k >= 0; --k) {
        const int32_t n = ext_dim(t, k);
        stride[k] = n == 1 ? 0 : s;
        s *= n;
    }
}

static const char *mul_validate(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t t[3],
                                const tftr_tensor_t *out)
{
    (void)p;
    if (t[1].kind == TFTR_KIND_Q32) return "mul operand is an int32 constant at op";
    if (t[1].kind == TFTR_KIND_Q8 && (op->flags & TFTR_FLAG_ZERO_IN1)) return "op flags bad at op";
    for (int k = 0; k < 4; ++k) {
        const int32_t a = ext_dim(&t[0], k), b = ext_dim(&t[1], k), o = ext_dim(out, k);
        if ((a != 1 && a != o) || (b != 1 && b != o) || o != (a == 1 ? b : a))
            return "mul shapes do not broadcast at op";
    }
    if (!tftr_params_zero_from(op, 0)) return "unused parameter set at op";
    return 0;
}

/* Element i of the second operand: its value, or the constant dequantized. */
static float operand_b(const tftr_tensor_t *b, const float *bv, const tftr_ctx_t *c, int32_t i)
{
    if (bv) return bv[i];
    const uint32_t ch = (uint32_t)i / (b->elems / b->ch); /* channel axis 0 */
    const int32_t q = (int8_t)c->data[b->q + (uint32_t)i];
    return (float)(q - tfmb_rd32(c->data + b->zp + 4u * ch)) * tftr_rdf(c->data + b->sc + 4u * ch);
}

/* Runs BODY for every output element i with its operands' element indices ia and ib. */
#define MUL_FOR_EACH(t, out, BODY)                                                                           \
    do {                                                                                                     \
        int32_t sa[4], sb[4];                                                                                \
        broadcast_strides(&(t)[0], sa);                                                                      \
        broadcast_strides(&(t)[1], sb);                                                                      \
        int32_t i = 0;                                                                                       \
        for (int32_t i0 = 0; i0 < ext_dim(out, 0); ++i0)                                                     \
            for (int32_t i1 = 0; i1 < ext_dim(out, 1); ++i1)                                                 \
                for (int32_t i2 = 0; i2 < ext_dim(out, 2); ++i2)                                             \
                    for (int32_t i3 = 0; i3 < ext_dim(out, 3); ++i3, ++i) {                                  \
                        const int32_t ia = i0 * sa[0] + i1 * sa[1] + i2 * sa[2] + i3 * sa[3];                \
                        const int32_t ib = i0 * sb[0] + i1 * sb[1] + i2 * sb[2] + i3 * sb[3];                \
                        BODY;                                                                                \
                    }                                                                                        \
    } while (0)

static void mul_forward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    const float *a = tftr_val(c, &t[0]);
    const float *bv = tftr_is_act(&t[1]) ? tftr_val(c, &t[1]) : 0;
    float *y = tftr_val(c, out);
    MUL_FOR_EACH(t, out, y[i] = tftr_activate(a[ia] * operand_b(&t[1], bv, c, ib), op->act));
}

static void mul_backward(const tftr_op_t *op, const tftr_tensor_t t[3], const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    (void)op;
    const float *a = tftr_val(c, &t[0]), *gy = tftr_grd(c, out);
    const bool b_act = tftr_is_act(&t[1]);
    const float *bv = b_act ? tftr_val(c, &t[1]) : 0;
    float *da = tftr_grd(c, &t[0]);
    float *db = b_act ? tftr_grd(c, &t[1]) : 0;
    if (da) MUL_FOR_EACH(t, out, da[ia] += gy[i] * operand_b(&t[1], bv, c, ib));
    if (db) MUL_FOR_EACH(t, out, db[ib] += gy[i] * a[ia]);
}

static const tftr_op_entry_t tftr_op_mul = {
    .code = TFMB_OP_MUL,
    .inputs = 2,
    .required = 2,
    .activations = 2, /* the second may be a constant: validate and the kernels check its kind */
    .fused_activation = true,
    .in_place = false,
    .weighted = false,
    .validate = mul_validate,
    .forward = mul_forward,
    .backward = mul_backward,
};
TFTR_REGISTER_OP(tftr_op_mul);
