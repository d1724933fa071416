# QEMU mps2-an386 with the machine's whole SSRAMs as the budget: the emulator-only profile the
# dense baselines (FedAvg, FedBuff: every layer in float32) run on when the nrf52840-sized
# mps2-an386 profile cannot hold that state. Same machine, same board layer; only the budgets
# (and the id HELLO reports) differ.
RAM_KIB     ?= 4096
FLASH_KIB   ?= 4096
include boards/mps2-an386/board.mk
BOARD_DEFS  += -DBOARD_ID='"mps2-an386-large"'
FLASH_PAGE  := 4096
