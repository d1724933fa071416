/*
 * Internal to the tftr training engine: program layout constants, decoded records and the
 * float32 kernels (firmware/engine/tftr_kernels.c). Layout: docs/fragment-format.md,
 * "Training program (TFTR)"; host compiler: tinyfed/firmware_bridge/compile/train_blob.py.
 */
#ifndef TFTR_INTERNAL_H
#define TFTR_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "tfmb_internal.h" /* op codes, little-endian readers */
#include "tftr.h"

#define TFTR_HEADER_BYTES 96u
#define TFTR_TENSOR_BYTES 48u
#define TFTR_OP_BYTES 64u
#define TFTR_UNIT_BYTES 24u
#define TFTR_NPARAMS 13
#define TFTR_NONE16 0xFFFFu
#define TFTR_NONE32 0xFFFFFFFFu

#define TFTR_KIND_ACT 0u /* float32 activation in the work area */
#define TFTR_KIND_Q8 1u  /* int8 constant (weights), per-channel scale / zero point */
#define TFTR_KIND_Q32 2u /* int32 constant (bias), per-channel scale, zero point 0 */

#define TFTR_ACT_NONE 0u
#define TFTR_ACT_RELU 1u
#define TFTR_ACT_RELU6 2u

#define TFTR_FLAG_ZERO_IN0 1u /* zero input 0's gradient before this op's backward */
#define TFTR_FLAG_ZERO_IN1 2u

typedef struct {
    int32_t d[4];
    uint32_t elems;
    uint8_t kind;
    uint8_t rank;
    uint8_t axis;
    /* activation: value / gradient byte offsets in the work area (grad NONE32 = none) */
    uint32_t voff;
    uint32_t goff;
    /* constant: channels and data-section offsets of q, scales (f32), zero points (i32), map (i32) */
    uint32_t ch;
    uint32_t q;
    uint32_t sc;
    uint32_t zp;
    uint32_t map;
} tftr_tensor_t;

typedef struct {
    uint8_t code;
    uint8_t act;
    uint8_t flags;
    uint16_t in[3];
    uint16_t out;
    int32_t p[TFTR_NPARAMS];
} tftr_op_t;

/* Everything a kernel touches, resolved once per call. */
typedef struct {
    const uint8_t *data; /* data section */
    float *values;       /* w* */
    float *grad;         /* accumulated gradient of w* */
    uint8_t *work;
    float *scratch; /* one dequantized weight row */
} tftr_ctx_t;

static inline float tftr_rdf(const uint8_t *p)
{
    const uint32_t u = tfmb_rdu32(p);
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline float *tftr_val(const tftr_ctx_t *c, const tftr_tensor_t *t) { return (float *)(void *)(c->work + t->voff); }

static inline float *tftr_grd(const tftr_ctx_t *c, const tftr_tensor_t *t)
{
    return t->goff == TFTR_NONE32 ? 0 : (float *)(void *)(c->work + t->goff);
}

void tftr_read_tensor(const tftr_program_t *p, uint16_t id, tftr_tensor_t *t);
void tftr_read_op(const tftr_program_t *p, uint16_t idx, tftr_op_t *op);

/* Forward: y = act(op(x)). */
void tftr_k_forward(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, const tftr_ctx_t *c);
/* Backward of one op: gradient of w* (trainable channels) and of the inputs that have a
 * gradient buffer; the output gradient is overwritten (activation derivative applied). */
void tftr_k_backward(const tftr_op_t *op, const tftr_tensor_t *t, const tftr_tensor_t *out, const tftr_ctx_t *c);
/* Multiply-accumulates of the forward pass of one op (for flops accounting in tests). */

#endif /* TFTR_INTERNAL_H */
