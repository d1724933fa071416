/*
 * int8 CONV_2D and DEPTHWISE_CONV_2D (per-channel), with the arithmetic of TFLM's reference
 * int8 kernels: int32 accumulation of filter * (input + input_offset), plus bias,
 * MultiplyByQuantizedMultiplier per output channel, + output_offset, clamp. Accumulation wraps
 * modulo 2**32 (as the int32 reference does on real hardware) without undefined behaviour.
 *
 * Params: p0 input offset, p1 output offset, p2/p3 activation range, p4/p5 stride h/w,
 * p6/p7 dilation h/w, p8/p9 padding top/left, p10/p11 multiplier/shift arrays (data offsets),
 * p12 depth multiplier (DEPTHWISE_CONV_2D only).
 */
#include "../tfmb_internal.h"
#include "../tfmb_mve.h"

#define A(c, t) ((int8_t *)((c)->arena + (t)->offset))
#define K(c, t) ((const int8_t *)((c)->data + (t)->offset))

/* Both entries' checks: the op's code selects the filter layout rules. */
static const char *conv_validate(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                 const tfmb_tensor_t *out)
{
    const bool dw = op->code == TFMB_OP_DEPTHWISE_CONV_2D;
    const tfmb_tensor_t *in = &t[0], *f = &t[1];
    if (in->rank != 4 || out->rank != 4 || f->rank != 4) return "conv tensors must be 4-D at op";
    if (!f->constant || f->type != TFMB_TYPE_INT8) return "conv filter not int8 constant at op";
    if (out->d[0] != in->d[0]) return "conv batch mismatch at op";
    const int32_t oc = out->d[3];
    if (dw) {
        if (!tfmb_in_range(op->p[12], 1, TFMB_MAX_DIM) || (int64_t)in->d[3] * op->p[12] != oc)
            return "depth multiplier bad at op";
        if (f->d[0] != 1 || f->d[3] != oc) return "depthwise filter shape bad at op";
    } else {
        if (op->p[12] != 0) return "unused parameter set at op";
        if (f->d[0] != oc || f->d[3] != in->d[3]) return "conv filter shape bad at op";
    }
    const char *problem = tfmb_check_common_q(op);
    if (problem) return problem;
    for (int k = 4; k <= 7; ++k)
        if (!tfmb_in_range(op->p[k], 1, TFMB_MAX_STRIDE))
            return "stride/dilation out of range at op";
    if (!tfmb_in_range(op->p[8], 0, TFMB_MAX_DIM) || !tfmb_in_range(op->p[9], 0, TFMB_MAX_DIM))
        return "padding out of range at op";
    if (op->in[2] != TFMB_NONE) {
        const tfmb_tensor_t *b = &t[2];
        if (!b->constant || b->type != TFMB_TYPE_INT32 || b->elems != (uint32_t)oc)
            return "bias bad at op";
    }
    return tfmb_check_requant_arrays(m, op, oc);
}

/* What both kernels read from the op and its tensors. */
typedef struct {
    const int8_t *x, *f;
    int8_t *y;
    const uint8_t *b, *mult, *shift;
    int32_t in_off, out_off, lo, hi;
    int32_t sh, sw, dh, dw, ph, pw;
    int32_t batches, ih, iw, ic, oh, ow, oc, fh, fw;
} conv_args_t;

static inline conv_args_t conv_args(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                    const tfmb_ctx_t *c)
{
    const tfmb_tensor_t *in = &t[0], *filt = &t[1];
    return (conv_args_t){
        .x = A(c, in), .f = K(c, filt), .y = A(c, out),
        .b = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0,
        .mult = c->data + op->p[10], .shift = c->data + op->p[11],
        .in_off = op->p[0], .out_off = op->p[1], .lo = op->p[2], .hi = op->p[3],
        .sh = op->p[4], .sw = op->p[5], .dh = op->p[6], .dw = op->p[7], .ph = op->p[8], .pw = op->p[9],
        .batches = in->d[0], .ih = in->d[1], .iw = in->d[2], .ic = in->d[3],
        .oh = out->d[1], .ow = out->d[2], .oc = out->d[3], .fh = filt->d[1], .fw = filt->d[2],
    };
}

/* An output position's taps on the input: rows ky0..ky1-1 and columns kx0..kx1-1 of the filter,
 * tap (ky, kx) reading input row iy0 + dh * ky and column ix0 + dw * kx of batch n. */
typedef struct {
    int32_t n, iy0, ix0, ky0, ky1, kx0, kx1;
} conv_taps_t;

/* CONV_2D's accumulator of output channel o: filter o's taps dotted with the input channels. */
static inline uint32_t conv_2d_acc(const conv_args_t *a, const conv_taps_t *w, int32_t o)
{
    uint32_t acc = 0;
    for (int32_t ky = w->ky0; ky < w->ky1; ++ky)
        for (int32_t kx = w->kx0; kx < w->kx1; ++kx) {
            const int8_t *xp = a->x + ((w->n * a->ih + w->iy0 + a->dh * ky) * a->iw + w->ix0 + a->dw * kx) * a->ic;
            const int8_t *fp = a->f + ((o * a->fh + ky) * a->fw + kx) * a->ic;
            int32_t s = 0; /* |s| <= ic * 32640 < 2**31 (ic <= 65535) */
            for (int32_t k = 0; k < a->ic; ++k) s += (int32_t)fp[k] * ((int32_t)xp[k] + a->in_off);
            acc += (uint32_t)s;
        }
    return acc;
}

/* DEPTHWISE_CONV_2D's accumulator of output channel o = ci * dm + m: input channel ci's taps. */
static inline uint32_t depthwise_conv_2d_acc(const conv_args_t *a, const conv_taps_t *w, int32_t o, int32_t ci)
{
    uint32_t acc = 0;
    for (int32_t ky = w->ky0; ky < w->ky1; ++ky)
        for (int32_t kx = w->kx0; kx < w->kx1; ++kx) {
            const int32_t at = ((w->n * a->ih + w->iy0 + a->dh * ky) * a->iw + w->ix0 + a->dw * kx) * a->ic + ci;
            acc += (uint32_t)(a->f[(ky * a->fw + kx) * a->oc + o] * ((int32_t)a->x[at] + a->in_off));
        }
    return acc;
}

/* The loops both kernels share: every output position, its taps on the input, every output
 * channel, requantized. Always inlined, so each kernel is compiled with its `depthwise` fixed
 * and carries no test of it. */
static inline __attribute__((always_inline)) void conv_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3],
                                                            const tfmb_tensor_t *out, const tfmb_ctx_t *c,
                                                            bool depthwise)
{
    const conv_args_t a = conv_args(op, t, out, c);
    const int32_t dm = depthwise ? op->p[12] : 1;
    conv_taps_t w;
    for (w.n = 0; w.n < a.batches; ++w.n)
        for (int32_t oy = 0; oy < a.oh; ++oy) {
            w.iy0 = oy * a.sh - a.ph;
            tfmb_taps_inside(w.iy0, a.dh, a.fh, a.ih, &w.ky0, &w.ky1);
            for (int32_t ox = 0; ox < a.ow; ++ox) {
                w.ix0 = ox * a.sw - a.pw;
                tfmb_taps_inside(w.ix0, a.dw, a.fw, a.iw, &w.kx0, &w.kx1);
                int8_t *yo = a.y + ((w.n * a.oh + oy) * a.ow + ox) * a.oc;
                for (int32_t ci = 0, o = 0; o < a.oc; ++ci)
                    for (int32_t m = 0; m < dm; ++m, ++o) {
                        const uint32_t acc = depthwise ? depthwise_conv_2d_acc(&a, &w, o, ci) : conv_2d_acc(&a, &w, o);
                        yo[o] = tfmb_requant(acc, a.b, a.mult, a.shift, o, a.out_off, a.lo, a.hi);
                    }
            }
        }
}

static void conv_2d_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c)
{
    conv_eval(op, t, out, c, false);
}

static void depthwise_conv_2d_eval(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                   const tfmb_ctx_t *c)
{
    conv_eval(op, t, out, c, true);
}

/* CONV_2D's scratch: two im2col columns of the filter's depth fh * fw * ic. */
static uint32_t conv_2d_scratch(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out)
{
    (void)op;
    (void)out;
    return tfmb_kernel_scratch((uint64_t)t[1].d[1] * (uint64_t)t[1].d[2] * (uint64_t)t[1].d[3], 2);
}

#if TFMB_CORE == TFMB_CORE_DSP
void tfmb_conv_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out, const tfmb_ctx_t *c);
#endif

static const tfmb_op_entry_t tfmb_op_conv_2d = {
    .code = TFMB_OP_CONV_2D,
    .inputs = 3, /* input, filter, optional bias */
    .required = 2,
    .activations = 1,
    .in_place = false,
    .validate = conv_validate,
    .eval = conv_2d_eval,
#if TFMB_CORE == TFMB_CORE_DSP
    .fast = tfmb_conv_2d_dsp, /* conv_dsp.c */
#elif TFMB_CORE == TFMB_CORE_MVE
    .fast = tfmb_conv_2d_mve,
#endif
    .scratch = conv_2d_scratch,
};
TFMB_REGISTER_OP(tfmb_op_conv_2d);

#if TFMB_CORE == TFMB_CORE_DSP
/* depthwise_dsp.c */
void tfmb_depthwise_conv_2d_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                const tfmb_ctx_t *c);

#endif

#if TFMB_CORE == TFMB_CORE_DSP || TFMB_CORE == TFMB_CORE_MVE
/* The optimised kernel where it is faster than the reference: DSP, filters it packs (at most
 * TFMB_DW_DSP_MAX_TAPS taps); MVE, depth multiplier 1 (its multiplier > 1 loop is scalar). */
static void depthwise_conv_2d_fast(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                   const tfmb_ctx_t *c)
{
#if TFMB_CORE == TFMB_CORE_DSP
    if ((int64_t)t[1].d[1] * t[1].d[2] <= TFMB_DW_DSP_MAX_TAPS) {
        tfmb_depthwise_conv_2d_dsp(op, t, out, c);
        return;
    }
#else
    if (op->p[12] == 1) {
        tfmb_depthwise_conv_2d_mve(op, t, out, c);
        return;
    }
#endif
    depthwise_conv_2d_eval(op, t, out, c);
}
#endif

static const tfmb_op_entry_t tfmb_op_depthwise_conv_2d = {
    .code = TFMB_OP_DEPTHWISE_CONV_2D,
    .inputs = 3,
    .required = 2,
    .activations = 1,
    .in_place = false,
    .validate = conv_validate,
    .eval = depthwise_conv_2d_eval,
#if TFMB_CORE == TFMB_CORE_DSP
    .fast = depthwise_conv_2d_fast,
#elif TFMB_CORE == TFMB_CORE_MVE
    .fast = depthwise_conv_2d_fast,
#endif
};
TFMB_REGISTER_OP(tfmb_op_depthwise_conv_2d);
