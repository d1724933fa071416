/* Sizes and places the linker script (boards/common/sections.ld) decides. */
#ifndef TINYFED_MEMMAP_H
#define TINYFED_MEMMAP_H

#include <stdint.h>

extern uint8_t __arena_start[];
extern uint8_t __arena_bytes[];      /* absolute symbols: their address is the value */
extern uint8_t __slot_a[];
extern uint8_t __slot_b[];
extern uint8_t __slot_bytes[];
extern uint8_t __train_region[];
extern uint8_t __train_bytes[];
extern uint8_t __data_region[];
extern uint8_t __data_region_bytes[];
extern uint8_t __stack_limit[];
extern uint8_t __stack_top[];
extern uint8_t __arena_end[];
extern uint8_t __data_start[];
extern uint8_t __bss_end[];
extern uint8_t __fw_ram_bytes[];
extern uint8_t __fw_flash_bytes[];

#define SYM_VALUE(sym) ((uint32_t)(uintptr_t)(sym))
#define ARENA_BASE (__arena_start)
#define ARENA_BYTES SYM_VALUE(__arena_bytes)
#define SLOT_BYTES SYM_VALUE(__slot_bytes)
#define TRAIN_REGION_BYTES SYM_VALUE(__train_bytes)
#define DATA_REGION_BYTES SYM_VALUE(__data_region_bytes)
#define FW_RAM_BYTES SYM_VALUE(__fw_ram_bytes)
#define FW_FLASH_BYTES SYM_VALUE(__fw_flash_bytes)

#endif
