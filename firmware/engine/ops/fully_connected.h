/*
 * FULLY_CONNECTED's operands, unpacked once for the plain-C reference (fully_connected.c) and the
 * DSP and Helium kernels (fully_connected_dsp.c, fully_connected_mve.c), which run the
 * reference's loop themselves for what they do not cover (a non-zero weight offset).
 */
#ifndef TFMB_OPS_FULLY_CONNECTED_H
#define TFMB_OPS_FULLY_CONNECTED_H

#include "../tfmb_internal.h"

typedef struct {
    const int8_t *x;       /* input, batches x depth */
    const int8_t *f;       /* weights, n_out x depth */
    int8_t *y;             /* output, batches x n_out */
    const uint8_t *bias;   /* n_out int32 (little endian), or NULL */
    const uint8_t *mult;   /* per-output requantization multipliers */
    const uint8_t *shift;  /* and shifts */
    int32_t in_off, out_off, lo, hi, f_off, n_out, depth, batches;
} tfmb_fc_args_t;

static inline tfmb_fc_args_t tfmb_fc_args(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                                          const tfmb_ctx_t *c)
{
    const int32_t n_out = t[1].d[0];
    return (tfmb_fc_args_t){
        .x = (const int8_t *)(c->arena + t[0].offset),
        .f = (const int8_t *)(c->data + t[1].offset),
        .y = (int8_t *)(c->arena + out->offset),
        .bias = op->in[2] != TFMB_NONE ? c->data + t[2].offset : 0,
        .mult = c->data + op->p[10],
        .shift = c->data + op->p[11],
        .in_off = op->p[0],
        .out_off = op->p[1],
        .lo = op->p[2],
        .hi = op->p[3],
        .f_off = op->p[4],
        .n_out = n_out,
        .depth = t[1].d[1],
        .batches = (int32_t)(out->elems / (uint32_t)n_out),
    };
}

/* The reference loop (TFLM's arithmetic), for every weight offset. */
void tfmb_fully_connected_ref(const tfmb_fc_args_t *a);

/* The optimised kernels, each its core's `fast` entry; both run the reference loop themselves
 * for a non-zero weight offset. */
#if TFMB_CORE == TFMB_CORE_DSP
void tfmb_fully_connected_dsp(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                              const tfmb_ctx_t *c);
#elif TFMB_CORE == TFMB_CORE_MVE
void tfmb_fully_connected_mve(const tfmb_op_t *op, const tfmb_tensor_t t[3], const tfmb_tensor_t *out,
                              const tfmb_ctx_t *c);
#endif

#endif /* TFMB_OPS_FULLY_CONNECTED_H */
