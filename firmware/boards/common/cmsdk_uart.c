/* The board layer's UART on the CMSDK boards (QEMU MPS2/MPS3): RX by interrupt into the common
 * ring buffer, TX polled. Compiled only for them (their board.mk lists it and defines
 * BOARD_UART_BASE next to BOARD_UART_IRQ and BOARD_CLOCK_HZ). */
#include "cortexm.h"
#include "cmsdk_uart.h"
#include "../../src/board.h"

#ifndef BOARD_UART_BASE
#error "board.mk must define BOARD_UART_BASE (the CMSDK UART's address)"
#endif

#define UART_BAUD 115200u

void board_init(void)
{
    CMSDK_UART_CTRL(BOARD_UART_BASE) = 0;
    CMSDK_UART_BAUDDIV(BOARD_UART_BASE) = BOARD_CLOCK_HZ / UART_BAUD;  /* >= 16 or the UART stays silent */
    CMSDK_UART_INTSTAT(BOARD_UART_BASE) = 0xFu;
    CMSDK_UART_CTRL(BOARD_UART_BASE) = CMSDK_CTRL_TXEN | CMSDK_CTRL_RXEN | CMSDK_CTRL_RXINTEN;
    /* Discard a stale byte. In QEMU a DATA read also makes the serial backend offer its
     * queued input again; without it bytes sent while RX was still disabled wait ~1 s. */
    (void)CMSDK_UART_DATA(BOARD_UART_BASE);
    nvic_enable_irq(BOARD_UART_IRQ);
    irq_enable();
}

void board_uart_write(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        while ((CMSDK_UART_STATE(BOARD_UART_BASE) & CMSDK_STATE_TXFULL) != 0u) {
        }
        CMSDK_UART_DATA(BOARD_UART_BASE) = data[i];
    }
}

void board_uart_isr(void)
{
    CMSDK_UART_INTSTAT(BOARD_UART_BASE) = CMSDK_INT_RX | CMSDK_INT_RXOVR;
    while ((CMSDK_UART_STATE(BOARD_UART_BASE) & CMSDK_STATE_RXFULL) != 0u) {
        uart_rx_byte_from_isr((uint8_t)CMSDK_UART_DATA(BOARD_UART_BASE));
    }
    CMSDK_UART_STATE(BOARD_UART_BASE) = CMSDK_STATE_RXOVR;  /* clear a sticky overrun */
}
