/* Local training: TRAIN_SET, TRAIN, UPDATE_READ, EVALUATE and STATS (docs/protocol.md).
 *
 * RAM: the training state sits in the tensor arena right after the active fragment's own
 * arena: [fragment arena | tftr state (w*, start, grad, work) | update scales | one sample's
 * target (tftr_target_bytes, 4-aligned: a class byte, labels, reals or the model input)]. It is placed
 * when both a fragment and a program are committed; if it does not fit, TRAIN answers
 * OUT_OF_MEMORY instead of overrunning. w* starts at version 0 = the program's initial values. */
#include "train.h"

#include <math.h>
#include <string.h>

#include "auth.h"
#include "board.h"
#include "engine_glue.h"
#include "local_data.h"
#include "memmap.h"
#include "rng.h"
#include "sha256.h"
#include "shuffle.h"

#define UPDATE_HEADER 24u
#define FLAG_PER_CHANNEL 0x01u
#define FLAG_HEAD_CACHE 0x02u /* keep the fragment's outputs in spare arena RAM after epoch 1 */
#define FLAG_FLOAT_UPDATE 0x04u /* send delta as float32 (the dense FedAvg/FedBuff payload), not int8 */
#define FLAG_DP 0x08u /* differential privacy: clip delta to L2 norm C, add N(0, (sigma C)^2), withhold loss/variance */
#define TRAIN_BASE_BYTES 21u
#define TRAIN_DP_BYTES 29u /* + f32 clip C, f32 noise multiplier sigma */
#define UPDATE_FLAG_FLOAT 0x02u /* update image: elements are float32, no scales */
#define RAM_PAINT 0xA5C3A5C3u

#if defined(TFMB_ENGINE)
#include "tftr.h"
#include "window.h"

/* HMAC(Ks, "tinyfed-update-v2" || device_id || version || update image), made when TRAIN ends and
 * served after the image by UPDATE_READ: the host checks the update is this board's, at its version. */
static uint8_t update_tag[PROTO_UPDATE_TAG_BYTES];
static uint8_t update_byte(uint32_t at);

static struct {
    bool program_ok;      /* a validated program is in the training-program store */
    tftr_program_t prog;
    bool bound;           /* the state is placed in the arena */
    uint32_t bind_status; /* why not bound (status code), 0 when bound or nothing to bind */
    uint32_t rows;        /* total channels of all units (per-channel scales) */
    float *scales;
    uint8_t *target;      /* one sample's target, read by the loss */
    bool weights_ok;      /* w* complete at `version` */
    uint32_t version;
    bool set_open;        /* TRAIN_SET in progress */
    uint32_t set_version;
    win_t set_win;        /* values acknowledged (set_win.next) and held ahead of a gap */
    bool update_ok;       /* values - start is a fresh update */
    uint32_t update_n;
    float update_loss;
    float update_variance;
    uint8_t update_flags;
    uint16_t scale_count;
    /* A DP TRAIN ran on the current local data: EVALUATE and TRAIN without DP are refused until
     * new local data are committed (their answers are not covered by the noise). */
    bool dp_latched;
} ts;

static tfmb_error_t terr;
/* Cycles the frozen fragment took during the current TRAIN (cycles_now() around each run). */
static uint32_t head_cycles;

static uint32_t align8(uint32_t n) { return (n + 7u) & ~7u; }

/* The training state's bytes in the arena: tftr state, update scales, one target. */
static uint32_t state_bytes(void)
{
    return align8(tftr_ram_bytes(&ts.prog)) + 4u * ts.rows + ((tftr_target_bytes(&ts.prog) + 3u) & ~3u);
}

/* Bytes at the arena's start that the sample path uses: the fragment's own arena or, with no
 * fragment committed (the program is the whole model, as FedAvg/FedBuff train it), a buffer
 * for one raw sample, which is then the program's input. */
static uint32_t front_bytes(void)
{
    if (engine_has_model()) {
        return engine_arena_used();
    }
    return ts.program_ok ? tftr_input_elems(&ts.prog) : 0u;
}

static void bind_state(void)
{
    ts.bound = false;
    ts.weights_ok = false;
    ts.update_ok = false;
    ts.set_open = false;
    win_reset(&ts.set_win, 0);  /* no TRAIN_SET chunk of an earlier binding is acknowledged */
    ts.bind_status = 0;
    if (!ts.program_ok) {
        return;
    }
    uint32_t used = align8(front_bytes());
    uint32_t rows = 0;
    for (uint16_t u = 0; u < ts.prog.unit_count; u++) {
        uint32_t ch = 0, per = 0;
        (void)tftr_unit_shape(&ts.prog, u, &ch, &per);
        rows += ch;
    }
    ts.rows = rows;
    uint32_t need = state_bytes();
    if (used > ARENA_BYTES || need > ARENA_BYTES - used) {
        ts.bind_status = ST_OUT_OF_MEMORY;
        return;
    }
    uint8_t *base = ARENA_BASE + used;
    if (!tftr_bind(&ts.prog, base, align8(tftr_ram_bytes(&ts.prog)), &terr)) {
        ts.bind_status = terr.status;
        return;
    }
    ts.scales = (float *)(void *)(base + align8(tftr_ram_bytes(&ts.prog)));
    ts.target = base + align8(tftr_ram_bytes(&ts.prog)) + 4u * rows;
    ts.bound = true;
    ts.weights_ok = true;
    ts.version = 0;
}

void train_init(void)
{
    memset(&ts, 0, sizeof ts);
}

void train_store_invalidate(uint8_t target)
{
    if (target == LOAD_TARGET_PROGRAM) {
        ts.program_ok = false;
        ts.bound = false;
        ts.weights_ok = false;
        ts.update_ok = false;
    } else if (target == LOAD_TARGET_DATA) {
        local_data_invalidate();
    }
}

void train_fragment_changed(void)
{
    bind_state();
}

bool train_commit_program(const uint8_t *blob, uint32_t size, reply_t *r)
{
    if (!tftr_open(&ts.prog, blob, size, &terr)) {
        terr.message[sizeof terr.message - 1u] = '\0';
        return reply_error(r, terr.status, terr.detail, terr.message);
    }
    ts.program_ok = true;
    bind_state();
    if (ts.bind_status == ST_OUT_OF_MEMORY) {
        return reply_error(r, ST_OUT_OF_MEMORY, (uint16_t)(tftr_ram_bytes(&ts.prog) / 1024u),
                           msg_num("training state does not fit the arena; needs bytes ", state_bytes()));
    }
    put_u32(r->payload, state_bytes());
    put_u16(r->payload + 4, ts.prog.unit_count);
    put_u16(r->payload + 6, 0);
    r->length = 8;
    return true;
}

bool train_commit_data(reply_t *r)
{
    const char *err = NULL;
    uint16_t classes = 0;
    uint8_t kind = 0;
    local_data_invalidate();
    ts.dp_latched = false;
    if (!local_data_check(&err, &classes, &kind)) {
        return reply_error(r, ST_NO_DATA, 0, err);
    }
    put_u32(r->payload, local_data_count());
    put_u16(r->payload + 4, classes);
    put_u16(r->payload + 6, kind);
    r->length = 8;
    return true;
}

/* Everything TRAIN and EVALUATE need, or the typed error. */
static bool ready(reply_t *r, uint32_t *count)
{
    const char *err = NULL;
    if (!ts.program_ok) {
        return engine_has_model()
                   ? reply_error(r, ST_NO_MODEL, 1, "no training program: load one (LOAD_BEGIN target 1)")
                   : reply_error(r, ST_NO_MODEL, 0, "no committed fragment and no training program");
    }
    if (!ts.bound) {
        return reply_error(r, ts.bind_status != 0u ? (uint8_t)ts.bind_status : ST_OUT_OF_MEMORY, 0,
                           msg_num("training state does not fit the arena; needs bytes ", state_bytes()));
    }
    uint16_t classes = 0;
    uint8_t kind = 0;
    if (!local_data_check(&err, &classes, &kind)) {
        return reply_error(r, ST_NO_DATA, 0, err);
    }
    if (kind != ts.prog.target_kind) {
        return reply_error(r, ST_NO_DATA, ts.prog.target_kind,
                           msg_num("local targets of another task; program target kind ",
                                   ts.prog.target_kind));
    }
    /* labels and reals: one per output; the autoencoder's output is its input (classes = sample bytes) */
    if (kind != TFTR_TARGET_CLASS && classes != tftr_classes(&ts.prog)) {
        return reply_error(r, ST_NO_DATA, (uint16_t)tftr_classes(&ts.prog),
                           msg_num("local targets per sample differ; program outputs ",
                                   tftr_classes(&ts.prog)));
    }
    if (engine_has_model()) {
        uint32_t in_bytes = 0, out_bytes = 0;
        (void)engine_input(&in_bytes);
        (void)engine_output(&out_bytes);
        if (local_data_sample_bytes() != in_bytes) {
            return reply_error(r, ST_NO_DATA, (uint16_t)in_bytes,
                               msg_num("local samples do not match the fragment input of bytes ", in_bytes));
        }
        if (tftr_input_elems(&ts.prog) != out_bytes) {
            return reply_error(r, ST_BAD_MODEL, (uint16_t)out_bytes,
                               msg_num("training program does not follow this fragment; its output bytes ",
                                       out_bytes));
        }
    } else if (local_data_sample_bytes() != tftr_input_elems(&ts.prog)) {
        return reply_error(r, ST_NO_DATA, (uint16_t)tftr_input_elems(&ts.prog),
                           msg_num("local samples do not match the program input of bytes ",
                                   tftr_input_elems(&ts.prog)));
    }
    *count = local_data_count();
    return true;
}

/* Runs the frozen fragment on local sample `index`; its int8 output is the tail's input (the
 * sample itself when no fragment is committed). The sample's target goes to `target` (an
 * autoencoder's is the sample: copied before the fragment's arena reuses the input). */
static const int8_t *head(uint32_t index, uint8_t *target)
{
    uint32_t size = 0;
    fw_error_t e;
    int8_t *in = engine_has_model() ? (int8_t *)engine_input(&size) : (int8_t *)(void *)ARENA_BASE;
    if (!local_data_sample(index, in, target)) {
        return NULL;
    }
    if (ts.prog.target_kind == TFTR_TARGET_INPUT) {
        memcpy(target, in, tftr_target_bytes(&ts.prog)); /* ready(): the sample's bytes */
    }
    if (!engine_has_model()) {
        return in;
    }
    uint32_t t0 = cycles_now();
    bool ok = engine_invoke(&e);
    head_cycles += cycles_now() - t0;
    if (!ok) {
        return NULL;
    }
    return (const int8_t *)engine_output(&size);
}

/* Raw samples and their features must not outlive the command: wipe the fragment arena. */
static void wipe_arena(void)
{
    memset(ARENA_BASE, 0, front_bytes());
}

static bool cmd_train_set(const uint8_t *p, uint16_t len, reply_t *r)
{
    if (len < 8u || (len - 8u) % 4u != 0u) {
        return reply_error(r, ST_BAD_LENGTH, 8, "TRAIN_SET takes u32 version, u32 offset, f32 values");
    }
    if (!ts.program_ok || !ts.bound) {
        return ready(r, &(uint32_t){0});
    }
    uint32_t version = get_u32(p);
    uint32_t offset = get_u32(p + 4);
    uint32_t n = (len - 8u) / 4u;
    uint32_t total = tftr_trainable_count(&ts.prog);
    if (offset == 0u) {  /* a new version starts (the host sends the first chunk alone) */
        ts.set_open = true;
        ts.set_version = version;
        win_reset(&ts.set_win, 0);
        ts.weights_ok = false;
        ts.update_ok = false;
    } else if (version != ts.set_version
               || !(ts.set_open || (ts.weights_ok && ts.version == version && ts.set_win.next == total))) {
        /* (a chunk resent after w* completed at this version is acknowledged below, as held) */
        return reply_error(r, ST_OUT_OF_ORDER, (uint16_t)ts.set_win.next,
                           msg_num("expected value offset ", ts.set_win.next));
    }
    if (offset > total || n > total - offset) {
        return reply_error(r, ST_BAD_LENGTH, (uint16_t)total, msg_num("w* holds values: ", total));
    }
    win_place_t place = win_place(&ts.set_win, offset, n, PROTO_WINDOW * PROTO_MAX_PAYLOAD / 4u);
    if (place == WIN_REFUSE) {
        return reply_error(r, ST_OUT_OF_ORDER, (uint16_t)ts.set_win.next,
                           msg_num("expected value offset ", ts.set_win.next));
    }
    if (place != WIN_HELD) {
        float *values = ts.prog.values;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t bits = get_u32(p + 8u + 4u * i);
            float v;
            memcpy(&v, &bits, sizeof v);
            if (!isfinite(v)) {
                ts.set_open = false;
                return reply_error(r, ST_BAD_ARGUMENT, (uint16_t)(offset + i), "w* value is not finite");
            }
            values[offset + i] = v;
        }
        if (place == WIN_NEXT) {
            win_took(&ts.set_win, n);
        } else {
            win_hold(&ts.set_win, offset, n);
        }
    }
    if (ts.set_open && ts.set_win.next == total) {
        tftr_mark_start(&ts.prog);
        ts.set_open = false;
        ts.weights_ok = true;
        ts.version = ts.set_version;
    }
    put_u32(r->payload, ts.set_win.next);
    r->length = 4;
    return true;
}

/* Scales and variance of delta = values - start. */
static void finish_update(bool per_channel, bool float_update)
{
    const float *v = ts.prog.values;
    const float *s = ts.prog.start;
    uint32_t total = tftr_trainable_count(&ts.prog);
    float sum = 0.0f;
    for (uint32_t i = 0; i < total; i++) {
        sum += v[i] - s[i];
    }
    float mean = total ? sum / (float)total : 0.0f;
    float sq = 0.0f;
    uint32_t k = 0, row = 0;
    for (uint16_t u = 0; u < ts.prog.unit_count; u++) {
        uint32_t ch = 0, per = 0;
        (void)tftr_unit_shape(&ts.prog, u, &ch, &per);
        float unit_max = 0.0f;
        for (uint32_t c = 0; c < ch; c++) {
            float row_max = 0.0f;
            for (uint32_t j = 0; j < per; j++, k++) {
                float d = v[k] - s[k];
                float a = fabsf(d);
                row_max = a > row_max ? a : row_max;
                sq += (d - mean) * (d - mean);
            }
            unit_max = row_max > unit_max ? row_max : unit_max;
            if (per_channel) {
                ts.scales[row++] = row_max / 127.0f;
            }
        }
        if (!per_channel) {
            ts.scales[row++] = unit_max / 127.0f;
        }
    }
    ts.scale_count = float_update ? 0u : (uint16_t)row;
    ts.update_variance = total ? sq / (float)total : 0.0f;
    ts.update_flags = float_update ? UPDATE_FLAG_FLOAT : (per_channel ? FLAG_PER_CHANNEL : 0u);
}

/* 24-bit uniforms from the board's RNG (rng.h), three bytes each, drawn 48 bytes at a time. */
typedef struct {
    uint8_t buf[48];
    uint32_t at;
} uniform_pool_t;

static uint32_t pool_u24(uniform_pool_t *pool)
{
    if (pool->at + 3u > sizeof pool->buf) {
        rng_fill(pool->buf, sizeof pool->buf);
        pool->at = 0;
    }
    const uint8_t *b = pool->buf + pool->at;
    pool->at += 3u;
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16);
}

/* Clipping margin: the float32 norm (compensated sum) is off by far less than 2^-16 relative, so
 * scaling to C * (1 - 2^-16) keeps every clipped delta within norm C (docs/privacy.md). */
#define DP_CLIP_MARGIN (1.0f - 0x1p-16f)

/* One standard normal by the polar form of Box-Muller (Marsaglia): u, v uniform in (-1, 1) on a
 * 2^-23 grid from 24-bit draws, rejected outside the unit disc (and at its centre), then
 * u * sqrt(-2 ln s / s) and v * the same are two independent normals (the second is kept in *spare). */
static float gaussian(uniform_pool_t *pool, float *spare, bool *has_spare)
{
    if (*has_spare) {
        *has_spare = false;
        return *spare;
    }
    float u, v, s;
    do {
        u = (float)((int32_t)pool_u24(pool) - 0x800000) * 0x1p-23f;
        v = (float)((int32_t)pool_u24(pool) - 0x800000) * 0x1p-23f;
        s = u * u + v * v;
    } while (s >= 1.0f || s == 0.0f);
    float m = sqrtf(-2.0f * logf(s) / s);
    *spare = v * m;
    *has_spare = true;
    return u * m;
}

/* The differential-privacy mechanism (docs/privacy.md): delta = values - start is scaled to L2 norm
 * at most `clip` (sum of squares in float32 with Kahan compensation), then every coordinate gets
 * i.i.d. Gaussian noise of standard deviation noise * clip (gaussian(): float32, uniforms on a 2^-23
 * grid, so |z| < 8; logf/sqrtf add float32 rounding, about 1e-7 relative). The update is then
 * quantized from the noised delta (finish_update). */
static void privatize_update(float clip, float noise)
{
    float *v = ts.prog.values;
    const float *s = ts.prog.start;
    uint32_t total = tftr_trainable_count(&ts.prog);
    float sq = 0.0f, carry = 0.0f;
    for (uint32_t i = 0; i < total; i++) {
        float d = v[i] - s[i];
        float y = d * d - carry;
        float t = sq + y;
        carry = (t - sq) - y;
        sq = t;
    }
    float norm = sqrtf(sq);
    float factor = norm > clip * DP_CLIP_MARGIN ? clip * DP_CLIP_MARGIN / norm : 1.0f;
    float std = noise * clip;
    uniform_pool_t pool = {.at = sizeof pool.buf};
    float spare = 0.0f;
    bool has_spare = false;
    for (uint32_t i = 0; i < total; i++) {
        float z = std > 0.0f ? gaussian(&pool, &spare, &has_spare) : 0.0f;
        v[i] = s[i] + ((v[i] - s[i]) * factor + std * z);
    }
    sha256_wipe(&pool, sizeof pool);
    sha256_wipe(&spare, sizeof spare);
}

static uint32_t update_bytes(void)
{
    uint32_t element = (ts.update_flags & UPDATE_FLAG_FLOAT) ? 4u : 1u;
    return UPDATE_HEADER + 4u * ts.scale_count + element * tftr_trainable_count(&ts.prog);
}

static bool cmd_train(const uint8_t *p, uint16_t len, reply_t *r)
{
    uint32_t count = 0;
    if (len != TRAIN_BASE_BYTES && len != TRAIN_DP_BYTES) {
        return reply_error(r, ST_BAD_LENGTH, TRAIN_BASE_BYTES,
                           "TRAIN takes u32 version, u16 epochs, u16 batch, f32 lr, u32 seed, u32 max_samples, u8 flags"
                           " [, f32 dp clip, f32 dp noise]");
    }
    if (!ready(r, &count)) {
        return false;
    }
    uint32_t version = get_u32(p);
    uint16_t epochs = get_u16(p + 4);
    uint16_t batch = get_u16(p + 6);
    uint32_t lr_bits = get_u32(p + 8);
    float lr;
    memcpy(&lr, &lr_bits, sizeof lr);
    uint32_t seed = get_u32(p + 12);
    uint32_t max_samples = get_u32(p + 16);
    uint8_t flags = p[20];
    if (!ts.weights_ok || version != ts.version) {
        return reply_error(r, ST_WRONG_VERSION, (uint16_t)ts.version,
                           ts.weights_ok ? msg_num("w* is at model version ", ts.version)
                                         : "w* incomplete: finish TRAIN_SET first");
    }
    if (epochs == 0u || batch == 0u || !isfinite(lr) || lr <= 0.0f ||
        (flags & ~(FLAG_PER_CHANNEL | FLAG_HEAD_CACHE | FLAG_FLOAT_UPDATE | FLAG_DP)) != 0u) {
        return reply_error(r, ST_BAD_ARGUMENT, 0, "epochs and batch must be >= 1, lr finite and > 0, flags 0..15");
    }
    bool dp = (flags & FLAG_DP) != 0u;
    float dp_clip = 0.0f, dp_noise = 0.0f;
    if (dp != (len == TRAIN_DP_BYTES)) {
        return reply_error(r, ST_BAD_LENGTH, dp ? TRAIN_DP_BYTES : TRAIN_BASE_BYTES,
                           "the DP flag and the DP parameters (f32 clip, f32 noise) come together");
    }
    if (dp) {
        uint32_t bits = get_u32(p + 21);
        memcpy(&dp_clip, &bits, sizeof dp_clip);
        bits = get_u32(p + 25);
        memcpy(&dp_noise, &bits, sizeof dp_noise);
        if (!isfinite(dp_clip) || dp_clip <= 0.0f || !isfinite(dp_noise) || dp_noise < 0.0f) {
            return reply_error(r, ST_BAD_ARGUMENT, 1, "DP clip must be finite and > 0, noise finite and >= 0");
        }
    } else if (ts.dp_latched) {
        return reply_error(r, ST_BAD_ARGUMENT, 2, "this board trains with differential privacy: TRAIN without it refused");
    }
    uint32_t n = (max_samples != 0u && max_samples < count) ? max_samples : count;
    /* The head cache: the frozen fragment never changes during a TRAIN, so its outputs from the
     * first epoch serve the later ones, if the RAM above the training state holds n targets and
     * n outputs. Opt-in (it is RAM the plan did not budget); wiped with the arena afterwards. */
    uint8_t *cache = NULL;
    uint32_t out_bytes = 0;
    uint32_t tb = tftr_target_bytes(&ts.prog);
    uint32_t cache_at = align8(front_bytes()) + state_bytes();
    uint32_t cache_bytes = 0;
    if ((flags & FLAG_HEAD_CACHE) != 0u && engine_has_model() && epochs > 1u) {
        (void)engine_output(&out_bytes);
        uint64_t need = (uint64_t)n * (tb + out_bytes);
        if (cache_at <= ARENA_BYTES && need <= ARENA_BYTES - cache_at) {
            cache = ARENA_BASE + cache_at;
            cache_bytes = (uint32_t)need;
        }
    }
    /* Every TRAIN starts from w* as set at the version: retraining never compounds. */
    memcpy(ts.prog.values, ts.prog.start, 4u * tftr_trainable_count(&ts.prog));
    float loss_sum = 0.0f;
    uint32_t steps = 0;
    head_cycles = 0;
    cycles_start();
    for (uint32_t e = 0; e < epochs; e++) {
        uint32_t key = shuffle_epoch_key(seed, e);
        for (uint32_t b = 0; b < n; b += batch) {
            uint32_t m = (n - b < batch) ? n - b : batch;
            tftr_begin_batch(&ts.prog);
            for (uint32_t i = 0; i < m; i++) {
                uint32_t idx = shuffle_index(b + i, n, key);
                const uint8_t *target = ts.target;
                const int8_t *x;
                if (cache != NULL && e > 0u) {
                    target = cache + idx * tb;
                    x = (const int8_t *)(cache + n * tb + idx * out_bytes);
                } else {
                    x = head(idx, ts.target);
                    if (x == NULL) {
                        wipe_arena();
                        memset(cache != NULL ? cache : ts.target, 0, cache != NULL ? cache_bytes : tb);
                        return reply_error(r, ST_NO_DATA, (uint16_t)(b + i), "local data sample unreadable");
                    }
                    if (cache != NULL) {
                        memcpy(cache + idx * tb, ts.target, tb);
                        memcpy(cache + n * tb + idx * out_bytes, x, out_bytes);
                    }
                }
                float loss = 0.0f;
                tftr_accumulate(&ts.prog, x, target, &loss, NULL);
                loss_sum += loss;
            }
            tftr_apply(&ts.prog, lr, m);
            steps++;
        }
    }
    uint32_t cycles = cycles_stop();
    wipe_arena();
    memset(ts.target, 0, tb);
    if (cache != NULL) {
        memset(cache, 0, cache_bytes);
    }
    if (dp) {
        privatize_update(dp_clip, dp_noise);
        ts.dp_latched = true;
    }
    finish_update((flags & FLAG_PER_CHANNEL) != 0u, (flags & FLAG_FLOAT_UPDATE) != 0u);
    ts.update_ok = true;
    ts.update_n = n;
    ts.update_loss = loss_sum / (float)(n * (uint32_t)epochs);
    if (dp) { /* withheld: only the noised delta leaves the board (the host computes its variance) */
        ts.update_loss = 0.0f;
        ts.update_variance = 0.0f;
        cycles = 0u;
        head_cycles = 0u;
    }
    loss_sum = 0.0f;
    auth_update_tag(ts.version, update_byte, update_bytes(), update_tag);  /* over the whole image */
    uint8_t *o = r->payload;
    uint32_t bits;
    put_u32(o, ts.version);
    put_u32(o + 4, n);
    put_u32(o + 8, steps);
    memcpy(&bits, &ts.update_loss, 4);
    put_u32(o + 12, bits);
    memcpy(&bits, &ts.update_variance, 4);
    put_u32(o + 16, bits);
    put_u32(o + 20, update_bytes());
    put_u32(o + 24, cycles);
    o[28] = cache != NULL ? 1u : 0u;
    put_u32(o + 29, head_cycles); /* the frozen fragment's share of cycles; the rest is tail + SGD */
    r->length = 33;
    return true;
}

/* One byte of the update image: header | f32 scales | int8 q. */
static uint8_t update_byte(uint32_t at)
{
    uint8_t header[UPDATE_HEADER];
    if (at < UPDATE_HEADER) {
        uint32_t bits;
        put_u32(header, ts.version);
        put_u32(header + 4, ts.update_n);
        memcpy(&bits, &ts.update_loss, 4);
        put_u32(header + 8, bits);
        memcpy(&bits, &ts.update_variance, 4);
        put_u32(header + 12, bits);
        put_u32(header + 16, tftr_trainable_count(&ts.prog));
        put_u16(header + 20, ts.scale_count);
        header[22] = ts.update_flags;
        header[23] = 0;
        return header[at];
    }
    at -= UPDATE_HEADER;
    if (at < 4u * ts.scale_count) {
        uint32_t bits;
        memcpy(&bits, &ts.scales[at / 4u], 4);
        return (uint8_t)(bits >> (8u * (at % 4u)));
    }
    at -= 4u * ts.scale_count;
    if (ts.update_flags & UPDATE_FLAG_FLOAT) {
        float d = ts.prog.values[at / 4u] - ts.prog.start[at / 4u];
        uint32_t bits;
        memcpy(&bits, &d, 4);
        return (uint8_t)(bits >> (8u * (at % 4u)));
    }
    /* Element `at`: find its unit and row for the scale. */
    uint32_t k = 0, row = 0;
    for (uint16_t u = 0; u < ts.prog.unit_count; u++) {
        uint32_t ch = 0, per = 0;
        (void)tftr_unit_shape(&ts.prog, u, &ch, &per);
        if (at < k + ch * per) {
            uint32_t idx = (ts.update_flags & FLAG_PER_CHANNEL) ? row + (at - k) / per : row;
            float scale = ts.scales[idx];
            if (!(scale > 0.0f)) {
                return 0u;
            }
            float q = rintf((ts.prog.values[at] - ts.prog.start[at]) / scale);
            q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
            return (uint8_t)(int8_t)q;
        }
        k += ch * per;
        row += (ts.update_flags & FLAG_PER_CHANNEL) ? ch : 1u;
    }
    return 0u;
}

static bool cmd_update_read(const uint8_t *p, uint16_t len, reply_t *r)
{
    if (len != 6u) {
        return reply_error(r, ST_BAD_LENGTH, 6, "UPDATE_READ takes u32 offset, u16 length");
    }
    if (!ts.bound || !ts.update_ok) {
        return reply_error(r, ST_NO_UPDATE, 0, "no update: TRAIN first");
    }
    uint32_t offset = get_u32(p);
    uint32_t n = get_u16(p + 4);
    uint32_t image = update_bytes();
    uint32_t size = image + PROTO_UPDATE_TAG_BYTES;  /* the image, then its tag */
    if (n > PROTO_MAX_BODY || offset > size || n > size - offset) {
        return reply_error(r, ST_BAD_LENGTH, (uint16_t)size, msg_num("update bytes: ", size));
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t at = offset + i;
        r->payload[i] = at < image ? update_byte(at) : update_tag[at - image];
    }
    r->length = (uint16_t)n;
    return true;
}

/* EVALUATE: u32 n | u32 correct | f32 mean loss | u32 cycles. The loss is the program's (mean
 * cross-entropy, mean binary cross-entropy or mean squared error); correct counts the samples
 * predicted right: argmax = class (classify), every output's p >= 0.5 agrees with its label
 * (multilabel), none for MSE (regress, autoencode: the mean loss is the metric's input). */
static bool cmd_evaluate(const uint8_t *p, uint16_t len, reply_t *r)
{
    uint32_t count = 0;
    if (len != 4u) {
        return reply_error(r, ST_BAD_LENGTH, 4, "EVALUATE takes u32 max_samples");
    }
    if (ts.dp_latched) {
        return reply_error(r, ST_BAD_ARGUMENT, 3, "this board trains with differential privacy: EVALUATE refused");
    }
    if (!ready(r, &count)) {
        return false;
    }
    uint32_t max_samples = get_u32(p);
    uint32_t n = (max_samples != 0u && max_samples < count) ? max_samples : count;
    float loss_sum = 0.0f;
    uint32_t correct = 0;
    cycles_start();
    for (uint32_t i = 0; i < n; i++) {
        uint8_t right = 0;
        const int8_t *x = head(i, ts.target);
        if (x == NULL) {
            wipe_arena();
            memset(ts.target, 0, tftr_target_bytes(&ts.prog));
            return reply_error(r, ST_NO_DATA, (uint16_t)i, "local data sample unreadable");
        }
        float loss = 0.0f;
        tftr_predict(&ts.prog, x, ts.target, &loss, &right);
        loss_sum += loss;
        correct += right;
    }
    uint32_t cycles = cycles_stop();
    wipe_arena();
    memset(ts.target, 0, tftr_target_bytes(&ts.prog));
    float mean = n ? loss_sum / (float)n : 0.0f;
    uint32_t bits;
    memcpy(&bits, &mean, 4);
    put_u32(r->payload, n);
    put_u32(r->payload + 4, correct);
    put_u32(r->payload + 8, bits);
    put_u32(r->payload + 12, cycles);
    r->length = 16;
    return true;
}

static uint32_t training_ram(void)
{
    return ts.bound ? state_bytes() : 0u;
}

#else /* no engine: training commands answer that the firmware cannot train */

void train_init(void) {}
void train_store_invalidate(uint8_t target) { (void)target; }
void train_fragment_changed(void) {}
bool train_commit_program(const uint8_t *blob, uint32_t size, reply_t *r)
{
    (void)blob;
    (void)size;
    return reply_error(r, ST_UNSUPPORTED_OP, 0, "firmware built without the engine");
}
bool train_commit_data(reply_t *r) { return reply_error(r, ST_UNSUPPORTED_OP, 0, "firmware built without the engine"); }
static uint32_t training_ram(void) { return 0u; }
static uint32_t front_bytes(void) { return engine_arena_used(); }

#endif

/* Highest painted-over byte: the first word from `low` upward that lost the paint. */
static uint32_t first_used(const uint32_t *low, const uint32_t *high)
{
    const uint32_t *w = low;
    while (w < high && *w == RAM_PAINT) {
        w++;
    }
    return (uint32_t)((uintptr_t)w - (uintptr_t)low);
}

static uint32_t last_used(const uint32_t *low, const uint32_t *high)
{
    const uint32_t *w = high;
    while (w > low && w[-1] == RAM_PAINT) {
        w--;
    }
    return (uint32_t)((uintptr_t)w - (uintptr_t)low);
}

/* STATS: RAM high-water marks from the paint laid at reset (boards/common/startup.c). */
static bool cmd_stats(uint16_t len, reply_t *r)
{
    if (len != 0u) {
        return reply_error(r, ST_BAD_LENGTH, 0, "STATS takes no payload");
    }
    const uint32_t *stack_low = (const uint32_t *)(void *)__stack_limit;
    const uint32_t *stack_high = (const uint32_t *)(void *)__stack_top;
    uint32_t stack_bytes = (uint32_t)((uintptr_t)__stack_top - (uintptr_t)__stack_limit);
    uint32_t stack_peak = stack_bytes - first_used(stack_low, stack_high);
    uint32_t static_bytes = (uint32_t)((uintptr_t)__bss_end - (uintptr_t)__data_start);
    uint32_t arena_peak = last_used((const uint32_t *)(void *)ARENA_BASE, (const uint32_t *)(void *)__arena_end);
    uint8_t *o = r->payload;
    put_u32(o, stack_bytes);
    put_u32(o + 4, stack_peak);
    put_u32(o + 8, static_bytes);
    put_u32(o + 12, ARENA_BYTES);
    put_u32(o + 16, arena_peak);
    put_u32(o + 20, front_bytes());
    put_u32(o + 24, training_ram());
    put_u32(o + 28, (uint32_t)((uintptr_t)ARENA_BASE - (uintptr_t)__stack_limit));
    r->length = 32;
    return true;
}

void train_execute(uint8_t code, const uint8_t *payload, uint16_t length, reply_t *reply)
{
    switch (code) {
    case CMD_STATS:
        (void)cmd_stats(length, reply);
        break;
#if defined(TFMB_ENGINE)
    case CMD_TRAIN_SET:
        (void)cmd_train_set(payload, length, reply);
        break;
    case CMD_TRAIN:
        (void)cmd_train(payload, length, reply);
        break;
    case CMD_UPDATE_READ:
        (void)cmd_update_read(payload, length, reply);
        break;
    case CMD_EVALUATE:
        (void)cmd_evaluate(payload, length, reply);
        break;
#endif
    default:
        (void)reply_error(reply, ST_UNKNOWN_COMMAND, code, msg_num("unknown command ", code));
        break;
    }
}
