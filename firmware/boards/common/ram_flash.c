/* "Flash" of the QEMU MPS2/MPS3 machines: SRAM standing in for flash, written by plain
 * stores. Erase fills with 0xFF like real NOR flash so the fragment store behaves the same. */
#include <string.h>

#include "../../src/board.h"

bool board_flash_erase(uint32_t addr, uint32_t len, const char **err)
{
    (void)err;
    memset((void *)(uintptr_t)addr, 0xFF, len);
    return true;
}

bool board_flash_write(uint32_t addr, const uint8_t *data, uint32_t len, const char **err)
{
    (void)err;
    memcpy((void *)(uintptr_t)addr, data, len);
    return true;
}

uint32_t board_flash_page_bytes(void)
{
    return BOARD_FLASH_PAGE;
}
