/* Local training on the board (docs/protocol.md, "Training"): the training program and
 * local-data stores, w* at a model version, TRAIN / UPDATE_READ / EVALUATE, and STATS. */
#ifndef TINYFED_TRAIN_H
#define TINYFED_TRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "protocol.h"

#define LOAD_TARGET_FRAGMENT 0u
#define LOAD_TARGET_PROGRAM 1u
#define LOAD_TARGET_DATA 2u

/* A LOAD_BEGIN for the program or data store is about to overwrite it. */
void train_store_invalidate(uint8_t target);
/* LOAD_COMMIT of a program / data image that passed its CRC; fills the 8-byte OK reply. */
bool train_commit_program(const uint8_t *blob, uint32_t size, reply_t *r);
bool train_commit_data(reply_t *r);
/* A new fragment became active: the training state is placed again (w* back to version 0). */
void train_fragment_changed(void);
/* CMD_TRAIN_SET, CMD_TRAIN, CMD_UPDATE_READ, CMD_EVALUATE, CMD_STATS. */
void train_execute(uint8_t code, const uint8_t *payload, uint16_t length, reply_t *reply);
void train_init(void);

#endif
