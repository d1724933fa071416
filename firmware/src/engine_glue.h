/* The firmware's view of the inference engine (firmware/engine/, tfmb.h). Built with
 * TFMB_ENGINE only when the engine sources exist; without them every model operation
 * answers UNSUPPORTED_OP / NO_MODEL. */
#ifndef TINYFED_ENGINE_GLUE_H
#define TINYFED_ENGINE_GLUE_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    uint8_t status;
    uint16_t detail;
    const char *message;
} fw_error_t;

/* Parse and validate a committed blob into the candidate model (the active one untouched). */
bool engine_prepare(const uint8_t *blob, uint32_t size, uint8_t *arena, uint32_t arena_capacity,
                    uint32_t *arena_bytes, uint16_t *op_count, fw_error_t *err);
/* Make the candidate the active model (one step, after engine_prepare succeeded). */
void engine_activate(void);
bool engine_has_model(void);
uint8_t *engine_input(uint32_t *size);
const uint8_t *engine_output(uint32_t *size);
bool engine_invoke(fw_error_t *err);
bool engine_present(void);
/* Arena bytes the active fragment uses (its planned arena; 0 without one). */
uint32_t engine_arena_used(void);

#endif
