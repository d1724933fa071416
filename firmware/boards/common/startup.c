/* Reset handler and vector table shared by every Cortex-M board. The board's board.mk sets
 * BOARD_NUM_IRQS (external interrupt count), BOARD_UART_IRQ and names its UART ISR. */
#include <stdint.h>
#include <string.h>

#include "cortexm.h"
#include "../../src/board.h"

#ifndef BOARD_NUM_IRQS
#error "board.mk must define BOARD_NUM_IRQS"
#endif
#ifndef BOARD_UART_IRQ
#error "board.mk must define BOARD_UART_IRQ"
#endif

extern uint32_t __stack_top[], __stack_limit[];
extern uint32_t __data_start[], __data_end[], __data_load[];
extern uint32_t __bss_start[], __bss_end[];
extern uint32_t __arena_start[], __arena_end[];

/* Stack and arena are painted with this word at reset; the first word that no longer holds it
 * marks the high-water mark (src/ram_watermark.c, command STATS). */
#define RAM_PAINT 0xA5C3A5C3u

int main(void);
void Reset_Handler(void);
void board_uart_isr(void);
void SysTick_Handler(void);

static void fault_handler(void)
{
    /* A fleet device recovers by resetting; the host sees a silent board and re-HELLOs. */
    board_reset();
}

static void unused_irq(void)
{
    uint32_t ipsr;
    __asm volatile("mrs %0, ipsr" : "=r"(ipsr));
    if ((ipsr & 0x1FFu) >= 16u) {
        nvic_disable_irq((ipsr & 0x1FFu) - 16u);
    }
}

typedef void (*vector_t)(void);

/* All IRQs default to unused_irq, then the board's UART entry overrides its slot. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"

__attribute__((section(".vectors"), used, aligned(512)))
const vector_t vector_table[16 + BOARD_NUM_IRQS] = {
    [0] = (vector_t)(uintptr_t)__stack_top,
    [1] = Reset_Handler,
    [2] = fault_handler,  /* NMI */
    [3] = fault_handler,  /* HardFault */
    [4] = fault_handler,  /* MemManage */
    [5] = fault_handler,  /* BusFault */
    [6] = fault_handler,  /* UsageFault */
    [7] = fault_handler,  /* SecureFault (v8-M) */
    [11] = unused_irq,    /* SVCall */
    [12] = unused_irq,    /* DebugMon */
    [14] = unused_irq,    /* PendSV */
    [15] = SysTick_Handler,
    [16 ... 16 + BOARD_NUM_IRQS - 1] = unused_irq,
    [16 + BOARD_UART_IRQ] = board_uart_isr,
};
#pragma GCC diagnostic pop

void Reset_Handler(void)
{
    SCB_VTOR = (uint32_t)(uintptr_t)vector_table;
#if defined(__ARM_ARCH_8M_MAIN__) || defined(__ARM_ARCH_8_1M_MAIN__)
    /* v8-M: a stack overflow faults at the limit instead of running off the RAM bottom. */
    __asm volatile("msr msplim, %0" ::"r"((uint32_t)(uintptr_t)__stack_limit));
#endif
#if defined(__ARM_FP)
    SCB_CPACR |= CPACR_CP10_CP11;  /* FPU on before any float instruction */
    cpu_dsb();
    cpu_isb();
#endif
    /* Paint the unused stack (below the current SP, minus this frame's margin) and the arena. */
    uint32_t sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *w = __stack_limit; (uintptr_t)w + 64u < sp; w++) {
        *w = RAM_PAINT;
    }
    for (uint32_t *w = __arena_start; w < __arena_end; w++) {
        *w = RAM_PAINT;
    }
    memcpy(__data_start, __data_load, (size_t)((uintptr_t)__data_end - (uintptr_t)__data_start));
    memset(__bss_start, 0, (size_t)((uintptr_t)__bss_end - (uintptr_t)__bss_start));
    (void)main();
    for (;;) {
        cpu_wfi();
    }
}

void board_reset(void)
{
    /* Let the UART shift out the last response byte (a few bit times at 115200 baud). */
    for (volatile uint32_t i = 0; i < 20000u; i++) {
    }
    cpu_dsb();
    SCB_AIRCR = AIRCR_VECTKEY | AIRCR_SYSRESETREQ;
    cpu_dsb();
    for (;;) {
    }
}
