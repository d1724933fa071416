/* Single-producer (UART ISR) / single-consumer (main loop) byte ring. */
#ifndef TINYFED_RINGBUF_H
#define TINYFED_RINGBUF_H

#include <stdbool.h>
#include <stdint.h>

#define RINGBUF_BYTES 2048u  /* power of two; sets the window (window.h): 7 maximal frames */

typedef struct {
    volatile uint32_t head;  /* written by the producer only */
    volatile uint32_t tail;  /* written by the consumer only */
    volatile uint32_t dropped;
    uint8_t data[RINGBUF_BYTES];
} ringbuf_t;

bool ringbuf_push(ringbuf_t *rb, uint8_t byte);
bool ringbuf_pop(ringbuf_t *rb, uint8_t *byte);
bool ringbuf_empty(const ringbuf_t *rb);

#endif
