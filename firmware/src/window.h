/* The receive side of a windowed transfer (docs/protocol.md, "Windowed transfers"): the board
 * acknowledges the highest contiguous offset it holds (`next`) and keeps up to WINDOW_HELD
 * ranges that arrived ahead of a gap, so the host resends only the gap. */
#ifndef TINYFED_WINDOW_H
#define TINYFED_WINDOW_H

#include <stdint.h>

#include "protocol.h"
#include "ringbuf.h"

/* Request frames the host may have in flight: as many maximal frames (delimiter included) as the
 * UART RX ring holds while the board programs flash or verifies a tag. Announced in HELLO. */
#define PROTO_WINDOW (RINGBUF_BYTES / (PROTO_MAX_ENCODED + 1u))
#define WINDOW_HELD (PROTO_WINDOW > 1u ? PROTO_WINDOW - 1u : 1u)

_Static_assert(PROTO_WINDOW >= 1u && PROTO_WINDOW <= 255u, "the window travels in one HELLO byte");

typedef struct {
    uint32_t start;
    uint32_t end;
} win_range_t;

typedef struct {
    uint32_t next;  /* everything below is held: the cumulative acknowledgement */
    uint8_t count;
    win_range_t held[WINDOW_HELD];
} win_t;

typedef enum {
    WIN_NEXT,    /* starts at next: store it, then win_took */
    WIN_AHEAD,   /* inside the window past a gap: store it, then win_hold */
    WIN_HELD,    /* held already (a retransmission): store nothing, acknowledge */
    WIN_REFUSE,  /* straddles next or a held range, past the window, or no room: OUT_OF_ORDER */
} win_place_t;

void win_reset(win_t *w, uint32_t next);
/* Where [offset, offset + n) falls; `span` bounds how far past next a range may end. The caller
 * has checked offset + n against the transfer's size. */
win_place_t win_place(const win_t *w, uint32_t offset, uint32_t n, uint32_t span);
/* n bytes (or values) at next were stored: advance, absorbing held ranges now contiguous. */
void win_took(win_t *w, uint32_t n);
void win_hold(win_t *w, uint32_t offset, uint32_t n);

#endif
