/*
 * Internal to the tfmb engine: blob layout constants, decoded records, fixed-point
 * arithmetic (TFLM / gemmlowp semantics) and the kernel entry points.
 */
#ifndef TFMB_INTERNAL_H
#define TFMB_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "tfmb.h"

#define TFMB_HEADER_BYTES 64u
#define TFMB_TENSOR_BYTES 40u
#define TFMB_OP_BYTES 80u
#define TFMB_NPARAMS 16
#define TFMB_NONE 0xFFFFu

#define TFMB_TYPE_INT32 2u
#define TFMB_TYPE_INT8 9u
#define TFMB_FLAG_CONSTANT 1u

/* TFLite BuiltinOperator codes. */
#define TFMB_OP_ADD 0u
#define TFMB_OP_AVERAGE_POOL_2D 1u
#define TFMB_OP_CONV_2D 3u
#define TFMB_OP_DEPTHWISE_CONV_2D 4u
#define TFMB_OP_FULLY_CONNECTED 9u
#define TFMB_OP_MAX_POOL_2D 17u
#define TFMB_OP_RESHAPE 22u
#define TFMB_OP_SOFTMAX 25u

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

void tfmb_k_conv(const tfmb_op_t *op, const tfmb_tensor_t *in, const tfmb_tensor_t *filt,
                 const tfmb_tensor_t *bias, const tfmb_tensor_t *out, const tfmb_ctx_t *c);
void tfmb_k_depthwise(const tfmb_op_t *op, const tfmb_tensor_t *in, const tfmb_tensor_t *filt,
                      const tfmb_tensor_t *bias, const tfmb_tensor_t *out, const tfmb_ctx_t *c);
void tfmb_k_fully_connected(const tfmb_op_t *op, const tfmb_tensor_t *in, const tfmb_tensor_t *filt,
                            const tfmb_tensor_t *bias, const tfmb_tensor_t *out, const tfmb_ctx_t *c);
void tfmb_k_max_pool(const tfmb_op_t *op, const tfmb_tensor_t *in, const tfmb_tensor_t *out, const tfmb_ctx_t *c);
void tfmb_k_avg_pool(const tfmb_op_t *op, const tfmb_tensor_t *in, const tfmb_tensor_t *out, const tfmb_ctx_t *c);
void tfmb_k_softmax(const tfmb_op_t *op, const tfmb_tensor_t *in, const tfmb_tensor_t *out, const tfmb_ctx_t *c);
void tfmb_k_add(const tfmb_op_t *op, const tfmb_tensor_t *in1, const tfmb_tensor_t *in2, const tfmb_tensor_t *out,
                const tfmb_ctx_t *c);
void tfmb_k_reshape(const tfmb_tensor_t *in, const tfmb_tensor_t *out, const tfmb_ctx_t *c);

#endif /* TFMB_INTERNAL_H */
