#include "engine_glue.h"

#include <stddef.h>

#include "board.h"
#include "protocol.h"

#if defined(TFMB_ENGINE)
#include "tfmb.h"

static tfmb_model_t candidate;
static tfmb_model_t active;
static bool have_active;
static uint8_t *arena_base;
static tfmb_error_t engine_err;
static bool use_reference;

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
    tfmb_run_options_t opt = {use_reference, 0, 0};
    if (!tfmb_invoke_with(&active, arena_base, &opt, &engine_err)) {
        return fail_from_engine(err);
    }
    return true;
}

void engine_set_reference(bool reference) { use_reference = reference; }
bool engine_reference(void) { return use_reference; }
const char *engine_kernel_path(void) { return tfmb_kernel_path(); }
uint16_t engine_op_count(void) { return have_active ? tfmb_op_count(&active) : 0u; }

bool engine_profile(bool reference, uint32_t *ticks, fw_error_t *err)
{
    tfmb_run_options_t opt = {reference, cycles_now, ticks};
    if (!tfmb_invoke_with(&active, arena_base, &opt, &engine_err)) {
        return fail_from_engine(err);
    }
    return true;
}

bool engine_op_info(uint16_t index, uint8_t *code, bool *fast)
{
    return have_active && tfmb_op_info(&active, index, code, fast);
}

#else  /* no engine linked */

void engine_set_reference(bool reference) { (void)reference; }
bool engine_reference(void) { return false; }
const char *engine_kernel_path(void) { return "none"; }
uint16_t engine_op_count(void) { return 0u; }

bool engine_profile(bool reference, uint32_t *ticks, fw_error_t *err)
{
    (void)reference;
    (void)ticks;
    return engine_invoke(err);
}

bool engine_op_info(uint16_t index, uint8_t *code, bool *fast)
{
    (void)index;
    (void)code;
    (void)fast;
    return false;
}

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
