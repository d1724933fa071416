/* tinyfed firmware entry: bring the board up, then sleep (WFI) until the UART has bytes. */
#include "auth.h"
#include "board.h"
#include "cortexm_idle.h"
#include "protocol.h"
#include "ringbuf.h"

static ringbuf_t rx_ring;

void uart_rx_byte_from_isr(uint8_t byte)
{
    (void)ringbuf_push(&rx_ring, byte);
}

int main(void)
{
    board_init();
    cycles_init();
    auth_init();
    commands_init();
    protocol_init();
    for (;;) {
        uint8_t byte;
        while (ringbuf_pop(&rx_ring, &byte)) {
            protocol_rx_byte(byte);
            if (protocol_reset_requested()) {
                board_reset();
            }
        }
        /* Sleep only if nothing arrived since the check: with interrupts masked, WFI still
         * wakes on a pending interrupt, which then runs after cpsie. */
        idle_irq_disable();
        if (ringbuf_empty(&rx_ring)) {
            idle_wfi();
        }
        idle_irq_enable();
    }
}
