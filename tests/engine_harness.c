/*
 * Host test harness for firmware/engine (tests/test_engine.py builds it).
 *
 * As a shared library (ctypes): tfmb_harness_open / tfmb_harness_run.
 * With -DTFMB_FUZZ_MAIN: an executable that reads length-prefixed blobs from a file, opens
 * each one and, when it opens, invokes it on an arena of exactly the planned size (built
 * with -fsanitize=address,undefined so any out-of-bounds access or UB aborts). It prints
 * how many blobs were rejected with each status and how many opened.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfmb.h"

/* Opens a blob; fills status, detail, message (64 bytes) and the model's sizes. */
int tfmb_harness_open(const uint8_t *blob, uint32_t size, uint32_t capacity, uint8_t *status, uint16_t *detail,
                      char *message, uint32_t *sizes /* arena, input, output, op_count */)
{
    tfmb_model_t m;
    tfmb_error_t err;
    const bool ok = tfmb_open(&m, blob, size, capacity, &err);
    *status = ok ? 0 : err.status;
    *detail = ok ? 0 : err.detail;
    memcpy(message, ok ? "" : err.message, ok ? 1 : sizeof(err.message));
    sizes[0] = tfmb_arena_bytes(&m);
    sizes[1] = tfmb_input_bytes(&m);
    sizes[2] = tfmb_output_bytes(&m);
    sizes[3] = tfmb_op_count(&m);
    return ok;
}

/* Runs n samples: x holds n * input_bytes, y receives n * output_bytes. Returns a status. */
int tfmb_harness_run(const uint8_t *blob, uint32_t size, const int8_t *x, uint32_t n, int8_t *y)
{
    tfmb_model_t m;
    tfmb_error_t err;
    if (!tfmb_open(&m, blob, size, 0xFFFFFFFFu, &err)) return err.status;
    const uint32_t arena_bytes = tfmb_arena_bytes(&m);
    uint8_t *arena = (uint8_t *)malloc(arena_bytes ? arena_bytes : 1);
    if (!arena) return 4;
    const uint32_t in_b = tfmb_input_bytes(&m), out_b = tfmb_output_bytes(&m);
    for (uint32_t i = 0; i < n; ++i) {
        memcpy(tfmb_input(&m, arena), x + (size_t)i * in_b, in_b);
        if (!tfmb_invoke(&m, arena, &err)) {
            free(arena);
            return err.status;
        }
        memcpy(y + (size_t)i * out_b, tfmb_output(&m, arena), out_b);
    }
    free(arena);
    return 0;
}

#ifdef TFMB_FUZZ_MAIN
int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s BLOBS\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) return 2;
    unsigned long counts[256] = {0};
    unsigned long opened = 0, total = 0, bad_message = 0;
    uint8_t len_le[4];
    while (fread(len_le, 1, 4, f) == 4) {
        const uint32_t len = (uint32_t)len_le[0] | ((uint32_t)len_le[1] << 8) | ((uint32_t)len_le[2] << 16) |
                             ((uint32_t)len_le[3] << 24);
        /* An exactly sized heap copy: ASan flags any read past the blob. */
        uint8_t *blob = (uint8_t *)malloc(len ? len : 1);
        if (!blob || fread(blob, 1, len, f) != len) return 3;
        tfmb_model_t m;
        tfmb_error_t err;
        ++total;
        if (tfmb_open(&m, blob, len, 1u << 20, &err)) {
            ++opened;
            const uint32_t ab = tfmb_arena_bytes(&m);
            uint8_t *arena = (uint8_t *)malloc(ab ? ab : 1);
            memset(arena, 0x5A, ab);
            if (!tfmb_invoke(&m, arena, &err)) return 4;
            free(arena);
        } else {
            counts[err.status]++;
            if (err.status == 0 || memchr(err.message, 0, sizeof(err.message)) == NULL || err.message[0] == 0)
                ++bad_message;
        }
        free(blob);
    }
    fclose(f);
    printf("total %lu opened %lu bad_message %lu", total, opened, bad_message);
    for (int s = 0; s < 256; ++s)
        if (counts[s]) printf(" status%d %lu", s, counts[s]);
    printf("\n");
    return 0;
}
#endif
