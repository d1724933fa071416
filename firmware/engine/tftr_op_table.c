/*
 * The training engine's op table: every op tftr_open accepts and the per-sample pass runs,
 * looked up by TFLite builtin op code. Each op file under engine/train_ops/ registers its entry
 * with TFTR_REGISTER_OP (tftr_internal.h); the linker collects them into the section walked here.
 * Adding a trainable op: its file here besides its int8 file under engine/ops/.
 */
#include "tftr_internal.h"

extern const tftr_op_entry_t *const __start_tftr_ops[];
extern const tftr_op_entry_t *const __stop_tftr_ops[];

const tftr_op_entry_t *tftr_find_op(uint8_t code)
{
    for (const tftr_op_entry_t *const *op = __start_tftr_ops; op < __stop_tftr_ops; ++op)
        if ((*op)->code == code) return *op;
    return 0;
}
