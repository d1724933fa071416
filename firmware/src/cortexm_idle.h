#ifndef TINYFED_CORTEXM_IDLE_H
#define TINYFED_CORTEXM_IDLE_H

static inline void idle_irq_disable(void) { __asm volatile("cpsid i" ::: "memory"); }
static inline void idle_irq_enable(void) { __asm volatile("cpsie i" ::: "memory"); }
static inline void idle_wfi(void) { __asm volatile("dsb 0xF\n\twfi" ::: "memory"); }

#endif
