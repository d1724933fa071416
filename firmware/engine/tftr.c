/*
 * tftr: training-program validation (tftr_open), state binding and the per-sample
 * forward / backward driver. The ops are entries of the op table (tftr_op_table.c, one file
 * each under train_ops/).
 *
 * tftr_open checks everything the kernels rely on, so that the training calls can trust the
 * program: header framing and section table, every tensor record (kind, rank, dims, that
 * activations and gradient buffers lie in the work area and constants in the data section,
 * zero points, channel maps inside w*), every op record (code, tensor kinds and shapes,
 * strides, pads, windows, flags, output disjoint from its inputs), the units (addressing
 * weights/biases of their op, ascending channels, a one-to-one match with the channel maps,
 * w* laid out contiguously) and the RAM formula. Arithmetic on untrusted fields is 64-bit.
 * There is no CRC inside the program: the link checks one on upload.
 */
#include <math.h>
#include <string.h>

#include "tftr_internal.h"

/* ---- errors ---------------------------------------------------------------------------- */


#define BAD(msg, idx) tfmb_fail(err, TFMB_BAD_MODEL, (idx), (msg), (idx), true)
#define BAD0(msg) tfmb_fail(err, TFMB_BAD_MODEL, 0, (msg), 0, false)

/* ---- record decoding ------------------------------------------------------------------- */

void tftr_read_tensor(const tftr_program_t *p, uint16_t id, tftr_tensor_t *t)
{
    const uint8_t *r = p->blob + p->tensors_offset + (uint32_t)id * TFTR_TENSOR_BYTES;
    memset(t, 0, sizeof(*t));
    t->kind = r[0];
    t->rank = r[1];
    t->axis = r[2];
    uint32_t e = 1;
    for (int i = 0; i < 4; ++i) {
        t->d[i] = tfmb_rd32(r + 4 + 4 * i);
        e *= (uint32_t)t->d[i]; /* validated: fits */
    }
    t->elems = e;
    if (t->kind == TFTR_KIND_ACT) {
        t->voff = tfmb_rdu32(r + 20);
        t->goff = tfmb_rdu32(r + 24);
    } else {
        t->ch = tfmb_rdu32(r + 20);
        t->q = tfmb_rdu32(r + 24);
        t->sc = tfmb_rdu32(r + 28);
        t->zp = tfmb_rdu32(r + 32);
        t->map = tfmb_rdu32(r + 36);
    }
}

void tftr_read_op(const tftr_program_t *p, uint16_t idx, tftr_op_t *op)
{
    const uint8_t *r = p->blob + p->ops_offset + (uint32_t)idx * TFTR_OP_BYTES;
    op->code = r[0];
    op->act = r[1];
    op->flags = r[2];
    for (int i = 0; i < 3; ++i) op->in[i] = tfmb_rd16(r + 4 + 2 * i);
    op->out = tfmb_rd16(r + 10);
    for (int i = 0; i < TFTR_NPARAMS; ++i) op->p[i] = tfmb_rd32(r + 12 + 4 * i);
}

typedef struct {
    uint16_t op, tensor;
    uint8_t kind, axis;
    uint16_t n;
    uint32_t per, start, ch_off, val_off;
} unit_t;

static void read_unit(const tftr_program_t *p, uint16_t i, unit_t *u)
{
    const uint8_t *r = p->blob + p->units_offset + (uint32_t)i * TFTR_UNIT_BYTES;
    u->op = tfmb_rd16(r);
    u->tensor = tfmb_rd16(r + 2);
    u->kind = r[4];
    u->axis = r[5];
    u->n = tfmb_rd16(r + 6);
    u->per = tfmb_rdu32(r + 8);
    u->start = tfmb_rdu32(r + 12);
    u->ch_off = tfmb_rdu32(r + 16);
    u->val_off = tfmb_rdu32(r + 20);
}

/* ---- validation ------------------------------------------------------------------------ */

/* [off, off + bytes) inside a region of `size` bytes, 4-aligned. */
static bool fits(uint64_t off, uint64_t bytes, uint64_t size) { return (off & 3u) == 0 && off + bytes <= size; }

static bool overlap(uint64_t a, uint64_t an, uint64_t b, uint64_t bn) { return a < b + bn && b < a + an; }

static bool check_tensor(const tftr_program_t *p, uint16_t id, tfmb_error_t *err)
{
    const uint8_t *r = p->blob + p->tensors_offset + (uint32_t)id * TFTR_TENSOR_BYTES;
    const uint8_t kind = r[0], rank = r[1], axis = r[2];
    if (kind > TFTR_KIND_Q32) return BAD("tensor kind unknown", id);
    if (rank < 1 || rank > 4) return BAD("tensor rank not 1..4", id);
    if (r[3]) return BAD("tensor reserved bits set", id);
    for (uint32_t i = 40; i < TFTR_TENSOR_BYTES; ++i)
        if (r[i]) return BAD("tensor reserved bits set", id);
    uint64_t elems = 1;
    for (int i = 0; i < 4; ++i) {
        const int32_t d = tfmb_rd32(r + 4 + 4 * i);
        if (i < rank ? !tftr_in_range(d, 1, TFMB_MAX_DIM) : d != 1) return BAD("tensor dim out of range", id);
        elems *= (uint64_t)d;
    }
    if (elems * 4u > 0x7FFFFFFFu) return BAD("tensor too large", id);
    if (kind == TFTR_KIND_ACT) {
        if (axis || tfmb_rdu32(r + 28) || tfmb_rdu32(r + 32) || tfmb_rdu32(r + 36)) return BAD("tensor reserved bits set", id);
        const uint32_t voff = tfmb_rdu32(r + 20), goff = tfmb_rdu32(r + 24);
        if (!fits(voff, 4u * elems, p->work_bytes)) return BAD("activation outside work area", id);
        if (goff != TFTR_NONE32 && !fits(goff, 4u * elems, p->work_bytes)) return BAD("gradient outside work area", id);
        const uint64_t so = p->scratch_offset, sn = 4u * (uint64_t)p->scratch_floats;
        if (overlap(voff, 4u * elems, so, sn) || (goff != TFTR_NONE32 && overlap(goff, 4u * elems, so, sn)))
            return BAD("activation overlaps the scratch row", id);
        return true;
    }
    const uint32_t ch = tfmb_rdu32(r + 20), q = tfmb_rdu32(r + 24), sc = tfmb_rdu32(r + 28), zp = tfmb_rdu32(r + 32),
                   map = tfmb_rdu32(r + 36);
    if (axis >= rank || (axis != 0 && axis != rank - 1)) return BAD("constant channel axis bad", id);
    if (ch != (uint32_t)tfmb_rd32(r + 4 + 4 * axis)) return BAD("constant channel count disagrees with dims", id);
    const uint64_t per = elems / ch;
    if (per > p->scratch_floats) return BAD("scratch row shorter than a channel of tensor", id);
    const uint64_t esize = kind == TFTR_KIND_Q32 ? 4u : 1u;
    if ((esize == 4u && (q & 3u)) || (uint64_t)q + elems * esize > p->data_bytes) return BAD("constant outside data", id);
    if (!fits(sc, 4u * (uint64_t)ch, p->data_bytes) || !fits(zp, 4u * (uint64_t)ch, p->data_bytes) ||
        !fits(map, 4u * (uint64_t)ch, p->data_bytes))
        return BAD("channel arrays outside data", id);
    const uint8_t *data = p->blob + p->data_offset;
    for (uint32_t c = 0; c < ch; ++c) {
        const int32_t z = tfmb_rd32(data + zp + 4u * c);
        if (kind == TFTR_KIND_Q8 ? !tftr_in_range(z, -128, 127) : z != 0) return BAD("zero point out of range in tensor", id);
        const int32_t m = tfmb_rd32(data + map + 4u * c);
        if (m != -1 && (m < 0 || (uint64_t)m + per > p->trainable_count)) return BAD("channel map outside w* in tensor", id);
    }
    return true;
}

/* The checks every op shares, then the op's own (its entry's validate). */
static bool check_op(const tftr_program_t *p, uint16_t idx, tfmb_error_t *err)
{
    tftr_op_t op;
    tftr_tensor_t t[3], out;
    memset(t, 0, sizeof(t));
    tftr_read_op(p, idx, &op);
    const uint8_t *r = p->blob + p->ops_offset + (uint32_t)idx * TFTR_OP_BYTES;
    if (r[3]) return BAD("op reserved bits set", idx);
    const tftr_op_entry_t *entry = tftr_find_op(op.code);
    if (!entry) return tfmb_fail(err, TFMB_UNSUPPORTED_OP, op.code, "unsupported op code", op.code, true);
    if (op.act > (entry->fused_activation ? TFTR_ACT_RELU6 : TFTR_ACT_NONE))
        return BAD("fused activation bad at op", idx);
    /* ZERO_IN0 / ZERO_IN1 may only name activation inputs */
    if (op.flags & ~((1u << entry->activations) - 1u)) return BAD("op flags bad at op", idx);
    const char *ids = tfmb_check_input_ids(op.in, entry->required, entry->inputs, p->tensor_count);
    if (ids) return BAD(ids, idx);
    for (int i = 0; i < 3; ++i)
        if (op.in[i] != TFTR_NONE16) tftr_read_tensor(p, op.in[i], &t[i]);
    if (op.out >= p->tensor_count) return BAD("output id out of range at op", idx);
    tftr_read_tensor(p, op.out, &out);
    if (!tftr_is_act(&out) || !tftr_is_act(&t[0])) return BAD("input/output not an activation at op", idx);
    const uint64_t ob = 4u * (uint64_t)out.elems;
    /* an activation slot may hold a constant (MUL's second operand): it has no work-area buffers */
    if (!entry->in_place)
        for (int i = 0; i < entry->activations; ++i)
            if (tftr_is_act(&t[i]) && overlap(out.voff, ob, t[i].voff, 4u * (uint64_t)t[i].elems))
                return BAD("output overlaps input at op", idx);
    /* the backward pass writes input gradients while reading the output gradient and values */
    for (int i = 0; i < entry->activations; ++i) {
        if (!tftr_is_act(&t[i]) || t[i].goff == TFTR_NONE32 || entry->in_place) continue;
        const uint64_t gb = 4u * (uint64_t)t[i].elems;
        if ((out.goff != TFTR_NONE32 && overlap(t[i].goff, gb, out.goff, ob)) || overlap(t[i].goff, gb, out.voff, ob) ||
            overlap(t[i].goff, gb, t[0].voff, 4u * (uint64_t)t[0].elems))
            return BAD("input gradient overlaps at op", idx);
    }
    if (entry->last_only && (idx != p->op_count - 1)) return BAD("softmax before the last op at", idx);
    const char *problem = entry->validate(p, &op, t, &out);
    return problem ? BAD(problem, idx) : true;
}

static bool check_units(const tftr_program_t *p, tfmb_error_t *err)
{
    const uint8_t *data = p->blob + p->data_offset;
    uint64_t running = 0;
    uint32_t first = p->op_count;
    for (uint16_t i = 0; i < p->unit_count; ++i) {
        unit_t u;
        read_unit(p, i, &u);
        if (u.op >= p->op_count) return BAD("unit op out of range, unit", i);
        if (u.op < first) first = u.op;
        if (u.kind > 1) return BAD("unit kind bad, unit", i);
        tftr_op_t op;
        tftr_read_op(p, u.op, &op);
        if (!tftr_find_op(op.code)->weighted || op.in[1 + u.kind] != u.tensor)
            return BAD("unit is not a weight/bias of its op, unit", i);
        for (uint16_t j = 0; j < i; ++j) {
            unit_t v;
            read_unit(p, j, &v);
            if (v.tensor == u.tensor) return BAD("two units address one tensor, unit", i);
        }
        tftr_tensor_t t;
        tftr_read_tensor(p, u.tensor, &t);
        if (u.axis != t.axis || u.n > t.ch || (uint64_t)u.per * t.ch != t.elems) return BAD("unit shape disagrees with its tensor, unit", i);
        if (u.start != running) return BAD("unit values not contiguous, unit", i);
        const uint64_t count = (uint64_t)u.n * u.per;
        running += count;
        if (running > p->trainable_count) return BAD("units exceed w*, unit", i);
        if ((uint64_t)u.ch_off + 2u * u.n > p->data_bytes || !fits(u.val_off, 4u * count, p->data_bytes))
            return BAD("unit arrays outside data, unit", i);
        /* ascending channels whose map entries point at this unit's rows: with the count of
         * mapped channels equal to n, the tensor's map and the unit agree one to one */
        uint32_t prev = 0, mapped = 0;
        for (uint16_t k = 0; k < u.n; ++k) {
            const uint32_t c = tfmb_rd16(data + u.ch_off + 2u * k);
            if (c >= t.ch || (k && c <= prev)) return BAD("unit channels not ascending, unit", i);
            prev = c;
            if ((uint64_t)(uint32_t)tfmb_rd32(data + t.map + 4u * c) != u.start + (uint64_t)k * u.per)
                return BAD("channel map disagrees with unit", i);
        }
        for (uint32_t c = 0; c < t.ch; ++c)
            if (tfmb_rd32(data + t.map + 4u * c) >= 0) ++mapped;
        if (mapped != u.n) return BAD("channel map disagrees with unit", i);
    }
    if (running != p->trainable_count) return BAD0("units do not add up to the trainable count");
    if (first != p->first_trainable_op) return BAD0("first trainable op disagrees with the units");
    /* constants no unit addresses must be entirely frozen */
    for (uint16_t id = 0; id < p->tensor_count; ++id) {
        tftr_tensor_t t;
        tftr_read_tensor(p, id, &t);
        if (t.kind == TFTR_KIND_ACT) continue;
        bool addressed = false;
        for (uint16_t i = 0; i < p->unit_count && !addressed; ++i) {
            unit_t u;
            read_unit(p, i, &u);
            addressed = u.tensor == id;
        }
        if (addressed) continue;
        for (uint32_t c = 0; c < t.ch; ++c)
            if (tfmb_rd32(data + t.map + 4u * c) != -1) return BAD("channel mapped without a unit in tensor", id);
    }
    return true;
}

bool tftr_open(tftr_program_t *p, const uint8_t *blob, uint32_t size, tfmb_error_t *err)
{
    tfmb_error_t scratch;
    if (!err) err = &scratch;
    memset(err, 0, sizeof(*err));
    if (!p) return BAD0("no program struct");
    memset(p, 0, sizeof(*p));
    if (!blob || size < TFTR_HEADER_BYTES) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "program shorter than header", size, true);
    if (memcmp(blob, TFTR_MAGIC, 4) != 0) return BAD0("bad magic (not a TFTR program)");
    const uint16_t version = tfmb_rd16(blob + 4);
    if (version != TFTR_VERSION) return tfmb_fail(err, TFMB_WRONG_VERSION, version, "program version", version, true);
    if (tfmb_rd16(blob + 6) != TFTR_HEADER_BYTES) return BAD0("bad header size");
    if (tfmb_rdu32(blob + 8) != size) return tfmb_fail(err, TFMB_BAD_MODEL, 0, "program size disagrees with header", size, true);
    if (blob[86] || blob[87]) return BAD0("header reserved bytes set");

    tftr_program_t v;
    memset(&v, 0, sizeof(v));
    v.blob = blob;
    v.size = size;
    v.ram_bytes = tfmb_rdu32(blob + 12);
    v.work_bytes = tfmb_rdu32(blob + 16);
    v.trainable_count = tfmb_rdu32(blob + 20);
    v.input_elems = tfmb_rdu32(blob + 24);
    v.classes = tfmb_rdu32(blob + 28);
    v.input_scale = tftr_rdf(blob + 32);
    v.input_zero_point = tfmb_rd32(blob + 36);
    v.op_count = tfmb_rd16(blob + 40);
    v.tensor_count = tfmb_rd16(blob + 42);
    v.unit_count = tfmb_rd16(blob + 44);
    v.first_trainable_op = tfmb_rd16(blob + 46);
    v.tensors_offset = tfmb_rdu32(blob + 48);
    v.ops_offset = tfmb_rdu32(blob + 52);
    v.units_offset = tfmb_rdu32(blob + 56);
    v.data_offset = tfmb_rdu32(blob + 60);
    v.data_bytes = tfmb_rdu32(blob + 64);
    v.flops = tfmb_rdu32(blob + 68);
    v.input_tensor = tfmb_rd16(blob + 72);
    v.output_tensor = tfmb_rd16(blob + 74);
    v.scratch_offset = tfmb_rdu32(blob + 76);
    v.scratch_floats = tfmb_rdu32(blob + 80);
    v.loss = blob[84];
    v.target_kind = blob[85];
    v.target_scale = tftr_rdf(blob + 88);
    v.target_zero_point = tfmb_rd32(blob + 92);

    if (v.tensor_count == 0 || v.tensor_count == TFTR_NONE16 || v.op_count == 0 || v.op_count == TFTR_NONE16 ||
        v.unit_count == TFTR_NONE16)
        return BAD0("no tensors or no ops");
    if (v.tensors_offset != TFTR_HEADER_BYTES ||
        (uint64_t)v.tensors_offset + (uint64_t)v.tensor_count * TFTR_TENSOR_BYTES > v.ops_offset ||
        (uint64_t)v.ops_offset + (uint64_t)v.op_count * TFTR_OP_BYTES > v.units_offset ||
        (uint64_t)v.units_offset + (uint64_t)v.unit_count * TFTR_UNIT_BYTES > v.data_offset || (v.data_offset & (TFTR_ALIGN - 1u)) ||
        (uint64_t)v.data_offset + v.data_bytes != size)
        return BAD0("section table out of range");
    if ((v.work_bytes & 3u) || v.work_bytes > 0x7FFFFFFFu || 12ull * v.trainable_count + v.work_bytes != v.ram_bytes ||
        v.ram_bytes > 0x7FFFFFFFu)
        return BAD0("RAM size disagrees with w* and work area");
    if (!fits(v.scratch_offset, 4ull * v.scratch_floats, v.work_bytes)) return BAD0("scratch row outside work area");
    if (!tftr_in_range(v.input_zero_point, -128, 127)) return BAD0("input zero point out of range");
    if (v.input_tensor >= v.tensor_count || v.output_tensor >= v.tensor_count || v.classes == 0)
        return BAD0("input/output tensor bad");
    if (v.first_trainable_op > v.op_count || (v.unit_count == 0) != (v.first_trainable_op == v.op_count))
        return BAD0("first trainable op out of range");

    for (uint16_t i = 0; i < v.tensor_count; ++i)
        if (!check_tensor(&v, i, err)) return false;
    tftr_tensor_t tin, tout;
    tftr_read_tensor(&v, v.input_tensor, &tin);
    tftr_read_tensor(&v, v.output_tensor, &tout);
    if (!tftr_is_act(&tin) || !tftr_is_act(&tout) || tin.elems != v.input_elems || tout.elems != v.classes)
        return BAD0("input/output tensor bad");
    for (uint16_t i = 0; i < v.op_count; ++i)
        if (!check_op(&v, i, err)) return false;
    tftr_op_t last;
    tftr_tensor_t lin[3], lout;
    memset(lin, 0, sizeof(lin));
    tftr_read_op(&v, (uint16_t)(v.op_count - 1), &last);
    for (int i = 0; i < 3; ++i)
        if (last.in[i] != TFTR_NONE16) tftr_read_tensor(&v, last.in[i], &lin[i]);
    tftr_read_tensor(&v, last.out, &lout);
    const char *loss_problem = tftr_loss_check(&v, &last, lin, &lout);
    if (loss_problem) return BAD0(loss_problem);
    if (!check_units(&v, err)) return false;
    *p = v;
    return true;
}

/* ---- accessors ------------------------------------------------------------------------- */

uint32_t tftr_ram_bytes(const tftr_program_t *p) { return p && p->blob ? p->ram_bytes : 0; }
uint32_t tftr_trainable_count(const tftr_program_t *p) { return p && p->blob ? p->trainable_count : 0; }
uint32_t tftr_input_elems(const tftr_program_t *p) { return p && p->blob ? p->input_elems : 0; }
uint32_t tftr_classes(const tftr_program_t *p) { return p && p->blob ? p->classes : 0; }

uint32_t tftr_target_bytes(const tftr_program_t *p)
{
    if (!p || !p->blob) return 0;
    if (p->target_kind == TFTR_TARGET_CLASS) return 1u;
    return p->target_kind == TFTR_TARGET_REAL ? 4u * p->classes : p->classes;
}
uint32_t tftr_train_flops(const tftr_program_t *p) { return p && p->blob ? p->flops : 0; }

bool tftr_unit_shape(const tftr_program_t *p, uint16_t i, uint32_t *channels, uint32_t *per_channel)
{
    if (!p || !p->blob || i >= p->unit_count) return false;
    unit_t u;
    read_unit(p, i, &u);
    if (channels) *channels = u.n;
    if (per_channel) *per_channel = u.per;
    return true;
}

bool tftr_bind(tftr_program_t *p, uint8_t *ram, uint32_t capacity, tfmb_error_t *err)
{
    if (err) memset(err, 0, sizeof(*err));
    if (!p || !p->blob) return tfmb_fail(err, TFMB_NO_MODEL, 0, "no training program opened", 0, false);
    if (!ram || ((uintptr_t)ram & 3u)) return tfmb_fail(err, TFMB_OUT_OF_MEMORY, 0, "RAM missing or not 4-byte aligned", 0, false);
    if (capacity < p->ram_bytes)
        return tfmb_fail(err, TFMB_OUT_OF_MEMORY, (p->ram_bytes + 1023u) / 1024u, "training RAM bytes needed", p->ram_bytes, true);
    const uint32_t n = p->trainable_count;
    p->values = (float *)(void *)ram;
    p->start = p->values + n;
    p->grad = p->start + n;
    p->work = ram + 12u * n;
    const uint8_t *data = p->blob + p->data_offset;
    for (uint16_t i = 0; i < p->unit_count; ++i) {
        unit_t u;
        read_unit(p, i, &u);
        memcpy(p->values + u.start, data + u.val_off, 4u * u.n * u.per);
    }
    memcpy(p->start, p->values, 4u * n);
    memset(p->grad, 0, 4u * n);
    memset(p->work, 0, p->work_bytes);
    return true;
}

void tftr_mark_start(tftr_program_t *p)
{
    if (p && p->blob && p->values) memcpy(p->start, p->values, 4u * p->trainable_count);
}

void tftr_begin_batch(tftr_program_t *p)
{
    if (p && p->blob && p->grad) memset(p->grad, 0, 4u * p->trainable_count);
}

void tftr_apply(tftr_program_t *p, float lr, uint32_t batch_count)
{
    if (!p || !p->blob || !p->values || batch_count == 0) return;
    const float n = (float)batch_count;
    for (uint32_t i = 0; i < p->trainable_count; ++i) p->values[i] -= lr * (p->grad[i] / n);
}

/* ---- the per-sample pass ---------------------------------------------------------------- */

/* gz = gy * act'(y), in place (the output gradient is not needed afterwards). */
static void act_backward(const tftr_op_t *op, const tftr_tensor_t *out, const tftr_ctx_t *c)
{
    if (op->act == TFTR_ACT_NONE) return;
    const float *y = tftr_val(c, out);
    float *g = tftr_grd(c, out);
    for (uint32_t i = 0; i < out->elems; ++i) {
        const bool pass = op->act == TFTR_ACT_RELU ? y[i] > 0.0f : (y[i] > 0.0f && y[i] < 6.0f);
        if (!pass) g[i] = 0.0f;
    }
}

static void make_ctx(const tftr_program_t *p, tftr_ctx_t *c)
{
    c->data = p->blob + p->data_offset;
    c->values = p->values;
    c->grad = p->grad;
    c->work = p->work;
    c->scratch = (float *)(void *)(p->work + p->scratch_offset);
}

/* Op i, its tensors and its entry (validated: known). */
static const tftr_op_entry_t *load_op(const tftr_program_t *p, uint16_t i, tftr_op_t *op, tftr_tensor_t t[3],
                                      tftr_tensor_t *out)
{
    tftr_read_op(p, i, op);
    for (int k = 0; k < 3; ++k) {
        if (op->in[k] != TFTR_NONE16)
            tftr_read_tensor(p, op->in[k], &t[k]);
        else
            memset(&t[k], 0, sizeof(t[k]));
    }
    tftr_read_tensor(p, op->out, out);
    return tftr_find_op(op->code);
}

/* Dequantizes the input, runs every op; the loss and whether the sample is predicted right. */
static void forward(const tftr_program_t *p, const tftr_ctx_t *c, const int8_t *input, const uint8_t *target,
                    float *loss, uint8_t *correct)
{
    tftr_tensor_t tin;
    tftr_read_tensor(p, p->input_tensor, &tin);
    float *x = tftr_val(c, &tin);
    for (uint32_t i = 0; i < p->input_elems; ++i) x[i] = (float)((int32_t)input[i] - p->input_zero_point) * p->input_scale;
    for (uint16_t i = 0; i < p->op_count; ++i) {
        tftr_op_t op;
        tftr_tensor_t t[3], out;
        load_op(p, i, &op, t, &out)->forward(&op, t, &out, c);
    }
    uint8_t right = 0;
    const float l = tftr_loss_value(p, c, target, &right);
    if (loss) *loss = l;
    if (correct) *correct = right;
}

void tftr_predict(tftr_program_t *p, const int8_t *input, const uint8_t *target, float *loss, uint8_t *correct)
{
    if (!p || !p->blob || !p->work || !input || !target) return;
    tftr_ctx_t c;
    make_ctx(p, &c);
    forward(p, &c, input, target, loss, correct);
}

void tftr_accumulate(tftr_program_t *p, const int8_t *input, const uint8_t *target, float *loss, uint8_t *correct)
{
    if (!p || !p->blob || !p->work || !input || !target) return;
    tftr_ctx_t c;
    make_ctx(p, &c);
    forward(p, &c, input, target, loss, correct);
    for (int32_t i = (int32_t)p->op_count - 1; i >= (int32_t)p->first_trainable_op; --i) {
        tftr_op_t op;
        tftr_tensor_t t[3], out;
        const tftr_op_entry_t *entry = load_op(p, (uint16_t)i, &op, t, &out);
        for (int k = 0; k < 3; ++k) {
            float *g = (op.flags & (1u << k)) ? tftr_grd(&c, &t[k]) : 0;
            if (g) memset(g, 0, 4u * t[k].elems);
        }
        if (i == (int32_t)p->op_count - 1) {
            tftr_loss_backward(p, &c, &op, t, &out, target);
            if (p->loss != TFTR_LOSS_MSE) continue; /* the gradient entered below the last op */
        }
        if (out.goff == TFTR_NONE32) continue;
        act_backward(&op, &out, &c);
        entry->backward(&op, t, &out, &c);
    }
}
