#ifndef TINYFED_BENCH_H
#define TINYFED_BENCH_H

#include <stdint.h>

typedef struct {
    uint32_t int8_macs;
    uint32_t int8_cycles;
    uint32_t fp32_flops;
    uint32_t fp32_cycles;
} bench_result_t;

#define BENCH_DEFAULT_REPEATS 64u
#define BENCH_MAX_REPEATS 4096u

void bench_run(uint16_t repeats, bench_result_t *out);

#endif
