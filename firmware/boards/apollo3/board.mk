# Ambiq Apollo3 Blue: Cortex-M4F at 48 MHz, UART0 at 0x4001C000 (IRQ 15), 8 KiB flash pages
# programmed through the bootrom helper table. Build-only here (no emulator run).
CPU_FLAGS   := -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16
BOARD_SRCS  := boards/apollo3/board.c
BOARD_DEFS  := -DBOARD_NUM_IRQS=32 -DBOARD_UART_IRQ=15 -DBOARD_CLOCK_HZ=48000000u -DBOARD_FLASH_PAGE=8192u
RAM_KIB     ?= 384
FLASH_KIB   ?= 1024
FLASH_PAGE  := 8192
# The budget starts at flash address 0, but the image starts after the 48 KiB Ambiq secure
# bootloader (SBL), which therefore counts as firmware flash.
BOARD_LDFLAGS := -Wl,--defsym=__flash_budget_origin=0
