#include "../common/cortexm.h"
#include "../common/cmsdk_uart.h"
#include "../../src/board.h"

#define UART0_BASE 0x49303000u
#define UART0_RX_IRQ 33u

extern uint32_t __stack_top[];
void Reset_Handler(void);

/* Boot stub at address 0 (ITCM): the core fetches SP and PC from here at reset. */
__attribute__((section(".boot"), used))
const uint32_t boot_stub[2] = {(uint32_t)(uintptr_t)__stack_top, (uint32_t)(uintptr_t)Reset_Handler};

const char board_id[] = "mps3-an547";

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
