/* QEMU mps2-an386: the CMSDK UART layer (boards/common/cmsdk_uart.c) and RAM-backed flash do
 * the work; this file only names the board. */
#include "../../src/board.h"

/* A profile that reuses this layer with other budgets (mps2-an386-large) names itself. */
#ifndef BOARD_ID
#define BOARD_ID "mps2-an386"
#endif
const char board_id[] = BOARD_ID;
