/* The sample order of local training: a keyed permutation of 0..n-1 that needs no memory (a
 * 4-round Feistel network on the next even power of two, cycle-walked into range). The host's
 * sim:// board computes the same order (tinyfed/firmware_bridge/twin/shuffle.py). */
#ifndef TINYFED_SHUFFLE_H
#define TINYFED_SHUFFLE_H

#include <stdint.h>

uint32_t shuffle_mix32(uint32_t x);
/* The key of one epoch: every epoch of every seed visits the samples in another order. */
uint32_t shuffle_epoch_key(uint32_t seed, uint32_t epoch);
/* Position i (0..n-1) of the permutation of 0..n-1 under key; n >= 1. */
uint32_t shuffle_index(uint32_t i, uint32_t n, uint32_t key);

#endif
