/* nRF52840 board layer: HFXO, UARTE0 with 1-byte double-buffered EasyDMA reception, NVMC
 * flash programming. Register offsets from the nRF52840 Product Specification v1.x. */
#include <string.h>

#include "../common/cortexm.h"
#include "../../src/board.h"

/* CLOCK */
#define CLOCK_BASE 0x40000000u
#define CLOCK_TASKS_HFCLKSTART REG32(CLOCK_BASE + 0x000u)
#define CLOCK_EVENTS_HFCLKSTARTED REG32(CLOCK_BASE + 0x100u)

/* UARTE0 */
#define UARTE0_BASE 0x40002000u
#define UARTE_TASKS_STARTRX REG32(UARTE0_BASE + 0x000u)
#define UARTE_TASKS_STARTTX REG32(UARTE0_BASE + 0x008u)
#define UARTE_EVENTS_ENDRX REG32(UARTE0_BASE + 0x110u)
#define UARTE_EVENTS_ENDTX REG32(UARTE0_BASE + 0x120u)
#define UARTE_EVENTS_ERROR REG32(UARTE0_BASE + 0x124u)
#define UARTE_EVENTS_RXSTARTED REG32(UARTE0_BASE + 0x14Cu)
#define UARTE_SHORTS REG32(UARTE0_BASE + 0x200u)
#define UARTE_INTENSET REG32(UARTE0_BASE + 0x304u)
#define UARTE_ERRORSRC REG32(UARTE0_BASE + 0x480u)
#define UARTE_ENABLE REG32(UARTE0_BASE + 0x500u)
#define UARTE_PSEL_TXD REG32(UARTE0_BASE + 0x50Cu)
#define UARTE_PSEL_RXD REG32(UARTE0_BASE + 0x514u)
#define UARTE_BAUDRATE REG32(UARTE0_BASE + 0x524u)
#define UARTE_RXD_PTR REG32(UARTE0_BASE + 0x534u)
#define UARTE_RXD_MAXCNT REG32(UARTE0_BASE + 0x538u)
#define UARTE_RXD_AMOUNT REG32(UARTE0_BASE + 0x53Cu)
#define UARTE_TXD_PTR REG32(UARTE0_BASE + 0x544u)
#define UARTE_TXD_MAXCNT REG32(UARTE0_BASE + 0x548u)
#define UARTE_CONFIG REG32(UARTE0_BASE + 0x56Cu)

#define UARTE_ENABLE_UARTE 8u
#define UARTE_BAUD_115200 0x01D7E000u
#define UARTE_SHORT_ENDRX_STARTRX (1u << 5)
#define UARTE_INT_ENDRX (1u << 4)
#define UARTE_INT_ERROR (1u << 9)
#define UARTE_INT_RXSTARTED (1u << 19)
#define UARTE0_IRQ 2u

/* nRF52840-DK: TX = P0.06, RX = P0.08 (PSEL: pin number, port in bit 5, bit 31 = disconnect). */
#define PIN_TXD 6u
#define PIN_RXD 8u

/* NVMC */
#define NVMC_BASE 0x4001E000u
#define NVMC_READY REG32(NVMC_BASE + 0x400u)
#define NVMC_CONFIG REG32(NVMC_BASE + 0x504u)
#define NVMC_ERASEPAGE REG32(NVMC_BASE + 0x508u)
#define NVMC_CONFIG_REN 0u
#define NVMC_CONFIG_WEN 1u
#define NVMC_CONFIG_EEN 2u

const char board_id[] = "nrf52840";

/* EasyDMA reads and writes RAM only: one byte per transfer, two buffers alternating. */
static volatile uint8_t rx_dma[2];
static uint8_t rx_fill;  /* buffer the current (or just ended) transfer writes */
static uint8_t tx_dma[64];

void board_uart_isr(void)
{
    if (UARTE_EVENTS_ERROR != 0u) {
        UARTE_EVENTS_ERROR = 0;
        UARTE_ERRORSRC = UARTE_ERRORSRC;  /* write 1s to clear */
    }
    if (UARTE_EVENTS_ENDRX != 0u) {
        UARTE_EVENTS_ENDRX = 0;
        if (UARTE_RXD_AMOUNT != 0u) {
            uart_rx_byte_from_isr(rx_dma[rx_fill]);
        }
        rx_fill ^= 1u;  /* the ENDRX->STARTRX short already moved to the other buffer */
    }
    if (UARTE_EVENTS_RXSTARTED != 0u) {
        UARTE_EVENTS_RXSTARTED = 0;
        /* RXD.PTR is double-buffered: point the next transfer at the buffer not in use. */
        UARTE_RXD_PTR = (uint32_t)(uintptr_t)&rx_dma[rx_fill ^ 1u];
    }
}

void board_init(void)
{
    CLOCK_EVENTS_HFCLKSTARTED = 0;
    CLOCK_TASKS_HFCLKSTART = 1;  /* crystal clock for an accurate baud rate */
    while (CLOCK_EVENTS_HFCLKSTARTED == 0u) {
    }
    UARTE_ENABLE = 0;
    UARTE_PSEL_TXD = PIN_TXD;
    UARTE_PSEL_RXD = PIN_RXD;
    UARTE_BAUDRATE = UARTE_BAUD_115200;
    UARTE_CONFIG = 0;  /* 8N1, no flow control */
    UARTE_ENABLE = UARTE_ENABLE_UARTE;
    rx_fill = 0;
    UARTE_RXD_PTR = (uint32_t)(uintptr_t)&rx_dma[0];
    UARTE_RXD_MAXCNT = 1;
    UARTE_SHORTS = UARTE_SHORT_ENDRX_STARTRX;
    UARTE_INTENSET = UARTE_INT_ENDRX | UARTE_INT_RXSTARTED | UARTE_INT_ERROR;
    nvic_enable_irq(UARTE0_IRQ);
    UARTE_TASKS_STARTRX = 1;
    irq_enable();
}

void board_uart_write(const uint8_t *data, size_t len)
{
    while (len > 0u) {
        size_t n = len < sizeof tx_dma ? len : sizeof tx_dma;
        memcpy(tx_dma, data, n);
        UARTE_EVENTS_ENDTX = 0;
        UARTE_TXD_PTR = (uint32_t)(uintptr_t)tx_dma;
        UARTE_TXD_MAXCNT = n;
        UARTE_TASKS_STARTTX = 1;
        while (UARTE_EVENTS_ENDTX == 0u) {
        }
        data += n;
        len -= n;
    }
}

static void nvmc_wait(void)
{
    while (NVMC_READY == 0u) {
    }
}

bool board_flash_erase(uint32_t addr, uint32_t len, const char **err)
{
    if ((addr % 4096u) != 0u || (len % 4096u) != 0u) {
        *err = "flash erase not page aligned";
        return false;
    }
    for (uint32_t a = addr; a < addr + len; a += 4096u) {
        NVMC_CONFIG = NVMC_CONFIG_EEN;
        nvmc_wait();
        NVMC_ERASEPAGE = a;
        nvmc_wait();
    }
    NVMC_CONFIG = NVMC_CONFIG_REN;
    nvmc_wait();
    return true;
}

bool board_flash_write(uint32_t addr, const uint8_t *data, uint32_t len, const char **err)
{
    if ((addr % 4u) != 0u || (len % 4u) != 0u) {
        *err = "flash write not word aligned";
        return false;
    }
    NVMC_CONFIG = NVMC_CONFIG_WEN;
    nvmc_wait();
    for (uint32_t i = 0; i < len; i += 4u) {
        uint32_t word;
        memcpy(&word, data + i, 4);
        REG32(addr + i) = word;
        nvmc_wait();
    }
    NVMC_CONFIG = NVMC_CONFIG_REN;
    nvmc_wait();
    for (uint32_t i = 0; i < len; i++) {
        if (((const volatile uint8_t *)(uintptr_t)addr)[i] != data[i]) {
            *err = "flash verify failed";
            return false;
        }
    }
    return true;
}

uint32_t board_flash_page_bytes(void)
{
    return 4096u;
}

/* RNG peripheral (Product Specification, "RNG"): a true random generator from thermal noise; with
 * bias correction (CONFIG.DERCEN) each byte takes about 120 us. A platform model without it (an
 * emulator) never raises VALRDY: after a bounded wait the board falls back to the seeded
 * generator (rng.c), and remembers that. */
#define RNG_BASE 0x4000D000u
#define RNG_TASKS_START REG32(RNG_BASE + 0x000u)
#define RNG_TASKS_STOP REG32(RNG_BASE + 0x004u)
#define RNG_EVENTS_VALRDY REG32(RNG_BASE + 0x100u)
#define RNG_CONFIG REG32(RNG_BASE + 0x504u)
#define RNG_VALUE REG32(RNG_BASE + 0x508u)
#define RNG_CONFIG_DERCEN 1u
#define RNG_SPIN_LIMIT 200000u /* far above one byte's ~120 us at 64 MHz */

static int8_t rng_present = -1; /* -1 unknown, 0 absent, 1 present */

bool board_hw_random(uint8_t *out, size_t n)
{
    if (rng_present == 0) {
        return false;
    }
    RNG_CONFIG = RNG_CONFIG_DERCEN;
    RNG_EVENTS_VALRDY = 0u;
    RNG_TASKS_START = 1u;
    for (size_t i = 0; i < n; i++) {
        uint32_t spin = 0;
        while (RNG_EVENTS_VALRDY == 0u) {
            if (++spin == RNG_SPIN_LIMIT) {
                RNG_TASKS_STOP = 1u;
                rng_present = 0;
                return false;
            }
        }
        RNG_EVENTS_VALRDY = 0u;
        out[i] = (uint8_t)RNG_VALUE;
    }
    RNG_TASKS_STOP = 1u;
    rng_present = 1;
    return true;
}
