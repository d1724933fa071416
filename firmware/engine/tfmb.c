/*
 * tfmb: blob validation (tfmb_open) and the op dispatcher (tfmb_invoke).
 *
 * tfmb_open checks everything the kernels rely on, so that tfmb_invoke can trust the model:
 * header framing and CRC, table bounds, every tensor record (type, rank, dims, size, that
 * constants lie in the data section and activations in the planned arena), every op record
 * (known code, tensor kinds and shapes, parameter ranges, multiplier/shift arrays in
 * bounds, output not overlapping its inputs), and that the arena fits the caller's.
 * All arithmetic on untrusted fields is done in 64 bits.
 */
#include <string.h>

#include "tfmb_internal.h"

#define MAX_DIM 65535
#define MAX_STRIDE 255

static const uint8_t kMagic[4] = {'T', 'F', 'M', 'B'};

/* ---- errors ---------------------------------------------------------------------------- */


#define BAD(msg, idx) tfmb_fail(err, TFMB_BAD_MODEL, (idx), (msg), (idx), true)

/* ---- CRC-32 (IEEE 802.3, as zlib.crc32), nibble table ---------------------------------- */

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, uint32_t n)
{
    static const uint32_t table[16] = {
        0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
        0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
    };
    crc = ~crc;
    for (uint32_t i = 0; i < n; ++i) {
        crc ^= p[i];
        crc = (crc >> 4) ^ table[crc & 15u];
        crc = (crc >> 4) ^ table[crc & 15u];
    }
    return ~crc;
}

/* ---- record decoding ------------------------------------------------------------------- */

static void read_tensor(const tfmb_model_t *m, uint16_t id, tfmb_tensor_t *t)
{
    const uint8_t *r = m->blob + m->tensors_offset + (uint32_t)id * TFMB_TENSOR_BYTES;
    t->type = r[0];
    t->rank = r[1];
    t->constant = (uint8_t)(r[2] & TFMB_FLAG_CONSTANT);
    for (int i = 0; i < 4; ++i) t->d[i] = tfmb_rd32(r + 4 + 4 * i);
    t->offset = tfmb_rdu32(r + 20);
    t->nbytes = tfmb_rdu32(r + 24);
    uint32_t e = 1;
    for (int i = 0; i < 4; ++i) e *= (uint32_t)t->d[i]; /* validated: fits */
    t->elems = e;
}

static void read_op(const tfmb_model_t *m, uint16_t idx, tfmb_op_t *op)
{
    const uint8_t *r = m->blob + m->ops_offset + (uint32_t)idx * TFMB_OP_BYTES;
    op->code = r[0];
    op->in[0] = tfmb_rd16(r + 4);
    op->in[1] = tfmb_rd16(r + 6);
    op->in[2] = tfmb_rd16(r + 8);
    op->out = tfmb_rd16(r + 10);
    for (int i = 0; i < TFMB_NPARAMS; ++i) op->p[i] = tfmb_rd32(r + 16 + 4 * i);
}

/* ---- validation ------------------------------------------------------------------------ */

static bool check_tensor(const tfmb_model_t *m, uint16_t id, tfmb_error_t *err)
{
    const uint8_t *r = m->blob + m->tensors_offset + (uint32_t)id * TFMB_TENSOR_BYTES;
    const uint8_t type = r[0], rank = r[1], flags = r[2];
    if (type != TFMB_TYPE_INT8 && type != TFMB_TYPE_INT32) return BAD("tensor type unknown", id);
    if (rank > 4) return BAD("tensor rank > 4", id);
    if ((flags & ~TFMB_FLAG_CONSTANT) || r[3] || tfmb_rdu32(r + 36)) return BAD("tensor reserved bits set", id);
    uint64_t elems = 1;
    for (int i = 0; i < 4; ++i) {
        const int32_t d = tfmb_rd32(r + 4 + 4 * i);
        if (i < rank ? (d < 1 || d > MAX_DIM) : d != 1) return BAD("tensor dim out of range", id);
        elems *= (uint64_t)d;
    }
    const uint64_t esize = type == TFMB_TYPE_INT32 ? 4u : 1u;
    if (elems * esize > 0x7FFFFFFFu) return BAD("tensor too large", id);
    const uint64_t nbytes = tfmb_rdu32(r + 24), offset = tfmb_rdu32(r + 20);
    if (nbytes != elems * esize) return BAD("tensor size disagrees with dims", id);
    if (flags & TFMB_FLAG_CONSTANT) {
        if (offset + nbytes > m->data_bytes) return BAD("constant outside data section", id);
        if (offset % esize) return BAD("constant misaligned", id);
    } else {
        if (type != TFMB_TYPE_INT8) return BAD("activation not int8", id);
        if (offset + nbytes > m->arena_bytes) return BAD("activation outside arena", id);
    }
    return true;
}

static bool is_activation(const tfmb_tensor_t *t) { return !t->constant && t->type == TFMB_TYPE_INT8; }

static bool disjoint(const tfmb_tensor_t *a, const tfmb_tensor_t *b)
{
    return (uint64_t)a->offset + a->nbytes <= b->offset || (uint64_t)b->offset + b->nbytes <= a->offset;
}

static bool in_range(int32_t v, int32_t lo, int32_t hi) { return v >= lo && v <= hi; }

/* Per-channel multiplier/shift arrays at p[10], p[11] with n entries. */
static bool check_requant_arrays(const tfmb_model_t *m, const tfmb_op_t *op, int32_t n, uint16_t idx, tfmb_error_t *err)
{
    for (int k = 10; k <= 11; ++k) {
        const int32_t off = op->p[k];
        if (off < 0 || (off & 3) || (uint64_t)off + 4u * (uint64_t)n > m->data_bytes)
            return BAD("multiplier array outside data", idx);
    }
    const uint8_t *mult = m->blob + m->data_offset + op->p[10];
    const uint8_t *shift = m->blob + m->data_offset + op->p[11];
    for (int32_t i = 0; i < n; ++i) {
        if (tfmb_rd32(mult + 4 * i) < 0) return BAD("negative multiplier at op", idx);
        if (!in_range(tfmb_rd32(shift + 4 * i), -31, 30)) return BAD("shift out of range at op", idx);
    }
    return true;
}

static bool check_common_q(const tfmb_op_t *op, uint16_t idx, tfmb_error_t *err)
{
    /* p0 input offset (-zp), p1 output offset (zp), p2/p3 activation range. */
    if (!in_range(op->p[0], -127, 128) || !in_range(op->p[1], -128, 127)) return BAD("zero point out of range at op", idx);
    if (!in_range(op->p[2], -128, 127) || !in_range(op->p[3], op->p[2], 127)) return BAD("activation range bad at op", idx);
    return true;
}

static bool check_op(const tfmb_model_t *m, uint16_t idx, tfmb_error_t *err)
{
    tfmb_op_t op;
    tfmb_tensor_t t[3], out;
    read_op(m, idx, &op);
    const uint8_t *r = m->blob + m->ops_offset + (uint32_t)idx * TFMB_OP_BYTES;
    if (r[1] || tfmb_rd16(r + 2) || tfmb_rdu32(r + 12)) return BAD("op reserved bits set", idx);

    int n_in, n_required;
    switch (op.code) {
    case TFMB_OP_CONV_2D:
    case TFMB_OP_DEPTHWISE_CONV_2D:
    case TFMB_OP_FULLY_CONNECTED: n_in = 3; n_required = 2; break;
    case TFMB_OP_ADD: n_in = 2; n_required = 2; break;
    case TFMB_OP_AVERAGE_POOL_2D:
    case TFMB_OP_MAX_POOL_2D:
    case TFMB_OP_RESHAPE:
    case TFMB_OP_SOFTMAX: n_in = 1; n_required = 1; break;
    default: return tfmb_fail(err, TFMB_UNSUPPORTED_OP, op.code, "unsupported op code", op.code, true);
    }
    for (int i = 0; i < 3; ++i) {
        if (op.in[i] == TFMB_NONE) {
            if (i < n_required) return BAD("missing input at op", idx);
            continue;
        }
        if (i >= n_in) return BAD("extra input at op", idx);
        if (op.in[i] >= m->tensor_count) return BAD("input id out of range at op", idx);
        read_tensor(m, op.in[i], &t[i]);
    }
    if (op.out >= m->tensor_count) return BAD("output id out of range at op", idx);
    read_tensor(m, op.out, &out);
    if (!is_activation(&out)) return BAD("output is not an int8 activation at op", idx);
    if (!is_activation(&t[0])) return BAD("input is not an int8 activation at op", idx);
    if (op.code != TFMB_OP_RESHAPE) {
        if (!disjoint(&t[0], &out)) return BAD("output overlaps input at op", idx);
        if (op.code == TFMB_OP_ADD && !disjoint(&t[1], &out)) return BAD("output overlaps input at op", idx);
    }
    for (int i = 13; i < TFMB_NPARAMS; ++i)
        if (op.p[i] != 0) return BAD("unused parameter set at op", idx);

    switch (op.code) {
    case TFMB_OP_CONV_2D:
    case TFMB_OP_DEPTHWISE_CONV_2D: {
        const bool dw = op.code == TFMB_OP_DEPTHWISE_CONV_2D;
        const tfmb_tensor_t *in = &t[0], *f = &t[1];
        if (in->rank != 4 || out.rank != 4 || f->rank != 4) return BAD("conv tensors must be 4-D at op", idx);
        if (!f->constant || f->type != TFMB_TYPE_INT8) return BAD("conv filter not int8 constant at op", idx);
        if (out.d[0] != in->d[0]) return BAD("conv batch mismatch at op", idx);
        const int32_t oc = out.d[3];
        if (dw) {
            if (!in_range(op.p[12], 1, MAX_DIM) || (int64_t)in->d[3] * op.p[12] != oc) return BAD("depth multiplier bad at op", idx);
            if (f->d[0] != 1 || f->d[3] != oc) return BAD("depthwise filter shape bad at op", idx);
        } else {
            if (op.p[12] != 0) return BAD("unused parameter set at op", idx);
            if (f->d[0] != oc || f->d[3] != in->d[3]) return BAD("conv filter shape bad at op", idx);
        }
        if (!check_common_q(&op, idx, err)) return false;
        for (int k = 4; k <= 7; ++k)
            if (!in_range(op.p[k], 1, MAX_STRIDE)) return BAD("stride/dilation out of range at op", idx);
        if (!in_range(op.p[8], 0, MAX_DIM) || !in_range(op.p[9], 0, MAX_DIM)) return BAD("padding out of range at op", idx);
        if (op.in[2] != TFMB_NONE) {
            const tfmb_tensor_t *b = &t[2];
            if (!b->constant || b->type != TFMB_TYPE_INT32 || b->elems != (uint32_t)oc) return BAD("bias bad at op", idx);
        }
        return check_requant_arrays(m, &op, oc, idx, err);
    }
    case TFMB_OP_FULLY_CONNECTED: {
        const tfmb_tensor_t *in = &t[0], *f = &t[1];
        if (!f->constant || f->type != TFMB_TYPE_INT8 || f->rank != 2) return BAD("fc weights not 2-D int8 constant at op", idx);
        const int32_t n_out = f->d[0], depth = f->d[1];
        if (out.rank < 1 || out.d[out.rank - 1] != n_out) return BAD("fc output shape bad at op", idx);
        if ((uint64_t)(out.elems / (uint32_t)n_out) * (uint64_t)depth != in->elems) return BAD("fc input size bad at op", idx);
        if (!check_common_q(&op, idx, err)) return false;
        if (!in_range(op.p[4], -127, 128)) return BAD("fc weight offset out of range at op", idx);
        for (int k = 5; k <= 9; ++k)
            if (op.p[k] != 0) return BAD("unused parameter set at op", idx);
        if (op.p[12] != 0) return BAD("unused parameter set at op", idx);
        if (op.in[2] != TFMB_NONE) {
            const tfmb_tensor_t *b = &t[2];
            if (!b->constant || b->type != TFMB_TYPE_INT32 || b->elems != (uint32_t)n_out) return BAD("bias bad at op", idx);
        }
        return check_requant_arrays(m, &op, n_out, idx, err);
    }
    case TFMB_OP_AVERAGE_POOL_2D:
    case TFMB_OP_MAX_POOL_2D: {
        const tfmb_tensor_t *in = &t[0];
        if (in->rank != 4 || out.rank != 4) return BAD("pool tensors must be 4-D at op", idx);
        if (in->d[0] != out.d[0] || in->d[3] != out.d[3]) return BAD("pool shape bad at op", idx);
        if (op.p[0] || op.p[1]) return BAD("unused parameter set at op", idx);
        if (!in_range(op.p[2], -128, 127) || !in_range(op.p[3], op.p[2], 127)) return BAD("activation range bad at op", idx);
        if (!in_range(op.p[4], 1, MAX_STRIDE) || !in_range(op.p[5], 1, MAX_STRIDE)) return BAD("pool stride out of range at op", idx);
        if (!in_range(op.p[6], 1, MAX_DIM) || !in_range(op.p[7], 1, MAX_DIM) || (int64_t)op.p[6] * op.p[7] > (1 << 20))
            return BAD("pool window out of range at op", idx);
        if (!in_range(op.p[8], 0, MAX_DIM) || !in_range(op.p[9], 0, MAX_DIM)) return BAD("padding out of range at op", idx);
        for (int k = 10; k <= 12; ++k)
            if (op.p[k] != 0) return BAD("unused parameter set at op", idx);
        return true;
    }
    case TFMB_OP_RESHAPE:
        if (t[0].elems != out.elems) return BAD("reshape size mismatch at op", idx);
        for (int k = 0; k <= 12; ++k)
            if (op.p[k] != 0) return BAD("unused parameter set at op", idx);
        return true;
    case TFMB_OP_SOFTMAX:
        if (t[0].rank < 1 || t[0].rank != out.rank) return BAD("softmax shape bad at op", idx);
        for (int i = 0; i < 4; ++i)
            if (t[0].d[i] != out.d[i]) return BAD("softmax shape bad at op", idx);
        if (op.p[0] < 0 || !in_range(op.p[1], 0, 31) || op.p[2] > 0) return BAD("softmax parameters bad at op", idx);
        for (int k = 3; k <= 12; ++k)
            if (op.p[k] != 0) return BAD("unused parameter set at op", idx);
        return true;
    case TFMB_OP_ADD:
        if (!is_activation(&t[1])) return BAD("input is not an int8 activation at op", idx);
        if (t[0].elems != out.elems || t[1].elems != out.elems) return BAD("add shapes differ (no broadcast) at op", idx);
        if (!in_range(op.p[0], -127, 128) || !in_range(op.p[1], -127, 128) || !in_range(op.p[4], -128, 127))
            return BAD("zero point out of range at op", idx);
        if (!in_range(op.p[2], -128, 127) || !in_range(op.p[3], op.p[2], 127)) return BAD("activation range bad at op", idx);
        if (!in_range(op.p[5], 0, 23)) return BAD("add left shift out of range at op", idx);
        for (int k = 6; k <= 10; k += 2)
            if (op.p[k] < 0 || !in_range(op.p[k + 1], -31, 30)) return BAD("add multiplier bad at op", idx);
        if (op.p[12] != 0) return BAD("unused parameter set at op", idx);
        return true;
    default: break;
    }
    return BAD("unsupported op", idx);
}

bool tfmb_open(tfmb_model_t *m, const uint8_t *blob, uint32_t size, uint32_t arena_capacity, tfmb_error_t *err)
{
    tfmb_error_t scratch;
    if (!err) err = &scratch;
    memset(err, 0, sizeof(*err));
    if (!m) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "no model struct", 0, false);
    memset(m, 0, sizeof(*m));
    if (!blob || size < TFMB_HEADER_BYTES) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "blob shorter than header", size, true);
    if (memcmp(blob, kMagic, 4) != 0) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "bad magic (not a TFMB blob)", 0, false);
    const uint16_t version = tfmb_rd16(blob + 4);
    if (version != TFMB_VERSION) return tfmb_fail(err, TFMB_WRONG_VERSION, version, "blob version", version, true);
    if (tfmb_rd16(blob + 6) != TFMB_HEADER_BYTES) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "bad header size", 0, false);
    if (tfmb_rdu32(blob + 12) != size) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "blob size disagrees with header", size, true);
    if (crc32_update(0, blob + 12, size - 12) != tfmb_rdu32(blob + 8)) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "blob CRC mismatch", 0, false);
    for (uint32_t i = 44; i < TFMB_HEADER_BYTES; ++i)
        if (blob[i]) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "header reserved bytes set", 0, false);

    tfmb_model_t v;
    memset(&v, 0, sizeof(v));
    v.blob = blob;
    v.size = size;
    v.tensor_count = tfmb_rd16(blob + 16);
    v.op_count = tfmb_rd16(blob + 18);
    v.input_tensor = tfmb_rd16(blob + 20);
    v.output_tensor = tfmb_rd16(blob + 22);
    v.arena_bytes = tfmb_rdu32(blob + 24);
    v.tensors_offset = tfmb_rdu32(blob + 28);
    v.ops_offset = tfmb_rdu32(blob + 32);
    v.data_offset = tfmb_rdu32(blob + 36);
    v.data_bytes = tfmb_rdu32(blob + 40);
    if (v.tensor_count == 0 || v.tensor_count == TFMB_NONE || v.op_count == 0 || v.op_count == TFMB_NONE)
        return tfmb_fail(err, TFMB_BAD_MODEL, 0, "no tensors or no ops", 0, false);
    if (v.tensors_offset != TFMB_HEADER_BYTES ||
        (uint64_t)v.tensors_offset + (uint64_t)v.tensor_count * TFMB_TENSOR_BYTES > v.ops_offset ||
        (uint64_t)v.ops_offset + (uint64_t)v.op_count * TFMB_OP_BYTES > v.data_offset || (v.data_offset & 15u) ||
        (uint64_t)v.data_offset + v.data_bytes != size)
        return tfmb_fail(err, TFMB_BAD_MODEL, 0, "section table out of range", 0, false);
    if (v.input_tensor >= v.tensor_count || v.output_tensor >= v.tensor_count)
        return tfmb_fail(err, TFMB_BAD_MODEL, 0, "input/output tensor id out of range", 0, false);
    if (v.arena_bytes > 0x7FFFFFFFu) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "arena size absurd", 0, false);

    for (uint16_t i = 0; i < v.tensor_count; ++i)
        if (!check_tensor(&v, i, err)) return false;
    tfmb_tensor_t tin, tout;
    read_tensor(&v, v.input_tensor, &tin);
    read_tensor(&v, v.output_tensor, &tout);
    if (!is_activation(&tin) || !is_activation(&tout))
        return tfmb_fail(err, TFMB_BAD_MODEL, 0, "input/output not int8 activations", 0, false);
    for (uint16_t i = 0; i < v.op_count; ++i)
        if (!check_op(&v, i, err)) return false;

    if (v.arena_bytes > arena_capacity)
        return tfmb_fail(err, TFMB_OUT_OF_MEMORY, (v.arena_bytes + 1023u) / 1024u, "arena bytes needed", v.arena_bytes, true);
    v.input_offset = tin.offset;
    v.input_bytes = tin.nbytes;
    v.output_offset = tout.offset;
    v.output_bytes = tout.nbytes;
    *m = v;
    return true;
}

uint32_t tfmb_arena_bytes(const tfmb_model_t *m) { return m && m->blob ? m->arena_bytes : 0; }
uint32_t tfmb_input_bytes(const tfmb_model_t *m) { return m && m->blob ? m->input_bytes : 0; }
uint32_t tfmb_output_bytes(const tfmb_model_t *m) { return m && m->blob ? m->output_bytes : 0; }
uint16_t tfmb_op_count(const tfmb_model_t *m) { return m && m->blob ? m->op_count : 0; }

int8_t *tfmb_input(const tfmb_model_t *m, uint8_t *arena)
{
    return (m && m->blob && arena) ? (int8_t *)(arena + m->input_offset) : 0;
}

const int8_t *tfmb_output(const tfmb_model_t *m, const uint8_t *arena)
{
    return (m && m->blob && arena) ? (const int8_t *)(arena + m->output_offset) : 0;
}

bool tfmb_invoke(const tfmb_model_t *m, uint8_t *arena, tfmb_error_t *err)
{
    if (!m || !m->blob) return tfmb_fail(err, TFMB_NO_MODEL, 0, "no model opened", 0, false);
    if (!arena) return tfmb_fail(err, TFMB_OUT_OF_MEMORY, 0, "no arena", 0, false);
    tfmb_ctx_t c;
    c.data = m->blob + m->data_offset;
    c.arena = arena;
    for (uint16_t i = 0; i < m->op_count; ++i) {
        tfmb_op_t op;
        tfmb_tensor_t t[3], out;
        read_op(m, i, &op);
        for (int k = 0; k < 3; ++k)
            if (op.in[k] != TFMB_NONE) read_tensor(m, op.in[k], &t[k]);
        read_tensor(m, op.out, &out);
        const tfmb_tensor_t *bias = op.in[2] != TFMB_NONE ? &t[2] : 0;
        switch (op.code) {
        case TFMB_OP_CONV_2D: tfmb_k_conv(&op, &t[0], &t[1], bias, &out, &c); break;
        case TFMB_OP_DEPTHWISE_CONV_2D: tfmb_k_depthwise(&op, &t[0], &t[1], bias, &out, &c); break;
        case TFMB_OP_FULLY_CONNECTED: tfmb_k_fully_connected(&op, &t[0], &t[1], bias, &out, &c); break;
        case TFMB_OP_MAX_POOL_2D: tfmb_k_max_pool(&op, &t[0], &out, &c); break;
        case TFMB_OP_AVERAGE_POOL_2D: tfmb_k_avg_pool(&op, &t[0], &out, &c); break;
        case TFMB_OP_SOFTMAX: tfmb_k_softmax(&op, &t[0], &out, &c); break;
        case TFMB_OP_ADD: tfmb_k_add(&op, &t[0], &t[1], &out, &c); break;
        case TFMB_OP_RESHAPE: tfmb_k_reshape(&t[0], &out, &c); break;
        default: return tfmb_fail(err, TFMB_UNSUPPORTED_OP, op.code, "unsupported op code", op.code, true);
        }
    }
    if (err) memset(err, 0, sizeof(*err));
    return true;
}
