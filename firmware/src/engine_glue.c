#include "engine_glue.h"

#include <stddef.h>

#include "protocol.h"

#if defined(TFMB_ENGINE)
#include "tfmb.h"

static tfmb_model_t candidate;
static tfmb_model_t active;
static bool have_active;
static uint8_t *arena_base;
static tfmb_error_t engine_err;

static bool fail_from_engine(fw_error_t *err)
{
    engine_err.message[sizeof engine_err.message - 1u] = '\0';
    err->status = engine_err.status;
    err->detail = engine_err.detail;
    err->message = engine_err.message;
    return false;
}

bool engine_prepare(const uint8_t *blob, uint32_t size, uint8_t *arena, uint32_t arena_capacity,
                    uint32_t *arena_bytes, uint16_t *op_count, fw_error_t *err)
{
    if (!tfmb_open(&candidate, blob, size, arena_capacity, &engine_err)) {
        return fail_from_engine(err);
    }
    arena_base = arena;
    *arena_bytes = (uint32_t)tfmb_arena_bytes(&candidate);
    *op_count = (uint16_t)tfmb_op_count(&candidate);
    return true;
}

void engine_activate(void)
{
    active = candidate;
    have_active = true;
}

bool engine_has_model(void) { return have_active; }
uint32_t engine_arena_used(void) { return have_active ? (uint32_t)tfmb_arena_bytes(&active) : 0u; }
bool engine_present(void) { return true; }

uint8_t *engine_input(uint32_t *size)
{
    *size = (uint32_t)tfmb_input_bytes(&active);
    return (uint8_t *)tfmb_input(&active, arena_base);
}

const uint8_t *engine_output(uint32_t *size)
{
    *size = (uint32_t)tfmb_output_bytes(&active);
    return (const uint8_t *)tfmb_output(&active, arena_base);
}

bool engine_invoke(fw_error_t *err)
{
    if (!tfmb_invoke(&active, arena_base, &engine_err)) {
        return fail_from_engine(err);
    }
    return true;
}

#else  /* no engine linked */

bool engine_prepare(const uint8_t *blob, uint32_t size, uint8_t *arena, uint32_t arena_capacity,
                    uint32_t *arena_bytes, uint16_t *op_count, fw_error_t *err)
{
    (void)blob;
    (void)size;
    (void)arena;
    (void)arena_capacity;
    *arena_bytes = 0;
    *op_count = 0;
    err->status = ST_UNSUPPORTED_OP;
    err->detail = 0;
    err->message = "firmware built without the inference engine";
    return false;
}

void engine_activate(void) {}
bool engine_has_model(void) { return false; }
uint32_t engine_arena_used(void) { return 0u; }
bool engine_present(void) { return false; }

uint8_t *engine_input(uint32_t *size)
{
    *size = 0;
    return NULL;
}

const uint8_t *engine_output(uint32_t *size)
{
    *size = 0;
    return NULL;
}

bool engine_invoke(fw_error_t *err)
{
    err->status = ST_NO_MODEL;
    err->detail = 0;
    err->message = "no committed fragment";
    return false;
}

#endif
