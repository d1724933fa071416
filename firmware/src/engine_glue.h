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
/* Kernel mode of every engine run (INVOKE, TRAIN's and EVALUATE's frozen head): false = this
 * core's optimised kernels, true = the plain-C reference kernels (KERNELS command). */
void engine_set_reference(bool reference);
bool engine_reference(void);
/* The optimised kernel path this image was built with ("dsp", "mve", "c"; "none" without engine). */
const char *engine_kernel_path(void);
/* One timed run of the active fragment: reference or optimised kernels, each op's cycles in
 * ticks[0 .. op_count) (cycles_now() differences; ticks has room for op_count entries). */
bool engine_profile(bool reference, uint32_t *ticks, fw_error_t *err);
/* Op `index` of the active fragment: op code and whether an optimised kernel exists for it. */
bool engine_op_info(uint16_t index, uint8_t *code, bool *fast);
uint16_t engine_op_count(void);

/* Arena bytes the active fragment uses (its planned arena; 0 without one). */
uint32_t engine_arena_used(void);

#endif
