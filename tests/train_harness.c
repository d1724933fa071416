/*
 * Host test harness for the tftr training engine (tests/test_train_engine.py builds it).
 *
 * As a shared library (ctypes): tftr_h_open, tftr_h_bind, tftr_h_grads, tftr_h_train,
 * tftr_h_predict. With -DTFTR_FUZZ_MAIN: an executable that reads length-prefixed programs
 * from a file, opens each one and, when it opens, binds it to RAM of exactly
 * tftr_ram_bytes() and trains/predicts on it (built with -fsanitize=address,undefined so any
 * out-of-bounds access or UB aborts). It prints one status per program.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tftr.h"

/* Opens a program; fills status, detail, message (64 bytes) and
 * info = {ram, trainable, input elems, classes, flops, units, work}. */
int tftr_h_open(const uint8_t *blob, uint32_t size, uint8_t *status, uint16_t *detail, char *message, uint32_t *info)
{
    tftr_program_t p;
    tfmb_error_t err;
    const bool ok = tftr_open(&p, blob, size, &err);
    *status = ok ? 0 : err.status;
    *detail = ok ? 0 : err.detail;
    memcpy(message, ok ? "" : err.message, ok ? 1 : sizeof(err.message));
    info[0] = tftr_ram_bytes(&p);
    info[1] = tftr_trainable_count(&p);
    info[2] = tftr_input_elems(&p);
    info[3] = tftr_classes(&p);
    info[4] = tftr_train_flops(&p);
    info[5] = ok ? p.unit_count : 0;
    info[6] = ok ? p.work_bytes : 0;
    return ok;
}

/* Status of tftr_bind with `capacity` bytes of (4-aligned) RAM. */
int tftr_h_bind(const uint8_t *blob, uint32_t size, uint32_t capacity)
{
    tftr_program_t p;
    tfmb_error_t err;
    if (!tftr_open(&p, blob, size, &err)) return err.status;
    uint32_t *ram = (uint32_t *)malloc(capacity ? capacity : 4u);
    if (!ram) return -1;
    const int status = tftr_bind(&p, (uint8_t *)ram, capacity, &err) ? 0 : err.status;
    free(ram);
    return status;
}

static tftr_program_t *open_bound(tftr_program_t *p, const uint8_t *blob, uint32_t size, uint32_t **ram)
{
    tfmb_error_t err;
    if (!tftr_open(p, blob, size, &err)) return 0;
    *ram = (uint32_t *)malloc(tftr_ram_bytes(p) + 4u);
    if (!*ram || !tftr_bind(p, (uint8_t *)*ram, tftr_ram_bytes(p), &err)) return 0;
    return p;
}

/* One mini-batch of n samples (targets: tftr_target_bytes() each): per-sample loss and
 * correct flag, then the accumulated grad (trainable floats) and the units' initial values
 * (start). Returns a status. */
int tftr_h_grads(const uint8_t *blob, uint32_t size, const int8_t *x, const uint8_t *targets, uint32_t n, float *loss,
                 uint8_t *pred, float *grad, float *start)
{
    uint32_t *ram = 0;
    tftr_program_t prog;
    tftr_program_t *p = open_bound(&prog, blob, size, &ram);
    if (!p) {
        free(ram);
        return 10;
    }
    const uint32_t in = tftr_input_elems(p), t = tftr_trainable_count(p), tb = tftr_target_bytes(p);
    tftr_begin_batch(p);
    for (uint32_t i = 0; i < n; ++i) tftr_accumulate(p, x + (size_t)i * in, targets + (size_t)i * tb, &loss[i], &pred[i]);
    memcpy(grad, p->grad, 4u * t);
    memcpy(start, p->start, 4u * t);
    free(ram);
    return 0;
}

/* SGD over mini-batches: batch b is order[bounds[b] .. bounds[b+1]). Writes the final w*
 * (values), and each step's per-sample losses in visiting order. */
int tftr_h_train(const uint8_t *blob, uint32_t size, const int8_t *x, const uint8_t *targets, const uint32_t *order,
                 const uint32_t *bounds, uint32_t n_batches, float lr, float *values, float *losses)
{
    uint32_t *ram = 0;
    tftr_program_t prog;
    tftr_program_t *p = open_bound(&prog, blob, size, &ram);
    if (!p) {
        free(ram);
        return 10;
    }
    const uint32_t in = tftr_input_elems(p), tb = tftr_target_bytes(p);
    for (uint32_t b = 0; b < n_batches; ++b) {
        tftr_begin_batch(p);
        for (uint32_t k = bounds[b]; k < bounds[b + 1]; ++k)
            tftr_accumulate(p, x + (size_t)order[k] * in, targets + (size_t)order[k] * tb, &losses[k], 0);
        tftr_apply(p, lr, bounds[b + 1] - bounds[b]);
    }
    memcpy(values, p->values, 4u * tftr_trainable_count(p));
    free(ram);
    return 0;
}

/* Forward only: per-sample loss and correct flag. */
int tftr_h_predict(const uint8_t *blob, uint32_t size, const int8_t *x, const uint8_t *targets, uint32_t n, float *loss,
                   uint8_t *pred)
{
    uint32_t *ram = 0;
    tftr_program_t prog;
    tftr_program_t *p = open_bound(&prog, blob, size, &ram);
    if (!p) {
        free(ram);
        return 10;
    }
    const uint32_t in = tftr_input_elems(p), tb = tftr_target_bytes(p);
    for (uint32_t i = 0; i < n; ++i) tftr_predict(p, x + (size_t)i * in, targets + (size_t)i * tb, &loss[i], &pred[i]);
    free(ram);
    return 0;
}

#ifdef TFTR_FUZZ_MAIN
/* Opens one program from an exactly sized heap copy (ASan flags any read past its end);
 * when it opens, binds exactly tftr_ram_bytes() and runs accumulate / apply / predict. */
static int try_blob(const uint8_t *src, uint32_t len)
{
    uint8_t *blob = (uint8_t *)malloc(len ? len : 1);
    if (!blob) exit(3);
    memcpy(blob, src, len);
    tftr_program_t p;
    tfmb_error_t err;
    int status;
    if (tftr_open(&p, blob, len, &err)) {
        const uint32_t rb = tftr_ram_bytes(&p);
        uint8_t *ram = (uint8_t *)malloc(rb ? rb : 4u);
        if (!ram) exit(3);
        if (!tftr_bind(&p, ram, rb, &err)) exit(4);
        const uint32_t in = tftr_input_elems(&p);
        int8_t *x = (int8_t *)malloc(in ? in : 1u);
        if (!x) exit(3);
        for (uint32_t i = 0; i < in; ++i) x[i] = (int8_t)(i * 37u);
        const uint32_t tb = tftr_target_bytes(&p);
        uint8_t *target = (uint8_t *)malloc(tb ? tb : 1u);
        if (!target) exit(3);
        memset(target, 0xFF, tb); /* a class past the classes, labels "on", NaN reals */
        float loss;
        uint8_t pred;
        tftr_begin_batch(&p);
        tftr_accumulate(&p, x, target, &loss, &pred);
        memset(target, 0, tb);
        tftr_accumulate(&p, x, target, &loss, &pred);
        tftr_apply(&p, 0.01f, 2);
        tftr_predict(&p, x, target, &loss, &pred);
        free(target);
        uint32_t c, per;
        for (uint16_t u = 0; tftr_unit_shape(&p, u, &c, &per); ++u) {
        }
        free(x);
        free(ram);
        status = 0;
    } else {
        status = err.status;
        /* a rejection carries a status and a NUL-terminated, non-empty message */
        if (status == 0 || memchr(err.message, 0, sizeof(err.message)) == NULL || err.message[0] == 0) exit(5);
    }
    free(blob);
    return status;
}

/* usage: train_fuzz [-t] PROGRAMS   (u32 length + bytes, repeated); -t also tries every
 * truncation of each program and prints "truncations N opened K". */
int main(int argc, char **argv)
{
    int truncate = argc == 3 && strcmp(argv[1], "-t") == 0;
    if (argc != 2 + truncate) {
        fprintf(stderr, "usage: %s [-t] PROGRAMS\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1 + truncate], "rb");
    if (!f) return 2;
    unsigned long truncations = 0, opened = 0;
    uint8_t le[4];
    while (fread(le, 1, 4, f) == 4) {
        const uint32_t len = (uint32_t)le[0] | ((uint32_t)le[1] << 8) | ((uint32_t)le[2] << 16) | ((uint32_t)le[3] << 24);
        uint8_t *buf = (uint8_t *)malloc(len ? len : 1);
        if (!buf || fread(buf, 1, len, f) != len) return 3;
        printf("%d\n", try_blob(buf, len));
        if (truncate)
            for (uint32_t cut = 0; cut < len; cut += 1u + cut / 64u) {
                ++truncations;
                if (try_blob(buf, cut) == 0) ++opened;
            }
        free(buf);
    }
    fclose(f);
    if (truncate) printf("truncations %lu opened %lu\n", truncations, opened);
    return 0;
}
#endif
