#include "../common/cortexm.h"
#include "../common/cmsdk_uart.h"
#include "../../src/board.h"

#define UART0_BASE 0x40004000u
#define UART0_RX_IRQ 0u

/* A profile that reuses this layer with other budgets (mps2-an386-large) names itself. */
#ifndef BOARD_ID
#define BOARD_ID "mps2-an386"
#endif
const char board_id[] = BOARD_ID;

void board_uart_isr(void)
{
    cmsdk_uart_isr(UART0_BASE);
}

void board_init(void)
{
    cmsdk_uart_init(UART0_BASE, BOARD_CLOCK_HZ, 115200u);
    nvic_enable_irq(UART0_RX_IRQ);
    irq_enable();
}

void board_uart_write(const uint8_t *data, size_t len)
{
    cmsdk_uart_write(UART0_BASE, data, len);
}
