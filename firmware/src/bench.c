/* BENCH (0x30): a fixed int8 multiply-accumulate loop and an fp32 multiply-add loop, timed
 * with the cycle counter. The same C on every board, so the numbers compare boards. */
#include "bench.h"

#include "board.h"

#define BENCH_INT8_LEN 256u
#define BENCH_FP32_LEN 64u

static int8_t bench_a[BENCH_INT8_LEN];
static int8_t bench_b[BENCH_INT8_LEN];
static float bench_x[BENCH_FP32_LEN];
static float bench_y[BENCH_FP32_LEN];
static volatile int32_t bench_sink_i;
static volatile float bench_sink_f;

__attribute__((noinline)) static int32_t dot_int8(const int8_t *a, const int8_t *b, uint32_t n)
{
    int32_t acc = 0;
    for (uint32_t i = 0; i < n; i++) {
        acc += (int32_t)a[i] * (int32_t)b[i];
    }
    return acc;
}

__attribute__((noinline)) static float dot_fp32(const float *x, const float *y, uint32_t n)
{
    float acc = 0.0f;
    for (uint32_t i = 0; i < n; i++) {
        acc += x[i] * y[i];
    }
    return acc;
}

void bench_run(uint16_t repeats, bench_result_t *out)
{
    for (uint32_t i = 0; i < BENCH_INT8_LEN; i++) {
        bench_a[i] = (int8_t)(i * 7u + 3u);
        bench_b[i] = (int8_t)(i * 13u + 5u);
    }
    for (uint32_t i = 0; i < BENCH_FP32_LEN; i++) {
        bench_x[i] = (float)i * 0.25f - 3.0f;
        bench_y[i] = 1.5f - (float)i * 0.125f;
    }

    int32_t acc_i = 0;
    cycles_start();
    for (uint32_t r = 0; r < repeats; r++) {
        __asm volatile("" ::: "memory");  /* inputs may have changed: no hoisting */
        acc_i += dot_int8(bench_a, bench_b, BENCH_INT8_LEN);
    }
    out->int8_cycles = cycles_stop();
    bench_sink_i = acc_i;
    out->int8_macs = (uint32_t)repeats * BENCH_INT8_LEN;

    float acc_f = 0.0f;
    cycles_start();
    for (uint32_t r = 0; r < repeats; r++) {
        __asm volatile("" ::: "memory");
        acc_f += dot_fp32(bench_x, bench_y, BENCH_FP32_LEN);
    }
    out->fp32_cycles = cycles_stop();
    bench_sink_f = acc_f;
    out->fp32_flops = (uint32_t)repeats * BENCH_FP32_LEN * 2u;
}
