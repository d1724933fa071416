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
/* Opens one blob from an exactly sized heap copy (so ASan flags any read past its end);
 * invokes it when it opens. Returns the status (0 = opened and ran). */
static int try_blob(const uint8_t *src, uint32_t len)
{
    uint8_t *blob = (uint8_t *)malloc(len ? len : 1);
    if (!blob) exit(3);
    memcpy(blob, src, len);
    tfmb_model_t m;
    tfmb_error_t err;
    int status;
    if (tfmb_open(&m, blob, len, 1u << 20, &err)) {
        const uint32_t ab = tfmb_arena_bytes(&m);
        uint8_t *arena = (uint8_t *)malloc(ab ? ab : 1);
        if (!arena) exit(3);
        memset(arena, 0x5A, ab);
        if (!tfmb_invoke(&m, arena, &err)) exit(4);
        free(arena);
        status = 0;
    } else {
        status = err.status;
        /* A rejection must carry a status and a NUL-terminated, non-empty message. */
        if (status == 0 || memchr(err.message, 0, sizeof(err.message)) == NULL || err.message[0] == 0) exit(5);
    }
    free(blob);
    return status;
}

/* usage: engine_fuzz [-t] BLOBS   (BLOBS: u32 length + bytes, repeated)
 * Prints one status per blob; with -t also tries every truncation of each blob and prints
 * "truncations N opened K". */
int main(int argc, char **argv)
{
    int truncate = argc == 3 && strcmp(argv[1], "-t") == 0;
    if (argc != 2 + truncate) {
        fprintf(stderr, "usage: %s [-t] BLOBS\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1 + truncate], "rb");
    if (!f) return 2;
    unsigned long truncations = 0, truncations_opened = 0;
    uint8_t len_le[4];
    while (fread(len_le, 1, 4, f) == 4) {
        const uint32_t len = (uint32_t)len_le[0] | ((uint32_t)len_le[1] << 8) | ((uint32_t)len_le[2] << 16) |
                             ((uint32_t)len_le[3] << 24);
        uint8_t *buf = (uint8_t *)malloc(len ? len : 1);
        if (!buf || fread(buf, 1, len, f) != len) return 3;
        printf("%d\n", try_blob(buf, len));
        if (truncate)
            for (uint32_t cut = 0; cut < len; ++cut) {
                ++truncations;
                if (try_blob(buf, cut) == 0) ++truncations_opened;
            }
        free(buf);
    }
    fclose(f);
    if (truncate) printf("truncations %lu opened %lu\n", truncations, truncations_opened);
    return 0;
}
#endif
