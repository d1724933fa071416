/* The interface every board layer (firmware/boards/<name>/) implements. */
#ifndef TINYFED_BOARD_H
#define TINYFED_BOARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Clocks, FPU, UART with its RX interrupt enabled. Called once from main(). */
void board_init(void);
/* Polled transmit of len bytes. */
void board_uart_write(const uint8_t *data, size_t len);
/* Erase [addr, addr + len) of the fragment store; addr and len are multiples of
 * board_flash_page_bytes(). On failure returns false and sets *err. */
bool board_flash_erase(uint32_t addr, uint32_t len, const char **err);
/* Program len bytes at addr (addr and len multiples of 4, range erased before). */
bool board_flash_write(uint32_t addr, const uint8_t *data, uint32_t len, const char **err);
uint32_t board_flash_page_bytes(void);
/* Board name (as in tinyfed/boards/data/<name>.toml). */
extern const char board_id[];

/* Provided by the common code: the UART RX interrupt hands each received byte here. */
void uart_rx_byte_from_isr(uint8_t byte);

/* Cycle counter (boards/common/cycles.c): DWT CYCCNT where it counts, else SysTick. */
void cycles_init(void);
void cycles_start(void);
uint32_t cycles_stop(void);
/* Cycles since cycles_start(), the counter left running (per-op timing inside one measurement). */
uint32_t cycles_now(void);
bool cycles_is_dwt(void);
/* Reset via AIRCR.SYSRESETREQ; never returns. */
void board_reset(void) __attribute__((noreturn));

#endif
