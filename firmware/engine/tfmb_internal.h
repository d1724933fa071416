/*
 * Internal to the tfmb engine: blob layout constants, decoded records, fixed-point
 * arithmetic (TFLM / gemmlowp semantics) and the op table.
 */
#ifndef TFMB_INTERNAL_H
#define TFMB_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "tfmb.h"

/* The TFMB format (docs/fragment-format.md; host: compile/blob.py, checked by
 * tests/test_wire_constants.py). */
#define TFMB_MAGIC "TFMB"
#define TFMB_HEADER_BYTES 64u
#define TFMB_TENSOR_BYTES 40u
#define TFMB_OP_BYTES 80u
#define TFMB_NPARAMS 16
#define TFMB_NONE 0xFFFFu
#define TFMB_ALIGN 16u /* of the data section */

#define TFMB_TYPE_INT32 2u
#define TFMB_TYPE_INT8 9u
#define TFMB_FLAG_CONSTANT 1u

/* TFLite BuiltinOperator codes: the ops the engines know (one entry each in tfmb_op_table.c
 * and, when trainable, tftr_op_table.c). tests/test_wire_constants.py checks them against the
 * host's OP_CODES. */
#define TFMB_OP_ADD 0u
#define TFMB_OP_AVERAGE_POOL_2D 1u
#define TFMB_OP_CONCATENATION 2u
#define TFMB_OP_CONV_2D 3u
#define TFMB_OP_DEPTHWISE_CONV_2D 4u
#define TFMB_OP_FULLY_CONNECTED 9u
#define TFMB_OP_LOGISTIC 14u
#define TFMB_OP_MAX_POOL_2D 17u
#define TFMB_OP_MUL 18u
#define TFMB_OP_RELU 19u
#define TFMB_OP_RELU6 21u
#define TFMB_OP_RESHAPE 22u
#define TFMB_OP_SOFTMAX 25u
#define TFMB_OP_TANH 28u
#define TFMB_OP_PAD 34u
#define TFMB_OP_MEAN 40u
#define TFMB_OP_SQUEEZE 43u
#define TFMB_OP_STRIDED_SLICE 45u
#define TFMB_OP_PADV2 60u
#define TFMB_OP_EXPAND_DIMS 70u
#define TFMB_OP_LEAKY_RELU 98u
#define TFMB_OP_QUANTIZE 114u
#define TFMB_OP_HARD_SWISH 117u

/* Validation bounds shared by both engines. */
#define TFMB_MAX_DIM 65535
#define TFMB_MAX_STRIDE 255

typedef struct {
    int32_t d[4]; /* dims, padded with 1 beyond rank */
    uint32_t offset;
    uint32_t nbytes;
    uint32_t elems;
    uint8_t type;
    uint8_t rank;
    uint8_t constant;
} tfmb_tensor_t;

typedef struct {
    int32_t p[TFMB_NPARAMS];
    uint16_t in[3];
    uint16_t out;
    uint8_t code;
} tfmb_op_t;

typedef struct {
    const uint8_t *data; /* constant section */
    uint8_t *arena;
} tfmb_ctx_t;

/* The first-error string of both engines (tfmb.c, tftr.c): fills *err (when not NULL) with
 * status, detail and msg [+ ' ' + number]; returns false. Static: each engine keeps its own
 * copy, which the compiler specialises for its call sites (an extern one costs flash). */
__attribute__((unused)) static bool tfmb_fail(tfmb_error_t *err, uint8_t status, uint32_t detail, const char *msg, uint32_t number, bool with_number)
{
    if (!err) return false;
    err->status = status;
    err->detail = (uint16_t)(detail > 0xFFFFu ? 0xFFFFu : detail);
    size_t n = strlen(msg);
    if (n > sizeof(err->message) - 12) n = sizeof(err->message) - 12;
    memcpy(err->message, msg, n);
    if (with_number) {
        char digits[10];
        int k = 0;
        do {
            digits[k++] = (char)('0' + number % 10u);
            number /= 10u;
        } while (number && k < 10);
        err->message[n++] = ' ';
        while (k) err->message[n++] = digits[--k];
    }
    err->message[n] = '\0';
    return false;
}


static inline uint16_t tfmb_rd16(const uint8_t *p) { return (uint16_t)(p[0] | ((uint16_t)p[1] << 8)); }

static inline uint32_t tfmb_rdu32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline int32_t tfmb_rd32(const uint8_t *p) { return (int32_t)tfmb_rdu32(p); }

/* Wrapping int32 add/sub (two's complement; no undefined behaviour). */
static inline int32_t tfmb_wadd(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }
static inline int32_t tfmb_wsub(int32_t a, int32_t b) { return (int32_t)((uint32_t)a - (uint32_t)b); }
static inline int32_t tfmb_wshl(int32_t a, int s) { return (int32_t)((uint32_t)a << s); }

/* gemmlowp SaturatingRoundingDoublingHighMul. */
static inline int32_t tfmb_srdhm(int32_t a, int32_t b)
{
    if (a == b && a == INT32_MIN) return INT32_MAX;
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? (1LL << 30) : (1LL - (1LL << 30));
    return (int32_t)((ab + nudge) / (1LL << 31));
}

/* gemmlowp RoundingDivideByPOT, exponent in [0, 31]. */
static inline int32_t tfmb_rdbp(int32_t x, int exponent)
{
    const int32_t mask = (int32_t)((1u << exponent) - 1u);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* TFLM MultiplyByQuantizedMultiplier (double rounding), shift in [-31, 30]. */
static inline int32_t tfmb_mbqm(int32_t x, int32_t multiplier, int32_t shift)
{
    const int left = shift > 0 ? (int)shift : 0;
    const int right = shift > 0 ? 0 : (int)-shift;
    return tfmb_rdbp(tfmb_srdhm(tfmb_wshl(x, left), multiplier), right);
}

static inline int32_t tfmb_clamp(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* Per-channel requantization of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED: acc + bias[o],
 * MultiplyByQuantizedMultiplier(mult[o], shift[o]), + out_off, clamp to [lo, hi]. */
static inline int8_t tfmb_requant(uint32_t acc, const uint8_t *bias, const uint8_t *mult, const uint8_t *shift,
                                  int32_t o, int32_t out_off, int32_t lo, int32_t hi)
{
    if (bias) acc += tfmb_rdu32(bias + 4 * o);
    int32_t v = tfmb_mbqm((int32_t)acc, tfmb_rd32(mult + 4 * o), tfmb_rd32(shift + 4 * o));
    return (int8_t)tfmb_clamp(tfmb_wadd(v, out_off), lo, hi);
}

static inline bool tfmb_in_range(int32_t v, int32_t lo, int32_t hi) { return v >= lo && v <= hi; }

/* The taps of a window (conv filter or pool window, both engines) that fall on the input:
 * tap k in [0, taps) reads position start + k * step, and [*first, *end) are those inside
 * [0, size). Kernels loop over that range once per output position instead of testing every
 * tap; the taps summed, and their order, are the same. start >= -TFMB_MAX_DIM,
 * size <= TFMB_MAX_DIM and step in [1, TFMB_MAX_STRIDE] (validated), so nothing overflows. */
static inline void tfmb_taps_inside(int32_t start, int32_t step, int32_t taps, int32_t size, int32_t *first,
                                    int32_t *end)
{
    const int32_t room = size - start; /* positions start .. size - 1 */
    const int32_t last = room > 0 ? (room + step - 1) / step : 0;
    *first = start < 0 ? (step - 1 - start) / step : 0;
    *end = last < taps ? last : taps;
}

/* The input-slot checks both engines' op records share: the entry's first `required` of
 * in[0..2] present (not TFMB_NONE), none beyond its `inputs`, every present id below `count`.
 * NULL when they pass, else the problem (reported with the op index). */
static inline const char *tfmb_check_input_ids(const uint16_t in[3], uint8_t required, uint8_t inputs,
                                               uint32_t count)
{
    for (int i = 0; i < 3; ++i) {
        if (in[i] == TFMB_NONE) {
            if (i < required) return "missing input at op";
            continue;
        }
        if (i >= inputs) return "extra input at op";
        if (in[i] >= count) return "input id out of range at op";
    }
    return 0;
}

static inline bool tfmb_is_activation(const tfmb_tensor_t *t) { return !t->constant && t->type == TFMB_TYPE_INT8; }

/* ---- the op table ------------------------------------------------------------------------
 * One entry per op code. An op lives in one file under engine/ops/ that defines its entry
 * (a const tfmb_op_entry_t named tfmb_op_<name>); tfmb_op_table.c lists the entries. tfmb_open
 * does the checks every op shares (input count, tensor ids, int8 activations, output not
 * overlapping its activation inputs, the scratch at p13/p14 as the entry's scratch function sizes
 * it, p15 zero), then the entry's validate; tfmb_invoke calls the entry's fast kernel (or its
 * eval when it has none, or when the caller asks for the reference), which may then trust
 * everything validate checked.
 *
 * Kernel variants per core: an entry's eval is fixed at build time. TFMB_CORE names the core
 * class of this build, from the compiler's own feature macros (the board's -mcpu):
 *   TFMB_CORE_MVE  Helium (M-profile vector extension: Cortex-M55/M85), __ARM_FEATURE_MVE
 *   TFMB_CORE_DSP  the DSP extension (Cortex-M4/M7/M33), __ARM_FEATURE_DSP
 *   TFMB_CORE_C    anything else (host builds, Cortex-M0/M3)
 * An op that gains an optimised kernel sets it as its entry's `fast`, in its own file:
 *   #if TFMB_CORE == TFMB_CORE_DSP
 *       .fast = tfmb_conv_2d_dsp,
 *   #endif
 * The plain-C kernel stays the reference a variant must match bit for bit, and stays in every
 * build (tfmb_invoke_with can run it, for profiles that compare both on one image). Host test
 * builds define TFMB_CORE_OVERRIDE to compile a path with tfmb_simd.h's portable intrinsics. */
#define TFMB_CORE_C 0
#define TFMB_CORE_DSP 1
#define TFMB_CORE_MVE 2
#if defined(TFMB_CORE_OVERRIDE)
/* Host builds of an optimised path (tests): tfmb_simd.h supplies portable intrinsics. */
#define TFMB_CORE TFMB_CORE_OVERRIDE
#elif defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
#define TFMB_CORE TFMB_CORE_MVE
#elif defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#define TFMB_CORE TFMB_CORE_DSP
#else
#define TFMB_CORE TFMB_CORE_C
#endif

/* Filter taps the DSP depthwise kernel packs (7x7); longer filters (TFLM micro_speech's 10x8
 * with depth multiplier 8) run the reference kernel, which is faster for them. */
#define TFMB_DW_DSP_MAX_TAPS 49
/* Op-specific checks of an op (its inputs in[0..2] that are present, its output), after the
 * shared ones: NULL when they pass, else the first problem, which tfmb_open reports as
 * BAD_MODEL "<problem> <op index>" (detail = op index). */
typedef const char *(*tfmb_validate_fn)(const tfmb_model_t *m, const tfmb_op_t *op, const tfmb_tensor_t in[3],
                                        const tfmb_tensor_t *out);
/* Runs the op on the arena (in[k] is only read for inputs that are present). */
typedef void (*tfmb_eval_fn)(const tfmb_op_t *op, const tfmb_tensor_t in[3], const tfmb_tensor_t *out,
                             const tfmb_ctx_t *c);

/* Arena scratch bytes an op needs (its record carries them at p13 offset / p14 bytes; the host's
 * compile/blob.py computes the same from the same formula, and tfmb_open requires equality). */
typedef uint32_t (*tfmb_scratch_fn)(const tfmb_op_t *op, const tfmb_tensor_t in[3], const tfmb_tensor_t *out);
typedef struct {
    uint8_t code;              /* TFLite BuiltinOperator (TFMB_OP_*) */
    uint8_t inputs;            /* input slots the op may use: in[0 .. inputs) */
    uint8_t required;          /* the first `required` of them must be present */
    uint8_t activations;       /* leading inputs that are activations the output must not overlap */
    bool in_place;             /* the output may share input 0's buffer (RESHAPE: no overlap check) */
    tfmb_validate_fn validate; /* op-specific record checks */
    tfmb_eval_fn eval;         /* the plain-C reference kernel (every core) */
    tfmb_eval_fn fast;         /* this core's optimised kernel (TFMB_CORE), NULL: eval runs */
    tfmb_scratch_fn scratch;   /* the arena scratch the kernels use, NULL: none */
} tfmb_op_entry_t;
/* Scratch of the optimised int8 dot-product kernels: `columns` int16 copies of a `depth`-long
 * input vector, each padded to 16 elements (host: tinyfed/ops/base.py kernel_scratch_bytes).
 * depth <= 65535^3 is validated before, so 64-bit arithmetic cannot overflow; > 2 GiB is refused
 * as "scratch outside the arena" by the shared check. */
static inline uint32_t tfmb_kernel_scratch(uint64_t depth, uint32_t columns)
{
    const uint64_t n = 2u * (uint64_t)columns * ((depth + 15u) / 16u * 16u);
    return n > 0x7FFFFFFFu ? 0x7FFFFFFFu : (uint32_t)n;
}
/* The op's scratch buffer in the arena (p13 offset, p14 bytes; validated by tfmb_open). */
static inline void *tfmb_scratch(const tfmb_op_t *op, const tfmb_ctx_t *c) { return c->arena + op->p[13]; }

/* The entry for an op code, or NULL (UNSUPPORTED_OP). */
const tfmb_op_entry_t *tfmb_find_op(uint8_t code);

/* Registers an op file's entry with the int8 engine, so that adding an op is adding its file: the
 * linker gathers every registered pointer into the section `tfmb_ops`, which tfmb_find_op walks
 * from __start_tfmb_ops to __stop_tfmb_ops (GNU ld defines both for a section named like a C
 * identifier; boards/common/sections.ld places the section in flash and defines them there). */
#define TFMB_REGISTER_OP(entry) \
    const tfmb_op_entry_t *const entry##_registration __attribute__((used, section("tfmb_ops"))) = &entry

/* Helpers for the validate functions (tfmb.c), NULL or the problem as they: the zero points and
 * activation range at p0..p3; the n-entry per-channel multiplier/shift arrays at p10/p11. */
const char *tfmb_check_common_q(const tfmb_op_t *op);
/* Tensor record `id` (< tensor_count; every record was validated before the ops) decoded. */
void tfmb_read_tensor(const tfmb_model_t *m, uint16_t id, tfmb_tensor_t *t);
const char *tfmb_check_requant_arrays(const tfmb_model_t *m, const tfmb_op_t *op, int32_t n);

#endif /* TFMB_INTERNAL_H */
