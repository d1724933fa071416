/* Apollo3 Blue board layer (build-only in this tree, not run on hardware yet).
 * UART0: PL011-style registers at 0x4001C000, IRQ 15, clocked at 24 MHz (HFRC / 2).
 * Pads: 48 = UART0 TX, 49 = UART0 RX (SparkFun Artemis modules), function select 0.
 * Flash: 2 instances of 512 KiB, 8 KiB pages, written through the bootrom helper functions
 * at 0x08000051 (page erase: key, instance, page) and 0x08000055 (program main: key, src,
 * dst, word count), key 0x12344321 (addresses as published in Ambiq's Apollo3 HAL). */
#include <string.h>

#include "../common/cortexm.h"
#include "../../src/board.h"

#define UART0_BASE 0x4001C000u
#define UART_DR REG32(UART0_BASE + 0x00u)
#define UART_FR REG32(UART0_BASE + 0x18u)
#define UART_IBRD REG32(UART0_BASE + 0x24u)
#define UART_FBRD REG32(UART0_BASE + 0x28u)
#define UART_LCRH REG32(UART0_BASE + 0x2Cu)
#define UART_CR REG32(UART0_BASE + 0x30u)
#define UART_IFLS REG32(UART0_BASE + 0x34u)
#define UART_IER REG32(UART0_BASE + 0x38u)
#define UART_IEC REG32(UART0_BASE + 0x44u)
#define UART_FR_RXFE (1u << 4)
#define UART_FR_TXFF (1u << 5)
#define UART_FR_BUSY (1u << 3)
#define UART_CR_UARTEN (1u << 0)
#define UART_CR_CLKEN (1u << 3)
#define UART_CR_CLKSEL_24MHZ (1u << 4)
#define UART_CR_TXE (1u << 8)
#define UART_CR_RXE (1u << 9)
#define UART_LCRH_8BIT_FIFO ((3u << 5) | (1u << 4))
#define UART_INT_RX (1u << 4)
#define UART_INT_RT (1u << 6)
#define UART0_IRQ 15u

#define PWRCTRL_DEVPWREN REG32(0x40021008u)
#define PWRCTRL_DEVPWRSTATUS REG32(0x40021014u)
#define PWRCTRL_UART0 (1u << 7)

#define GPIO_PADREGM REG32(0x40010030u)  /* pads 48..51, one byte each */
#define GPIO_CFGG REG32(0x40010058u)     /* pads 48..55, one nibble each */
#define GPIO_PADKEY REG32(0x40010060u)
#define GPIO_PADKEY_VALUE 0x73u

#define FLASH_KEY 0x12344321u
#define FLASH_INSTANCE_BYTES (512u * 1024u)
#define FLASH_PAGE_BYTES 8192u
typedef int (*bootrom_page_erase_t)(uint32_t key, uint32_t instance, uint32_t page);
typedef int (*bootrom_program_main_t)(uint32_t key, const uint32_t *src, uint32_t *dst, uint32_t words);
#define BOOTROM_PAGE_ERASE ((bootrom_page_erase_t)0x08000051u)
#define BOOTROM_PROGRAM_MAIN ((bootrom_program_main_t)0x08000055u)

const char board_id[] = "apollo3";

void board_uart_isr(void)
{
    UART_IEC = UART_INT_RX | UART_INT_RT;
    while ((UART_FR & UART_FR_RXFE) == 0u) {
        uart_rx_byte_from_isr((uint8_t)UART_DR);
    }
}

void board_init(void)
{
    PWRCTRL_DEVPWREN |= PWRCTRL_UART0;
    for (uint32_t tries = 0; (PWRCTRL_DEVPWRSTATUS & PWRCTRL_UART0) == 0u && tries < 100000u; tries++) {
    }
    GPIO_PADKEY = GPIO_PADKEY_VALUE;
    /* pad 48: function 0 (UART0TX); pad 49: function 0 (UART0RX) with input enable (bit 1). */
    GPIO_PADREGM = (GPIO_PADREGM & 0xFFFF0000u) | (0x02u << 8) | 0x00u;
    GPIO_CFGG &= 0xFFFFFF00u;
    GPIO_PADKEY = 0;

    UART_CR = 0;
    UART_CR = UART_CR_CLKEN | UART_CR_CLKSEL_24MHZ;
    UART_IBRD = 13u;  /* 24 MHz / (16 * 115200) = 13.02 */
    UART_FBRD = 1u;   /* 0.02 * 64 rounded */
    UART_LCRH = UART_LCRH_8BIT_FIFO;
    UART_IFLS = 0;    /* RX interrupt at 1/8 full, plus the receive timeout for the rest */
    UART_CR = UART_CR_CLKEN | UART_CR_CLKSEL_24MHZ | UART_CR_UARTEN | UART_CR_TXE | UART_CR_RXE;
    UART_IER = UART_INT_RX | UART_INT_RT;
    nvic_enable_irq(UART0_IRQ);
    irq_enable();
}

void board_uart_write(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        while ((UART_FR & UART_FR_TXFF) != 0u) {
        }
        UART_DR = data[i];
    }
    while ((UART_FR & UART_FR_BUSY) != 0u) {
    }
}

bool board_flash_erase(uint32_t addr, uint32_t len, const char **err)
{
    if ((addr % FLASH_PAGE_BYTES) != 0u || (len % FLASH_PAGE_BYTES) != 0u) {
        *err = "flash erase not page aligned";
        return false;
    }
    for (uint32_t a = addr; a < addr + len; a += FLASH_PAGE_BYTES) {
        irq_disable();
        int rc = BOOTROM_PAGE_ERASE(FLASH_KEY, a / FLASH_INSTANCE_BYTES,
                                    (a % FLASH_INSTANCE_BYTES) / FLASH_PAGE_BYTES);
        irq_enable();
        if (rc != 0) {
            *err = "bootrom page erase failed";
            return false;
        }
    }
    return true;
}

bool board_flash_write(uint32_t addr, const uint8_t *data, uint32_t len, const char **err)
{
    static uint32_t words[64];  /* the helper reads whole words from RAM */
    if ((addr % 4u) != 0u || (len % 4u) != 0u) {
        *err = "flash write not word aligned";
        return false;
    }
    while (len > 0u) {
        uint32_t n = len < sizeof words ? len : (uint32_t)sizeof words;
        memcpy(words, data, n);
        irq_disable();
        int rc = BOOTROM_PROGRAM_MAIN(FLASH_KEY, words, (uint32_t *)(uintptr_t)addr, n / 4u);
        irq_enable();
        if (rc != 0) {
            *err = "bootrom program failed";
            return false;
        }
        addr += n;
        data += n;
        len -= n;
    }
    return true;
}

uint32_t board_flash_page_bytes(void)
{
    return FLASH_PAGE_BYTES;
}
