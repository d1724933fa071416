# QEMU mps2-an386: Cortex-M4F at 25 MHz, CMSDK UART0 at 0x40004000.
# IRQs verified in QEMU 7.2: UART0 RX = 0, TX = 1 (overflow of all UARTs combined = 12).
CPU_FLAGS   := -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16
BOARD_SRCS  := boards/mps2-an386/board.c boards/common/cmsdk_uart.c boards/common/ram_flash.c
BOARD_DEFS  := -DBOARD_NUM_IRQS=48 -DBOARD_UART_IRQ=0 -DBOARD_UART_BASE=0x40004000u \
              -DBOARD_CLOCK_HZ=25000000u -DBOARD_FLASH_PAGE=4096u
RAM_KIB     ?= 256
FLASH_KIB   ?= 1024
FLASH_PAGE  := 4096
