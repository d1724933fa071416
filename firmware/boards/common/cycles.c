/* Cycle counter: DWT CYCCNT where it exists and counts (real M4/M55 parts), else SysTick at
 * the core clock extended to 32 bits by its wrap interrupt (QEMU does not model the DWT; under
 * `-icount` SysTick follows the instruction count, so the numbers are deterministic). */
#include <stdbool.h>
#include <stdint.h>

#include "cortexm.h"
#include "../../src/board.h"

static bool use_dwt;
static volatile uint32_t systick_wraps;

void SysTick_Handler(void)
{
    systick_wraps++;
}

void cycles_init(void)
{
    SCB_DEMCR |= DEMCR_TRCENA;
    if ((DWT_CTRL & DWT_CTRL_NOCYCCNT) == 0u) {
        DWT_CYCCNT = 0;
        DWT_CTRL |= DWT_CTRL_CYCCNTENA;
        for (volatile int i = 0; i < 8; i++) {
        }
        use_dwt = DWT_CYCCNT != 0u;
    }
}

bool cycles_is_dwt(void) { return use_dwt; }

void cycles_start(void)
{
    if (use_dwt) {
        DWT_CYCCNT = 0;
        return;
    }
    SYST_CSR = 0;
    systick_wraps = 0;
    SYST_RVR = 0x00FFFFFFu;
    SYST_CVR = 0;
    SCB_ICSR = 1u << 25;  /* PENDSTCLR */
    SYST_CSR = SYST_CSR_ENABLE | SYST_CSR_TICKINT | SYST_CSR_CLKSOURCE;
}

/* Cycles since cycles_start() without stopping the counter (per-op profile ticks). SysTick: the
 * wrap count and CVR are read with interrupts masked; a wrap that is pending but not yet counted
 * is counted here, with CVR read again after it (so the pair is consistent). */
uint32_t cycles_now(void)
{
    if (use_dwt) {
        return DWT_CYCCNT;
    }
    uint32_t primask;
    __asm volatile("mrs %0, primask" : "=r"(primask));
    irq_disable();
    uint32_t wraps = systick_wraps;
    uint32_t now = SYST_CVR;
    if ((SCB_ICSR & (1u << 26)) != 0u) {  /* PENDSTSET: the wrap happened, its interrupt waits */
        wraps++;
        now = SYST_CVR;
    }
    if ((primask & 1u) == 0u) {
        irq_enable();
    }
    uint32_t ticks = (now == 0u) ? 0u : (0x00FFFFFFu - now + 1u);
    return wraps * 0x01000000u + ticks;
}

uint32_t cycles_stop(void)
{
    if (use_dwt) {
        return DWT_CYCCNT;
    }
    SYST_CSR = SYST_CSR_CLKSOURCE;  /* stop; the wrap interrupt cannot run any more */
    uint32_t now = SYST_CVR;
    uint32_t wraps = systick_wraps;
    if ((SCB_ICSR & (1u << 26)) != 0u) {  /* PENDSTSET: a wrap not yet counted */
        wraps++;
        SCB_ICSR = 1u << 25;
    }
    /* After CVR = 0 the first tick reloads 0xFFFFFF; count elapsed ticks from there. */
    uint32_t ticks = (now == 0u) ? 0u : (0x00FFFFFFu - now + 1u);
    return wraps * 0x01000000u + ticks;
}
