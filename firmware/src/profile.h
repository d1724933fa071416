/* Per-op profiling and the kernel mode (docs/protocol.md, "Profiling"): PROFILE runs the active
 * fragment once with each op timed, PROFILE_READ pages the per-op cycles out, KERNELS reports the
 * optimised kernel path of this image and switches every engine run between it and the plain-C
 * reference kernels. */
#ifndef TINYFED_PROFILE_H
#define TINYFED_PROFILE_H

#include <stdbool.h>
#include <stdint.h>

#include "protocol.h"

/* Ops one PROFILE times (a static u32 each); a fragment with more answers OUT_OF_MEMORY. */
#ifndef PROFILE_MAX_OPS
#define PROFILE_MAX_OPS 64u
#endif
#define PROFILE_RESPONSE_BYTES 16u /* u32 cycles, u32 clock_hz, u16 ops, u8 mode, u8 counter, u32 output bytes */
#define PROFILE_OP_BYTES 8u /* PROFILE_READ: u32 cycles, u8 op code, u8 fast, u16 0 per op */
#define PROFILE_MODE_FAST 0u      /* PROFILE / KERNELS mode byte: this core's optimised kernels */
#define PROFILE_MODE_REFERENCE 1u /* the plain-C reference kernels */
#define PROFILE_COUNTER_DWT 1u     /* PROFILE's counter byte (as BENCH's) */
#define PROFILE_COUNTER_SYSTICK 2u
#define PROFILE_COUNTER_ESTIMATE 3u /* no counter: the sim:// twin's MAC-count estimate */

/* have_model: a fragment is committed (commands.c owns the slots). */
bool profile_cmd(bool have_model, const uint8_t *p, uint16_t len, reply_t *r);
bool profile_read_cmd(const uint8_t *p, uint16_t len, reply_t *r);
bool kernels_cmd(const uint8_t *p, uint16_t len, reply_t *r);
/* A new fragment was committed: the stored profile no longer describes it. */
void profile_forget(void);

#endif
