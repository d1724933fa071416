/*
 * tfmb: blob validation (tfmb_open) and the op dispatcher (tfmb_invoke); the ops themselves are
 * entries of the op table (tfmb_op_table.c, one file each under ops/).
 *
 * tfmb_open checks everything the kernels rely on, so that tfmb_invoke can trust the model:
 * header framing and CRC, table bounds, every tensor record (type, rank, dims, size, that
 * constants lie in the data section and activations in the planned arena), every op record
 * (known code, tensor kinds and shapes, parameter ranges, multiplier/shift arrays in
 * bounds, output not overlapping its inputs: the shared part here, the rest in the op's
 * validate), and that the arena fits the caller's.
 * All arithmetic on untrusted fields is done in 64 bits.
 */
#include <string.h>

#include "tfmb_internal.h"

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

void tfmb_read_tensor(const tfmb_model_t *m, uint16_t id, tfmb_tensor_t *t)
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
        if (i < rank ? (d < 1 || d > TFMB_MAX_DIM) : d != 1) return BAD("tensor dim out of range", id);
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

static bool disjoint(const tfmb_tensor_t *a, const tfmb_tensor_t *b)
{
    return (uint64_t)a->offset + a->nbytes <= b->offset || (uint64_t)b->offset + b->nbytes <= a->offset;
}

/* ---- helpers of the ops' validate functions -------------------------------------------- */

const char *tfmb_check_requant_arrays(const tfmb_model_t *m, const tfmb_op_t *op, int32_t n)
{
    for (int k = 10; k <= 11; ++k) {
        const int32_t off = op->p[k];
        if (off < 0 || (off & 3) || (uint64_t)off + 4u * (uint64_t)n > m->data_bytes)
            return "multiplier array outside data";
    }
    const uint8_t *mult = m->blob + m->data_offset + op->p[10];
    const uint8_t *shift = m->blob + m->data_offset + op->p[11];
    for (int32_t i = 0; i < n; ++i) {
        if (tfmb_rd32(mult + 4 * i) < 0) return "negative multiplier at op";
        if (!tfmb_in_range(tfmb_rd32(shift + 4 * i), -31, 30)) return "shift out of range at op";
    }
    return 0;
}

const char *tfmb_check_common_q(const tfmb_op_t *op)
{
    /* p0 input offset (-zp), p1 output offset (zp), p2/p3 activation range. */
    if (!tfmb_in_range(op->p[0], -127, 128) || !tfmb_in_range(op->p[1], -128, 127))
        return "zero point out of range at op";
    if (!tfmb_in_range(op->p[2], -128, 127) || !tfmb_in_range(op->p[3], op->p[2], 127))
        return "activation range bad at op";
    return 0;
}

/* The checks every op shares, then the op's own (its entry's validate). */
static bool check_op(const tfmb_model_t *m, uint16_t idx, tfmb_error_t *err)
{
    tfmb_op_t op;
    tfmb_tensor_t t[3], out;
    read_op(m, idx, &op);
    const uint8_t *r = m->blob + m->ops_offset + (uint32_t)idx * TFMB_OP_BYTES;
    if (r[1] || tfmb_rd16(r + 2) || tfmb_rdu32(r + 12)) return BAD("op reserved bits set", idx);

    const tfmb_op_entry_t *entry = tfmb_find_op(op.code);
    if (!entry) return tfmb_fail(err, TFMB_UNSUPPORTED_OP, op.code, "unsupported op code", op.code, true);
    const char *ids = tfmb_check_input_ids(op.in, entry->required, entry->inputs, m->tensor_count);
    if (ids) return BAD(ids, idx);
    for (int i = 0; i < 3; ++i)
        if (op.in[i] != TFMB_NONE) tfmb_read_tensor(m, op.in[i], &t[i]);
    if (op.out >= m->tensor_count) return BAD("output id out of range at op", idx);
    tfmb_read_tensor(m, op.out, &out);
    if (!tfmb_is_activation(&out)) return BAD("output is not an int8 activation at op", idx);
    if (!tfmb_is_activation(&t[0])) return BAD("input is not an int8 activation at op", idx);
    if (!entry->in_place)
        for (int i = 0; i < entry->activations; ++i)
            if (!disjoint(&t[i], &out)) return BAD("output overlaps input at op", idx);
    for (int i = 15; i < TFMB_NPARAMS; ++i)
        if (op.p[i] != 0) return BAD("unused parameter set at op", idx);
    const uint32_t need = entry->scratch ? entry->scratch(&op, t, &out) : 0u;
    if ((uint32_t)op.p[14] != need) return BAD("scratch size disagrees with the kernels at op", idx);
    if (need == 0u) {
        if (op.p[13] != 0) return BAD("unused parameter set at op", idx);
    } else {
        const tfmb_tensor_t s = {.offset = (uint32_t)op.p[13], .nbytes = need};
        if (op.p[13] < 0 || (op.p[13] & 3) || (uint64_t)(uint32_t)op.p[13] + need > m->arena_bytes)
            return BAD("scratch outside the arena at op", idx);
        if (!disjoint(&s, &out)) return BAD("scratch overlaps output at op", idx);
        for (int i = 0; i < entry->activations; ++i)
            if (!disjoint(&s, &t[i])) return BAD("scratch overlaps input at op", idx);
    }
    const char *problem = entry->validate(m, &op, t, &out);
    return problem ? BAD(problem, idx) : true;
}

bool tfmb_open(tfmb_model_t *m, const uint8_t *blob, uint32_t size, uint32_t arena_capacity, tfmb_error_t *err)
{
    tfmb_error_t scratch;
    if (!err) err = &scratch;
    memset(err, 0, sizeof(*err));
    if (!m) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "no model struct", 0, false);
    memset(m, 0, sizeof(*m));
    if (!blob || size < TFMB_HEADER_BYTES) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "blob shorter than header", size, true);
    if (memcmp(blob, TFMB_MAGIC, 4) != 0) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "bad magic (not a TFMB blob)", 0, false);
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
        (uint64_t)v.ops_offset + (uint64_t)v.op_count * TFMB_OP_BYTES > v.data_offset || (v.data_offset & (TFMB_ALIGN - 1u)) ||
        (uint64_t)v.data_offset + v.data_bytes != size)
        return tfmb_fail(err, TFMB_BAD_MODEL, 0, "section table out of range", 0, false);
    if (v.input_tensor >= v.tensor_count || v.output_tensor >= v.tensor_count)
        return tfmb_fail(err, TFMB_BAD_MODEL, 0, "input/output tensor id out of range", 0, false);
    if (v.arena_bytes > 0x7FFFFFFFu) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "arena size absurd", 0, false);

    for (uint16_t i = 0; i < v.tensor_count; ++i)
        if (!check_tensor(&v, i, err)) return false;
    tfmb_tensor_t tin, tout;
    tfmb_read_tensor(&v, v.input_tensor, &tin);
    tfmb_read_tensor(&v, v.output_tensor, &tout);
    if (!tfmb_is_activation(&tin) || !tfmb_is_activation(&tout))
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
    return tfmb_invoke_with(m, arena, 0, err);
}

bool tfmb_invoke_with(const tfmb_model_t *m, uint8_t *arena, const tfmb_run_options_t *opt, tfmb_error_t *err)
{
    if (!m || !m->blob) return tfmb_fail(err, TFMB_NO_MODEL, 0, "no model opened", 0, false);
    if (!arena) return tfmb_fail(err, TFMB_OUT_OF_MEMORY, 0, "no arena", 0, false);
    const bool reference = opt && opt->reference;
    const bool timed = opt && opt->clock && opt->op_ticks;
    tfmb_ctx_t c;
    c.data = m->blob + m->data_offset;
    c.arena = arena;
    for (uint16_t i = 0; i < m->op_count; ++i) {
        tfmb_op_t op;
        tfmb_tensor_t t[3], out;
        read_op(m, i, &op);
        for (int k = 0; k < 3; ++k)
            if (op.in[k] != TFMB_NONE) tfmb_read_tensor(m, op.in[k], &t[k]);
        tfmb_read_tensor(m, op.out, &out);
        const tfmb_op_entry_t *entry = tfmb_find_op(op.code);
        if (!entry) return tfmb_fail(err, TFMB_UNSUPPORTED_OP, op.code, "unsupported op code", op.code, true);
        const tfmb_eval_fn kernel = (reference || !entry->fast) ? entry->eval : entry->fast;
        if (timed) {
            const uint32_t t0 = opt->clock();
            kernel(&op, t, &out, &c);
            opt->op_ticks[i] = opt->clock() - t0;
        } else {
            kernel(&op, t, &out, &c);
        }
    }
    if (err) memset(err, 0, sizeof(*err));
    return true;
}

bool tfmb_op_info(const tfmb_model_t *m, uint16_t index, uint8_t *code, bool *fast)
{
    if (!m || !m->blob || index >= m->op_count) return false;
    tfmb_op_t op;
    read_op(m, index, &op);
    const tfmb_op_entry_t *entry = tfmb_find_op(op.code);
    if (code) *code = op.code;
    if (fast) *fast = entry && entry->fast;
    return true;
}

const char *tfmb_kernel_path(void)
{
#if TFMB_CORE == TFMB_CORE_MVE
    return "mve";
#elif TFMB_CORE == TFMB_CORE_DSP
    return "dsp";
#else
    return "c";
#endif
}
