/* QEMU mps3-an547: the CMSDK UART layer (boards/common/cmsdk_uart.c) and RAM-backed flash do
 * the work; this file adds the boot stub the core starts from and names the board. */
#include <stdint.h>

#include "../../src/board.h"

extern uint32_t __stack_top[];
void Reset_Handler(void);

/* Boot stub at address 0 (ITCM): the core fetches SP and PC from here at reset. */
__attribute__((section(".boot"), used))
const uint32_t boot_stub[2] = {(uint32_t)(uintptr_t)__stack_top, (uint32_t)(uintptr_t)Reset_Handler};

const char board_id[] = "mps3-an547";
