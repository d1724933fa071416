/* PROFILE, PROFILE_READ and KERNELS (profile.h). The profile's cycles come from the board's
 * cycle counter (boards/common/cycles.c): DWT CYCCNT on real parts, SysTick at the core clock
 * elsewhere (under QEMU -icount one instruction is 2**shift ns of virtual time, so the host turns
 * SysTick cycles into instructions). The whole run is one cycles_start/cycles_stop measurement;
 * each op's ticks are cycles_now() differences inside it, so the ops sum to a little less than
 * the total (the engine's op decoding between kernels). */
#include "profile.h"

#include <string.h>

#include "board.h"
#include "engine_glue.h"

#ifndef BOARD_CLOCK_HZ
#define BOARD_CLOCK_HZ 0u
#endif

static uint32_t op_ticks[PROFILE_MAX_OPS];
static uint16_t profiled_ops; /* 0: no profile to read */
static bool profiled_reference;

void profile_forget(void) { profiled_ops = 0; }

bool profile_cmd(bool have_model, const uint8_t *p, uint16_t len, reply_t *r)
{
    if (len > 1u || (len == 1u && p[0] > 1u)) {
        return reply_error(r, ST_BAD_LENGTH, 1, "PROFILE takes nothing or u8 mode (0 fast, 1 reference)");
    }
    if (!have_model || !engine_has_model()) {
        return reply_error(r, ST_NO_MODEL, 0, "no committed fragment");
    }
    uint16_t ops = engine_op_count();
    if (ops > PROFILE_MAX_OPS) {
        return reply_error(r, ST_OUT_OF_MEMORY, PROFILE_MAX_OPS, msg_num("PROFILE times at most ops: ", PROFILE_MAX_OPS));
    }
    bool reference = len == 1u ? p[0] == PROFILE_MODE_REFERENCE : engine_reference();
    fw_error_t e;
    profiled_ops = 0;
    cycles_start();
    bool ok = engine_profile(reference, op_ticks, &e);
    uint32_t cycles = cycles_stop();
    if (!ok) {
        return reply_error(r, e.status, e.detail, e.message);
    }
    profiled_ops = ops;
    profiled_reference = reference;
    uint8_t *o = r->payload;
    put_u32(o, cycles);
    put_u32(o + 4, BOARD_CLOCK_HZ);
    put_u16(o + 8, ops);
    o[10] = reference ? PROFILE_MODE_REFERENCE : PROFILE_MODE_FAST;
    o[11] = cycles_is_dwt() ? PROFILE_COUNTER_DWT : PROFILE_COUNTER_SYSTICK;
    uint32_t out_bytes = 0;
    (void)engine_output(&out_bytes);
    put_u32(o + 12, out_bytes); /* the output is there for OUTPUT_READ, as after INVOKE */
    r->length = PROFILE_RESPONSE_BYTES;
    return true;
}

bool profile_read_cmd(const uint8_t *p, uint16_t len, reply_t *r)
{
    if (len != 4u) {
        return reply_error(r, ST_BAD_LENGTH, 4, "PROFILE_READ takes u16 first_op, u16 count");
    }
    if (profiled_ops == 0u) {
        return reply_error(r, ST_NO_DATA, 0, "no profile: run PROFILE first");
    }
    uint16_t first = get_u16(p);
    uint16_t count = get_u16(p + 2);
    if (first > profiled_ops || count > profiled_ops - first || count > PROTO_MAX_BODY / PROFILE_OP_BYTES) {
        return reply_error(r, ST_BAD_ARGUMENT, profiled_ops, msg_num("profiled ops: ", profiled_ops));
    }
    for (uint16_t i = 0; i < count; i++) {
        uint8_t *o = r->payload + (uint32_t)i * PROFILE_OP_BYTES;
        uint8_t code = 0;
        bool fast = false;
        (void)engine_op_info((uint16_t)(first + i), &code, &fast);
        put_u32(o, op_ticks[first + i]);
        o[4] = code;
        o[5] = (fast && !profiled_reference) ? 1u : 0u; /* 1: this core's optimised kernel ran */
        put_u16(o + 6, 0);
    }
    r->length = (uint16_t)(count * PROFILE_OP_BYTES);
    return true;
}

bool kernels_cmd(const uint8_t *p, uint16_t len, reply_t *r)
{
    if (len > 1u || (len == 1u && p[0] > 1u)) {
        return reply_error(r, ST_BAD_LENGTH, 1, "KERNELS takes nothing or u8 mode (0 fast, 1 reference)");
    }
    if (len == 1u) {
        engine_set_reference(p[0] == PROFILE_MODE_REFERENCE);
    }
    const char *path = engine_kernel_path();
    size_t n = strlen(path);
    r->payload[0] = engine_reference() ? PROFILE_MODE_REFERENCE : PROFILE_MODE_FAST;
    r->payload[1] = (uint8_t)n;
    memcpy(r->payload + 2, path, n);
    r->length = (uint16_t)(2u + n);
    return true;
}
