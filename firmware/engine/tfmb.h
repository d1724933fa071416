/*
 * tfmb: the firmware's int8 inference engine for TFMB fragment blobs.
 *
 * The host compiles an int8 .tflite fragment into a blob (docs/fragment-format.md,
 * tinyfed/firmware_bridge/compile/blob.py) with every kernel parameter precomputed exactly as
 * TFLM's Prepare computes it, and with the activation arena planned. The engine validates
 * a blob once (tfmb_open: every offset, dimension, op code and parameter range, and that the
 * planned arena fits), then runs it (tfmb_invoke) with integer kernels that are bit-exact
 * with TFLM's reference int8 kernels.
 *
 * Plain C99: no heap, no floating point, nothing from libc beyond string.h. The blob may
 * live in flash (read-only, any alignment); the arena is caller RAM (any alignment).
 */
#ifndef TFMB_H
#define TFMB_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TFMB_VERSION 1u

/* Status codes: the response codes of docs/protocol.md. */
#define TFMB_OK 0u
#define TFMB_OUT_OF_MEMORY 4u
#define TFMB_UNSUPPORTED_OP 5u
#define TFMB_WRONG_VERSION 6u
#define TFMB_NO_MODEL 9u
#define TFMB_BAD_MODEL 10u

typedef struct {
    uint8_t status;   /* TFMB_* status code (protocol response code) */
    uint16_t detail;  /* op code (UNSUPPORTED_OP), version (WRONG_VERSION), op/tensor index, arena KiB */
    char message[64]; /* NUL-terminated first-error string */
} tfmb_error_t;

typedef struct {
    const uint8_t *blob; /* the validated blob (typically in flash) */
    uint32_t size;
    /* Decoded header (set by tfmb_open; offsets are into blob). */
    uint32_t arena_bytes;
    uint32_t tensors_offset;
    uint32_t ops_offset;
    uint32_t data_offset;
    uint32_t data_bytes;
    uint16_t tensor_count;
    uint16_t op_count;
    uint16_t input_tensor;
    uint16_t output_tensor;
    uint32_t input_offset; /* arena offset and size of the input / output tensors */
    uint32_t input_bytes;
    uint32_t output_offset;
    uint32_t output_bytes;
} tfmb_model_t;

/* Validates the whole blob; on success fills *m and returns true. On failure returns false,
 * leaves *m closed (blob == NULL) and describes the first problem in *err (may be NULL). */
bool tfmb_open(tfmb_model_t *m, const uint8_t *blob, uint32_t size, uint32_t arena_capacity,
               tfmb_error_t *err);

uint32_t tfmb_arena_bytes(const tfmb_model_t *m);
uint32_t tfmb_input_bytes(const tfmb_model_t *m);
uint32_t tfmb_output_bytes(const tfmb_model_t *m);
int8_t *tfmb_input(const tfmb_model_t *m, uint8_t *arena);
const int8_t *tfmb_output(const tfmb_model_t *m, const uint8_t *arena);

/* Runs every op in order on `arena` (at least tfmb_arena_bytes() bytes). Returns false only
 * for a model that was not opened (NO_MODEL) or a NULL arena. */
bool tfmb_invoke(const tfmb_model_t *m, uint8_t *arena, tfmb_error_t *err);

uint16_t tfmb_op_count(const tfmb_model_t *m);

/* How tfmb_invoke_with runs a model: the plain-C reference kernels instead of this core's
 * optimised ones (bit-exact either way: profiles compare both on one image), and, when clock
 * and op_ticks are set, each op's duration in clock ticks (op_ticks has op_count entries). */
typedef uint32_t (*tfmb_clock_fn)(void);
typedef struct {
    bool reference;
    tfmb_clock_fn clock;
    uint32_t *op_ticks;
} tfmb_run_options_t;

/* tfmb_invoke with options (NULL: this core's kernels, untimed). */
bool tfmb_invoke_with(const tfmb_model_t *m, uint8_t *arena, const tfmb_run_options_t *opt, tfmb_error_t *err);

/* Op `index` of an opened model: its TFLite op code, and whether this build has an optimised
 * kernel for it (what tfmb_invoke_with runs unless opts.reference). False past op_count. */
bool tfmb_op_info(const tfmb_model_t *m, uint16_t index, uint8_t *code, bool *fast);

/* The optimised kernel path this engine was built with: "dsp", "mve" or "c". */
const char *tfmb_kernel_path(void);

#ifdef __cplusplus
}
#endif

#endif /* TFMB_H */
