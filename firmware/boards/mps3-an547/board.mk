# QEMU mps3-an547 (Corstone SSE-300): Cortex-M55 at 32 MHz, CMSDK UART0 at 0x49303000.
# IRQs verified in QEMU 7.2: UART0 RX = 33, TX = 34 (UART0 combined = 43).
CPU_FLAGS   := -mcpu=cortex-m55 -mthumb -mfloat-abi=hard
BOARD_SRCS  := boards/mps3-an547/board.c boards/common/cmsdk_uart.c boards/common/ram_flash.c
BOARD_DEFS  := -DBOARD_NUM_IRQS=96 -DBOARD_UART_IRQ=33 -DBOARD_UART_BASE=0x49303000u \
              -DBOARD_CLOCK_HZ=32000000u -DBOARD_FLASH_PAGE=4096u
RAM_KIB     ?= 512
FLASH_KIB   ?= 2048
FLASH_PAGE  := 4096
BIN_EXCLUDE := -R .boot
