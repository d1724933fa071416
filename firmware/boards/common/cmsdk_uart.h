/* Arm CMSDK APB UART (as in the MPS2/MPS3 FPGA images and QEMU's mps2/mps3 machines):
 * register offsets and bits from the Cortex-M System Design Kit technical reference. */
#ifndef TINYFED_CMSDK_UART_H
#define TINYFED_CMSDK_UART_H

#include <stdint.h>

#define CMSDK_UART_DATA(b)     REG32((b) + 0x00u)
#define CMSDK_UART_STATE(b)    REG32((b) + 0x04u)
#define CMSDK_UART_CTRL(b)     REG32((b) + 0x08u)
#define CMSDK_UART_INTSTAT(b)  REG32((b) + 0x0Cu)  /* write 1 to clear (INTCLEAR) */
#define CMSDK_UART_BAUDDIV(b)  REG32((b) + 0x10u)

#define CMSDK_STATE_TXFULL   (1u << 0)
#define CMSDK_STATE_RXFULL   (1u << 1)
#define CMSDK_STATE_RXOVR    (1u << 3)
#define CMSDK_CTRL_TXEN      (1u << 0)
#define CMSDK_CTRL_RXEN      (1u << 1)
#define CMSDK_CTRL_RXINTEN   (1u << 3)
#define CMSDK_INT_RX         (1u << 1)
#define CMSDK_INT_RXOVR      (1u << 3)

#endif
