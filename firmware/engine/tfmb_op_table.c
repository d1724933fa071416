/*
 * The int8 engine's op table: every op tfmb_open accepts and tfmb_invoke runs, looked up by
 * TFLite builtin op code. Each op file under engine/ops/ registers its entry with
 * TFMB_REGISTER_OP (tfmb_internal.h); the linker collects them into the section walked here.
 * Adding an op: its file, and its code as TFMB_OP_<NAME> in tfmb_internal.h if no op uses it yet
 * (= the host's OP_CODES; tests/test_wire_constants.py checks it).
 */
#include "tfmb_internal.h"

extern const tfmb_op_entry_t *const __start_tfmb_ops[];
extern const tfmb_op_entry_t *const __stop_tfmb_ops[];

const tfmb_op_entry_t *tfmb_find_op(uint8_t code)
{
    for (const tfmb_op_entry_t *const *op = __start_tfmb_ops; op < __stop_tfmb_ops; ++op)
        if ((*op)->code == code) return *op;
    return 0;
}
