/*
 * Internal to the tftr training engine: program layout constants, decoded records, the op
 * table (tftr_op_table.c; one file per op under train_ops/) and the helpers its kernels share
 * (tftr_kernels.c). Layout: docs/fragment-format.md,
 * "Training program (TFTR)"; host compiler: tinyfed/firmware_bridge/compile/train_blob.py.
 */
#ifndef TFTR_INTERNAL_H
#define TFTR_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "tfmb_internal.h" /* op codes, little-endian readers */
#include "tftr.h"

/* The TFTR format (docs/fragment-format.md; host: compile/train_blob.py, checked by
 * tests/test_wire_constants.py). */
#define TFTR_MAGIC "TFTR"
#define TFTR_HEADER_BYTES 96u
#define TFTR_TENSOR_BYTES 48u
#define TFTR_OP_BYTES 64u
#define TFTR_UNIT_BYTES 24u
#define TFTR_NPARAMS 13
#define TFTR_NONE16 0xFFFFu /* = TFMB_NONE: tfmb_check_input_ids serves both formats */
#define TFTR_NONE32 0xFFFFFFFFu
#define TFTR_ALIGN 4u /* of the data section */

#define TFTR_KIND_ACT 0u /* float32 activation in the work area */
#define TFTR_KIND_Q8 1u  /* int8 constant (weights), per-channel scale / zero point */
#define TFTR_KIND_Q32 2u /* int32 constant (bias), per-channel scale, zero point 0 */

#define TFTR_ACT_NONE 0u
#define TFTR_ACT_RELU 1u
#define TFTR_ACT_RELU6 2u

#define TFTR_FLAG_ZERO_IN0 1u /* zero input 0's gradient before this op's backward */
#define TFTR_FLAG_ZERO_IN1 2u
#define TFTR_FLAG_ZERO_IN2 4u /* CONCATENATION of three inputs */

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

static inline bool tftr_in_range(int64_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; }

static inline bool tftr_is_act(const tftr_tensor_t *t) { return t->kind == TFTR_KIND_ACT; }

static inline bool tftr_batch1_4d(const tftr_tensor_t *t) { return t->rank == 4 && t->d[0] == 1; }

static inline bool tftr_params_zero_from(const tftr_op_t *op, int from)
{
    for (int i = from; i < TFTR_NPARAMS; ++i)
        if (op->p[i]) return false;
    return true;
}

/* A bias of n channels: int32 constant, channel axis 0. */
static inline bool tftr_check_bias(const tftr_tensor_t *b, int32_t n)
{
    return b->kind == TFTR_KIND_Q32 && b->axis == 0 && b->elems == (uint32_t)n && b->ch == (uint32_t)n;
}

static inline float tftr_activate(float v, uint8_t act)
{
    if (act == TFTR_ACT_RELU) return v > 0.0f ? v : 0.0f;
    if (act == TFTR_ACT_RELU6) return v > 0.0f ? (v < 6.0f ? v : 6.0f) : 0.0f;
    return v;
}

void tftr_read_tensor(const tftr_program_t *p, uint16_t id, tftr_tensor_t *t);
void tftr_read_op(const tftr_program_t *p, uint16_t idx, tftr_op_t *op);

/* ---- helpers the kernels share (tftr_kernels.c) ------------------------------------------ */

/* Channel ch of weight tensor w as floats: its w* row, or the scratch row dequantized. */
const float *tftr_weight_row(const tftr_ctx_t *c, const tftr_tensor_t *w, uint32_t ch);
/* Bias of channel ch (0 without a bias). */
float tftr_bias_value(const tftr_ctx_t *c, const tftr_tensor_t *b, uint32_t ch);
/* Gradient row of channel ch in grad (w*), or NULL when the channel is frozen (or w is NULL). */
float *tftr_grad_row(const tftr_ctx_t *c, const tftr_tensor_t *w, uint32_t ch);

/* ---- the op table ------------------------------------------------------------------------
 * One entry per op code the training engine runs. An op lives in one file under
 * engine/train_ops/ that defines its entry (a const tftr_op_entry_t named tftr_op_<name>);
 * tftr_op_table.c lists the entries. tftr_open does the checks every op shares (input count,
 * tensor ids, activations, fused activation and flags allowed, output and input gradients not
 * overlapping), then the entry's validate. Per sample, forward runs every op's forward; backward
 * runs, from the last op down to the first trainable one, the fused activation's derivative
 * and then the entry's backward; the loss (tftr_loss.c) starts it at the output (MSE) or below
 * the last op (the cross-entropies, which skip the SOFTMAX / LOGISTIC backward). Per-core kernel variants
 * are chosen in the entry at build time, as for the int8 engine (TFMB_CORE, tfmb_internal.h);
 * there are none: the kernels share one source, whose inner loops (tftr_fpu.h: dot products and
 * axpys) run as VLDMIA + VMLA.F32 blocks on a core with a single-precision FPU, bit-identical to
 * their C form (tests/test_train_fpu_qemu.py). */

/* Op-specific checks of an op (its inputs in[0..2] that are present, its output), after the
 * shared ones: NULL when they pass, else the first problem, which tftr_open reports as
 * BAD_MODEL "<problem> <op index>" (detail = op index). */
typedef const char *(*tftr_validate_fn)(const tftr_program_t *p, const tftr_op_t *op, const tftr_tensor_t in[3],
                                        const tftr_tensor_t *out);
/* Forward: y = act(op(x)). Backward: gradient of w* (trainable channels) and of the inputs
 * that have a gradient buffer, from the output gradient (act' already applied). */
typedef void (*tftr_kernel_fn)(const tftr_op_t *op, const tftr_tensor_t in[3], const tftr_tensor_t *out,
                               const tftr_ctx_t *c);

typedef struct {
    uint8_t code;                        /* TFLite BuiltinOperator (TFMB_OP_*) */
    uint8_t inputs;                      /* input slots the op may use: in[0 .. inputs) */
    uint8_t required;                    /* the first `required` of them must be present */
    uint8_t activations;                 /* leading activation inputs (output and gradients must not
                                          * overlap them; op flags ZERO_IN0.. may name them) */
    bool fused_activation;               /* accepts act RELU / RELU6 */
    bool in_place;                       /* output may share input 0's buffers (RESHAPE) */
    bool weighted;                       /* in[1] / in[2] are weights / bias that units of w* address */
    tftr_validate_fn validate;           /* op-specific record checks */
    tftr_kernel_fn forward;              /* float32 forward, this core's variant */
    tftr_kernel_fn backward;             /* gradient of the inputs and w* from the output's */
    bool last_only;                      /* only as the program's last op (SOFTMAX) */
} tftr_op_entry_t;

/* ---- the loss (tftr_loss.c) --------------------------------------------------------------- */

/* Checks the header's loss and target fields against the last op and the output: NULL or the
 * problem (tftr_open reports BAD_MODEL). */
const char *tftr_loss_check(const tftr_program_t *p, const tftr_op_t *last, const tftr_tensor_t in[3],
                            const tftr_tensor_t *out);
/* The sample's loss from the forward's values, and whether it is predicted right. */
float tftr_loss_value(const tftr_program_t *p, const tftr_ctx_t *c, const uint8_t *target, uint8_t *correct);
/* Starts the backward: MSE writes the output's gradient (then the last op's backward runs);
 * the cross-entropies add theirs to the last op's input gradient (its backward is skipped). */
void tftr_loss_backward(const tftr_program_t *p, const tftr_ctx_t *c, const tftr_op_t *last, const tftr_tensor_t in[3],
                        const tftr_tensor_t *out, const uint8_t *target);

/* The entry for an op code, or NULL (UNSUPPORTED_OP). */
const tftr_op_entry_t *tftr_find_op(uint8_t code);

/* Registers an op file's entry with the training engine, as TFMB_REGISTER_OP does for the int8
 * engine (section `tftr_ops`). */
#define TFTR_REGISTER_OP(entry) \
    const tftr_op_entry_t *const entry##_registration __attribute__((used, section("tftr_ops"))) = &entry

#endif /* TFTR_INTERNAL_H */
