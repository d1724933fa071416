# Nordic nRF52840: Cortex-M4F at 64 MHz, UARTE0 (EasyDMA) at 0x40002000, IRQ 2
# (UARTE0_UART0), NVMC at 0x4001E000, 4 KiB flash pages. Build-only here (no emulator run).
CPU_FLAGS   := -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16
BOARD_SRCS  := boards/nrf52840/board.c
BOARD_DEFS  := -DBOARD_NUM_IRQS=48 -DBOARD_UART_IRQ=2 -DBOARD_CLOCK_HZ=64000000u -DBOARD_FLASH_PAGE=4096u
RAM_KIB     ?= 256
FLASH_KIB   ?= 1024
FLASH_PAGE  := 4096
