/* CMSDK UART: RX by interrupt into the common ring buffer, TX polled. Used by the QEMU
 * MPS2/MPS3 boards; compiled only for them (board.mk lists it). */
#include "cortexm.h"
#include "cmsdk_uart.h"
#include "../../src/board.h"

void cmsdk_uart_init(uint32_t base, uint32_t clock_hz, uint32_t baud)
{
    CMSDK_UART_CTRL(base) = 0;
    CMSDK_UART_BAUDDIV(base) = clock_hz / baud;  /* >= 16 or the UART stays silent */
    CMSDK_UART_INTSTAT(base) = 0xFu;
    CMSDK_UART_CTRL(base) = CMSDK_CTRL_TXEN | CMSDK_CTRL_RXEN | CMSDK_CTRL_RXINTEN;
    /* Discard a stale byte. In QEMU a DATA read also makes the serial backend offer its
     * queued input again; without it bytes sent while RX was still disabled wait ~1 s. */
    (void)CMSDK_UART_DATA(base);
}

void cmsdk_uart_write(uint32_t base, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        while ((CMSDK_UART_STATE(base) & CMSDK_STATE_TXFULL) != 0u) {
        }
        CMSDK_UART_DATA(base) = data[i];
    }
}

void cmsdk_uart_isr(uint32_t base)
{
    CMSDK_UART_INTSTAT(base) = CMSDK_INT_RX | CMSDK_INT_RXOVR;
    while ((CMSDK_UART_STATE(base) & CMSDK_STATE_RXFULL) != 0u) {
        uart_rx_byte_from_isr((uint8_t)CMSDK_UART_DATA(base));
    }
    CMSDK_UART_STATE(base) = CMSDK_STATE_RXOVR;  /* clear a sticky overrun */
}
