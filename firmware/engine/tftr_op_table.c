/*
 * The training engine's op table: every op tftr_open accepts and the per-sample pass runs,
 * looked up by TFLite builtin op code. Adding an op: its file under engine/train_ops/
 * (validate + forward + backward + entry), its line here, and its code in tfmb_internal.h
 * (= the host's OP_CODES).
 */
#include "tftr_internal.h"

extern const tftr_op_entry_t tftr_op_add, tftr_op_average_pool_2d, tftr_op_conv_2d, tftr_op_depthwise_conv_2d,
    tftr_op_fully_connected, tftr_op_max_pool_2d, tftr_op_reshape, tftr_op_softmax;

static const tftr_op_entry_t *const kOps[] = {
    &tftr_op_add,
    &tftr_op_average_pool_2d,
    &tftr_op_conv_2d,
    &tftr_op_depthwise_conv_2d,
    &tftr_op_fully_connected,
    &tftr_op_max_pool_2d,
    &tftr_op_reshape,
    &tftr_op_softmax,
};

const tftr_op_entry_t *tftr_find_op(uint8_t code)
{
    for (uint32_t i = 0; i < sizeof(kOps) / sizeof(kOps[0]); ++i)
        if (kOps[i]->code == code) return kOps[i];
    return 0;
}
