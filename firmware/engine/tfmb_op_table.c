/*
 * The int8 engine's op table: every op tfmb_open accepts and tfmb_invoke runs, looked up by
 * TFLite builtin op code. Adding an op: its file under engine/ops/ (validate + eval + entry),
 * its line here, and its code in tfmb_internal.h (= the host's OP_CODES).
 */
#include "tfmb_internal.h"

extern const tfmb_op_entry_t tfmb_op_add, tfmb_op_average_pool_2d, tfmb_op_conv_2d, tfmb_op_depthwise_conv_2d,
    tfmb_op_fully_connected, tfmb_op_max_pool_2d, tfmb_op_reshape, tfmb_op_softmax;

static const tfmb_op_entry_t *const kOps[] = {
    &tfmb_op_add,
    &tfmb_op_average_pool_2d,
    &tfmb_op_conv_2d,
    &tfmb_op_depthwise_conv_2d,
    &tfmb_op_fully_connected,
    &tfmb_op_max_pool_2d,
    &tfmb_op_reshape,
    &tfmb_op_softmax,
};

const tfmb_op_entry_t *tfmb_find_op(uint8_t code)
{
    for (uint32_t i = 0; i < sizeof(kOps) / sizeof(kOps[0]); ++i)
        if (kOps[i]->code == code) return kOps[i];
    return 0;
}
