/* The board's private training data: the only place samples come from.
 *
 * The default implementation (local_data.c) serves a TFDS image (docs/protocol.md, "Local
 * data") that was written into the local-data flash store over the link (LOAD_BEGIN target 2)
 * or preloaded there (QEMU `-device loader`). A product that samples its own sensors replaces
 * the three functions below (they are weak symbols): count the windows it holds, and copy
 * window `index` as the model's int8 input (quantized with the fragment input's scale and
 * zero point) together with its label. No protocol command reads samples back. */
#ifndef TINYFED_LOCAL_DATA_H
#define TINYFED_LOCAL_DATA_H

#include <stdbool.h>
#include <stdint.h>

/* Number of labelled samples available (0 = no data). */
uint32_t local_data_count(void);
/* Bytes of one sample (the int8 input tensor of the fragment it feeds). */
uint32_t local_data_sample_bytes(void);
/* Copies sample `index` (< local_data_count()) to input[0 .. sample_bytes) and its class. */
bool local_data_sample(uint32_t index, int8_t *input, uint8_t *label);

/* Store management for the default implementation. */
void local_data_invalidate(void);                          /* the store is being rewritten */
bool local_data_check(const char **err, uint16_t *classes); /* validate the TFDS image */

#endif
