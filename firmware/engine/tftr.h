/*
 * tftr: the firmware's float32 training engine for TFTR training programs.
 *
 * A training program is the tail of a plan (tail.tflite + trainable.tfw) compiled on the host
 * (tinyfed/firmware_bridge/compile/train_blob.py, format in docs/fragment-format.md). Its input is the
 * frozen int8 fragment's output; it runs the tail in float32, one sample at a time, and
 * backpropagates softmax cross-entropy down to the first op that holds a unit of w*.
 *
 * Weights outside w* stay int8 in the (read-only) program and are dequantized on the fly;
 * w* lives in caller RAM as three float32 vectors of tftr_trainable_count() values each, in
 * the order of trainable.tfw's records (channels x values per channel):
 *   values  the current w* (forward and backward read it, SGD writes it)
 *   start   w* as set at the model version (delta = values - start)
 *   grad    the batch's accumulated gradient
 * plus the planned activation / gradient work area. tftr_ram_bytes() is all of it; tftr_bind
 * refuses (OUT_OF_MEMORY) a capacity that cannot hold it.
 *
 * Plain C99, float32 only (the Cortex-M4F/M55 FPU), no heap; the program may live in flash.
 */
#ifndef TFTR_H
#define TFTR_H

#include <stdbool.h>
#include <stdint.h>

#include "tfmb.h" /* tfmb_error_t and the shared status codes */

#ifdef __cplusplus
extern "C" {
#endif

#define TFTR_VERSION 2u

/* The program's loss and what one sample's target is (docs/fragment-format.md). */
#define TFTR_LOSS_SOFTMAX_CE 0u  /* last op SOFTMAX; gradient beta (p - onehot) at its input */
#define TFTR_LOSS_SIGMOID_BCE 1u /* last op LOGISTIC; gradient (p - y) / k at its input */
#define TFTR_LOSS_MSE 2u         /* any last op; gradient 2 (out - t) / k at the output */

#define TFTR_TARGET_CLASS 0u  /* u8 class (SOFTMAX_CE) */
#define TFTR_TARGET_LABELS 1u /* k bytes 0/1 (SIGMOID_BCE) */
#define TFTR_TARGET_REAL 2u   /* k float32 (MSE) */
#define TFTR_TARGET_INPUT 3u  /* k int8 model-input values (MSE, autoencoder) */

typedef struct {
    const uint8_t *blob; /* the validated program (NULL = closed) */
    uint32_t size;
    /* decoded header and sections (offsets into blob), set by tftr_open */
    uint32_t ram_bytes;       /* total RAM the bound state needs */
    uint32_t work_bytes;      /* activation/gradient work area (part of ram_bytes) */
    uint32_t trainable_count; /* floats of w* */
    uint32_t input_elems;     /* int8 elements of the tail input (= frozen output) */
    uint32_t classes;         /* output elements: softmax classes, labels or real outputs */
    int32_t input_zero_point;
    float input_scale;
    uint16_t op_count;
    uint16_t tensor_count;
    uint16_t unit_count;
    uint16_t first_trainable_op;
    uint32_t tensors_offset;
    uint32_t ops_offset;
    uint32_t units_offset;
    uint32_t data_offset;
    uint32_t data_bytes;
    uint32_t flops;          /* multiply-accumulates of one tftr_accumulate (host-computed) */
    uint16_t input_tensor;   /* tensor ids of the tail input and the softmax output */
    uint16_t output_tensor;
    uint32_t scratch_offset; /* work-area byte offset of the dequantized weight row */
    uint32_t scratch_floats; /* its length: the longest channel of any weight tensor */
    uint8_t loss;            /* TFTR_LOSS_* */
    uint8_t target_kind;     /* TFTR_TARGET_*: what one sample's target is (tftr_target_bytes) */
    float target_scale;      /* TFTR_TARGET_INPUT: the model input's quantization */
    int32_t target_zero_point;
    /* bound RAM (tftr_bind) */
    float *values;
    float *start;
    float *grad;
    uint8_t *work;
} tftr_program_t;

/* Validates the whole program (offsets, shapes, op codes, parameters, unit addressing).
 * On failure: false, *p closed, first problem in *err (may be NULL). */
bool tftr_open(tftr_program_t *p, const uint8_t *blob, uint32_t size, tfmb_error_t *err);

uint32_t tftr_ram_bytes(const tftr_program_t *p);
uint32_t tftr_trainable_count(const tftr_program_t *p);
uint32_t tftr_input_elems(const tftr_program_t *p);
uint32_t tftr_classes(const tftr_program_t *p);
/* Bytes of one sample's target as tftr_accumulate reads it: CLASS 1 (the class), LABELS classes
 * (0 or 1 each), REAL 4 * classes (little-endian float32), INPUT classes (the model's int8
 * input, dequantized with the target scale and zero point). */
uint32_t tftr_target_bytes(const tftr_program_t *p);

/* Unit i of w* (0 .. unit_count-1): its channel count and values per channel, so the update
 * can be quantized per channel (one scale per record row). false for i out of range. */
bool tftr_unit_shape(const tftr_program_t *p, uint16_t i, uint32_t *channels, uint32_t *per_channel);

/* Places the state in ram[0 .. tftr_ram_bytes) (4-byte aligned) and loads w* with the
 * program's initial values (trainable.tfw's) into both values and start.
 * OUT_OF_MEMORY when capacity < tftr_ram_bytes(). */
bool tftr_bind(tftr_program_t *p, uint8_t *ram, uint32_t capacity, tfmb_error_t *err);

/* Copies values into start: w* is now "as set" (after the host wrote new values). */
void tftr_mark_start(tftr_program_t *p);

/* Zeroes the accumulated gradient (start of a mini-batch). */
void tftr_begin_batch(tftr_program_t *p);

/* One sample: dequantize the int8 tail input, forward in float32, the loss against target
 * (tftr_target_bytes() bytes), backward, add this sample's gradient to grad. *loss gets the
 * sample's loss: -log p[class] (p clamped at 1e-30; a class not below classes has p = 0); the
 * mean over outputs of the binary cross-entropy from the logits; the mean over outputs of
 * (out - target)^2. *correct (may be NULL) is 1 when the sample is predicted right: the argmax
 * is the class; every output's p >= 0.5 agrees with its label; never for MSE. */
void tftr_accumulate(tftr_program_t *p, const int8_t *input, const uint8_t *target, float *loss,
                     uint8_t *correct);

/* Forward only (evaluation): loss and correct, w* untouched. */
void tftr_predict(tftr_program_t *p, const int8_t *input, const uint8_t *target, float *loss,
                  uint8_t *correct);

/* SGD step on w*: values -= lr * grad / batch_count. */
void tftr_apply(tftr_program_t *p, float lr, uint32_t batch_count);

/* Float multiply-accumulates of one tftr_accumulate (forward + backward), for benchmarks. */
uint32_t tftr_train_flops(const tftr_program_t *p);

#ifdef __cplusplus
}
#endif

#endif /* TFTR_H */
