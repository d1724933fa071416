#include "ringbuf.h"

bool ringbuf_push(ringbuf_t *rb, uint8_t byte)
{
    uint32_t head = rb->head;
    if (head - rb->tail >= RINGBUF_BYTES) {
        rb->dropped++;
        return false;
    }
    rb->data[head & (RINGBUF_BYTES - 1u)] = byte;
    __asm volatile("dmb 0xF" ::: "memory");
    rb->head = head + 1u;
    return true;
}

bool ringbuf_pop(ringbuf_t *rb, uint8_t *byte)
{
    uint32_t tail = rb->tail;
    if (rb->head == tail) {
        return false;
    }
    __asm volatile("dmb 0xF" ::: "memory");
    *byte = rb->data[tail & (RINGBUF_BYTES - 1u)];
    rb->tail = tail + 1u;
    return true;
}

bool ringbuf_empty(const ringbuf_t *rb)
{
    return rb->head == rb->tail;
}
