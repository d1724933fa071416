/* The board's private training data: the only place samples come from.
 *
 * The default implementation (local_data.c) serves a TFDS image (docs/protocol.md, "Local
 * data") that was written into the local-data flash store over the link (LOAD_BEGIN target 2)
 * or preloaded there (QEMU `-device loader`). A product that samples its own sensors replaces
 * the three functions below (they are weak symbols): count the windows it holds, and copy
 * window `index` as the model's int8 input (quantized with the fragment input's scale and
 * zero point) together with its target (the bytes of the task's target kind: a class byte,
 * k label bytes 0/1, k float32 values, or none when the window is its own target). No protocol
 * command reads samples back. */
#ifndef TINYFED_LOCAL_DATA_H
#define TINYFED_LOCAL_DATA_H

#include <stdbool.h>
#include <stdint.h>

/* Number of samples available (0 = no data). */
uint32_t local_data_count(void);
/* Bytes of one sample (the int8 input tensor of the fragment it feeds). */
uint32_t local_data_sample_bytes(void);
/* Copies sample `index` (< local_data_count()) to input[0 .. sample_bytes) and its target's
 * bytes (1, k, 4 k or 0 by kind) to target. */
bool local_data_sample(uint32_t index, int8_t *input, uint8_t *target);

/* Store management for the default implementation. */
void local_data_invalidate(void);                          /* the store is being rewritten */
/* Validates the TFDS image; its class / target count and target kind (TFDS_TARGET_*, the codes
 * of TFTR_TARGET_*). */
bool local_data_check(const char **err, uint16_t *classes, uint8_t *kind);

#endif
