/* Request dispatch: HELLO, PING, RESET, LOAD_BEGIN/CHUNK/COMMIT (two flash slots, atomic
 * activation), INPUT_WRITE, INVOKE, OUTPUT_READ, BENCH; PROFILE, PROFILE_READ and KERNELS in
 * profile.c, the training commands in train.c. */
#include <string.h>

#include "auth.h"
#include "bench.h"
#include "board.h"
#include "crc32.h"
#include "engine_glue.h"
#include "memmap.h"
#include "profile.h"
#include "protocol.h"
#include "train.h"
#include "window.h"

#ifndef FW_VERSION
#define FW_VERSION "0.1.0"
#endif
#ifndef BOARD_CLOCK_HZ
#define BOARD_CLOCK_HZ 0u
#endif

/* A transfer into a flash store: the inactive fragment slot (target 0), the training-program
 * store (1) or the local-data store (2). */
static struct {
    bool open;
    uint8_t target;      /* LOAD_TARGET_* */
    uint8_t slot;        /* 0 = A, 1 = B (target 0) */
    uint32_t size;
    uint32_t crc;
    win_t win;           /* win.next = bytes acknowledged; chunks held ahead of a gap */
    uint32_t erased_to;  /* bytes of the slot erased so far (whole pages) */
    uint8_t stage[4];    /* bytes not yet programmed (flash takes whole words) */
    uint8_t staged;
} xfer;

static int8_t active_slot = -1;  /* -1: no committed fragment */
static char msg[PROTO_MESSAGE_MAX + 1u];

static uint8_t *slot_base(uint8_t slot)
{
    return slot == 0u ? __slot_a : __slot_b;
}

/* Where the current transfer writes, and how much it may write. */
static uint8_t *xfer_base(void)
{
    if (xfer.target == LOAD_TARGET_PROGRAM) {
        return __train_region;
    }
    if (xfer.target == LOAD_TARGET_DATA) {
        return __data_region;
    }
    return slot_base(xfer.slot);
}

static uint32_t target_capacity(uint8_t target)
{
    return target == LOAD_TARGET_PROGRAM ? TRAIN_REGION_BYTES
         : target == LOAD_TARGET_DATA    ? DATA_REGION_BYTES
                                         : SLOT_BYTES;
}

/* Small formatter for first-error strings: "<text><number>". */
const char *msg_num(const char *text, uint32_t value)
{
    size_t n = 0;
    while (text[n] != '\0' && n < PROTO_MESSAGE_MAX - 10u) {
        msg[n] = text[n];
        n++;
    }
    char digits[10];
    size_t d = 0;
    do {
        digits[d++] = (char)('0' + value % 10u);
        value /= 10u;
    } while (value != 0u && d < sizeof digits);
    while (d > 0u) {
        msg[n++] = digits[--d];
    }
    msg[n] = '\0';
    return msg;
}

static bool ensure_erased(uint32_t end, const char **err)
{
    uint32_t page = board_flash_page_bytes();
    while (xfer.erased_to < end) {
        uint32_t addr = (uint32_t)(uintptr_t)xfer_base() + xfer.erased_to;
        if (!board_flash_erase(addr, page, err)) {
            return false;
        }
        xfer.erased_to += page;
    }
    return true;
}

static bool program(uint32_t offset, const uint8_t *data, uint32_t len, const char **err)
{
    if (!ensure_erased(offset + len, err)) {
        return false;
    }
    return board_flash_write((uint32_t)(uintptr_t)xfer_base() + offset, data, len, err);
}

static bool cmd_hello(const uint8_t *p, uint16_t len, reply_t *r)
{
    if (len != 1u + PROTO_NONCE_BYTES) {
        return reply_error(r, ST_BAD_LENGTH, 1u + PROTO_NONCE_BYTES, "HELLO takes u8 host_version, 16-byte host_nonce");
    }
    if (p[0] != PROTO_VERSION) {
        return reply_error(r, ST_WRONG_VERSION, PROTO_VERSION, "board speaks protocol version 2");
    }
    static const char build[] = "tinyfed-fw " FW_VERSION
#if defined(TFMB_ENGINE)
        " engine";
#else
        " no-engine";
#endif
    uint8_t *o = r->payload;
    o[0] = PROTO_VERSION;
    o[1] = PROTO_WINDOW;  /* request frames the host may have in flight (0: stop-and-wait) */
    put_u16(o + 2, PROTO_MAX_PAYLOAD);
    put_u32(o + 4, SLOT_BYTES);
    put_u32(o + 8, ARENA_BYTES);
    put_u32(o + 12, FW_RAM_BYTES);
    put_u32(o + 16, FW_FLASH_BYTES);
    size_t n = 20;
    size_t id_len = strlen(board_id);
    o[n++] = (uint8_t)id_len;
    memcpy(o + n, board_id, id_len);
    n += id_len;
    o[n++] = (uint8_t)(sizeof build - 1u);
    memcpy(o + n, build, sizeof build - 1u);
    n += sizeof build - 1u;
    put_u32(o + n, TRAIN_REGION_BYTES);
    put_u32(o + n + 4u, DATA_REGION_BYTES);
    n += 8u;
    /* v2: device_id | board_nonce | key_state; the new session replaces the previous one. */
    memcpy(o + n, auth_device_id(), PROTO_DEVICE_ID_BYTES);
    n += PROTO_DEVICE_ID_BYTES;
    auth_new_session(p + 1, o + n);
    protocol_session_opened();
    n += PROTO_NONCE_BYTES;
    o[n++] = auth_keyed() ? PROTO_KEY_STATE_KEYED : 0u;
    r->length = (uint16_t)n;
    return true;
}

static bool cmd_load_begin(const uint8_t *p, uint16_t len, reply_t *r)
{
    if (len != 8u && len != 9u) {
        return reply_error(r, ST_BAD_LENGTH, 8, "LOAD_BEGIN takes u32 size, u32 crc32 [, u8 target]");
    }
    uint32_t size = get_u32(p);
    uint32_t crc = get_u32(p + 4);
    uint8_t target = len == 9u ? p[8] : LOAD_TARGET_FRAGMENT;
    if (target > LOAD_TARGET_DATA) {
        return reply_error(r, ST_BAD_ARGUMENT, target, "target must be 0 (fragment), 1 (training program) or 2 (data)");
    }
    uint32_t capacity = target_capacity(target);
    if (size > capacity) {
        return reply_error(r, ST_FRAGMENT_TOO_LARGE, (uint16_t)(capacity / 1024u),
                           msg_num(target == LOAD_TARGET_FRAGMENT ? "fragment larger than a slot of bytes: "
                                   : "image larger than its store of bytes: ", capacity));
    }
    if (size == 0u) {
        return reply_error(r, ST_BAD_LENGTH, 0, "empty fragment");
    }
    if (!(xfer.open && xfer.target == target && xfer.size == size && xfer.crc == crc)) {
        xfer.open = true;
        xfer.target = target;
        xfer.slot = (active_slot == 0) ? 1u : 0u;  /* never the active slot */
        xfer.size = size;
        xfer.crc = crc;
        win_reset(&xfer.win, 0);
        xfer.erased_to = 0;
        xfer.staged = 0;
        train_store_invalidate(target);
    }
    put_u32(r->payload, xfer.win.next);
    r->length = 4;
    return true;
}

/* A chunk past a gap goes straight to flash: it must start on a word, and end on one unless it
 * ends the transfer (its last word is padded with erased bytes, as LOAD_COMMIT pads the staged one). */
static bool load_ahead(uint32_t offset, const uint8_t *data, uint32_t n, reply_t *r)
{
    const char *err = NULL;
    if (offset % 4u != 0u || (n % 4u != 0u && offset + n != xfer.size)) {
        return reply_error(r, ST_OUT_OF_ORDER, (uint16_t)xfer.win.next, "a chunk past a gap must be word aligned");
    }
    uint32_t whole = n & ~3u;
    if (whole != 0u && !program(offset, data, whole, &err)) {
        return reply_error(r, ST_BAD_MODEL, 0, err);
    }
    if (whole != n) {
        uint8_t last[4] = {0xFFu, 0xFFu, 0xFFu, 0xFFu};
        memcpy(last, data + whole, n - whole);
        if (!program(offset + whole, last, 4, &err)) {
            return reply_error(r, ST_BAD_MODEL, 0, err);
        }
    }
    win_hold(&xfer.win, offset, n);
    put_u32(r->payload, xfer.win.next);
    r->length = 4;
    return true;
}

static bool cmd_load_chunk(const uint8_t *p, uint16_t len, reply_t *r)
{
    const char *err = NULL;
    if (len < 4u) {
        return reply_error(r, ST_BAD_LENGTH, 4, "LOAD_CHUNK takes u32 offset, then data");
    }
    if (!xfer.open) {
        return reply_error(r, ST_OUT_OF_ORDER, 0, "no transfer: send LOAD_BEGIN first");
    }
    uint32_t offset = get_u32(p);
    const uint8_t *data = p + 4;
    uint32_t n = (uint32_t)len - 4u;
    if (offset > xfer.size || n > xfer.size - offset) {
        return reply_error(r, ST_BAD_LENGTH, (uint16_t)(xfer.size - xfer.win.next), "data past the fragment size");
    }
    switch (win_place(&xfer.win, offset, n, PROTO_WINDOW * PROTO_MAX_PAYLOAD)) {
    case WIN_HELD:  /* a retransmission of what is held: acknowledge, write nothing */
        put_u32(r->payload, xfer.win.next);
        r->length = 4;
        return true;
    case WIN_AHEAD:
        return load_ahead(offset, data, n, r);
    case WIN_REFUSE:
        return reply_error(r, ST_OUT_OF_ORDER, (uint16_t)xfer.win.next, msg_num("expected offset ", xfer.win.next));
    case WIN_NEXT:
        break;
    }
    uint32_t word_at = xfer.win.next - xfer.staged;  /* always a multiple of 4 */
    uint32_t i = 0;
    while (xfer.staged != 0u && i < n) {
        xfer.stage[xfer.staged++] = data[i++];
        if (xfer.staged == 4u) {
            if (!program(word_at, xfer.stage, 4, &err)) {
                return reply_error(r, ST_BAD_MODEL, 0, err);
            }
            word_at += 4u;
            xfer.staged = 0;
        }
    }
    uint32_t whole = (n - i) & ~3u;
    if (whole != 0u) {
        if (!program(word_at, data + i, whole, &err)) {
            return reply_error(r, ST_BAD_MODEL, 0, err);
        }
        i += whole;
    }
    while (i < n) {
        xfer.stage[xfer.staged++] = data[i++];
    }
    win_took(&xfer.win, n);
    put_u32(r->payload, xfer.win.next);
    r->length = 4;
    return true;
}

static bool cmd_load_commit(uint16_t len, reply_t *r)
{
    const char *err = NULL;
    if (len != 0u) {
        return reply_error(r, ST_BAD_LENGTH, 0, "LOAD_COMMIT takes no payload");
    }
    if (!xfer.open) {
        return reply_error(r, ST_OUT_OF_ORDER, 0, "no transfer: send LOAD_BEGIN first");
    }
    if (xfer.win.next != xfer.size) {
        return reply_error(r, ST_OUT_OF_ORDER, (uint16_t)xfer.win.next,
                           msg_num("incomplete: have bytes ", xfer.win.next));
    }
    if (xfer.staged != 0u) {
        uint32_t word_at = xfer.win.next - xfer.staged;
        while (xfer.staged < 4u) {
            xfer.stage[xfer.staged++] = 0xFFu;
        }
        if (!program(word_at, xfer.stage, 4, &err)) {
            xfer.open = false;
            return reply_error(r, ST_BAD_MODEL, 0, err);
        }
        xfer.staged = 0;
    }
    xfer.open = false;  /* whatever happens next, a new LOAD_BEGIN starts over */
    const uint8_t *blob = xfer_base();
    if (crc32_update(0, blob, xfer.size) != xfer.crc) {
        return reply_error(r, ST_BAD_CRC, 0, "fragment CRC-32 mismatch");
    }
    if (xfer.target == LOAD_TARGET_PROGRAM) {
        return train_commit_program(blob, xfer.size, r);
    }
    if (xfer.target == LOAD_TARGET_DATA) {
        return train_commit_data(r);
    }
    uint32_t arena_bytes = 0;
    uint16_t op_count = 0;
    fw_error_t e;
    if (!engine_prepare(blob, xfer.size, ARENA_BASE, ARENA_BYTES, &arena_bytes, &op_count, &e)) {
        return reply_error(r, e.status, e.detail, e.message);
    }
    engine_activate();
    profile_forget();
    active_slot = (int8_t)xfer.slot;  /* the one-step switch */
    train_fragment_changed();
    put_u32(r->payload, arena_bytes);
    put_u16(r->payload + 4, op_count);
    put_u16(r->payload + 6, 0);
    r->length = 8;
    return true;
}

static bool cmd_input_write(const uint8_t *p, uint16_t len, reply_t *r)
{
    if (len < 4u) {
        return reply_error(r, ST_BAD_LENGTH, 4, "INPUT_WRITE takes u32 offset, then bytes");
    }
    if (active_slot < 0 || !engine_has_model()) {
        return reply_error(r, ST_NO_MODEL, 0, "no committed fragment");
    }
    uint32_t size = 0;
    uint8_t *input = engine_input(&size);
    uint32_t offset = get_u32(p);
    uint32_t n = (uint32_t)len - 4u;
    if (offset > size || n > size - offset) {
        return reply_error(r, ST_BAD_LENGTH, (uint16_t)size, msg_num("input tensor bytes: ", size));
    }
    memcpy(input + offset, p + 4, n);
    put_u32(r->payload, offset + n);
    r->length = 4;
    return true;
}

static bool cmd_invoke(uint16_t len, reply_t *r)
{
    if (len != 0u) {
        return reply_error(r, ST_BAD_LENGTH, 0, "INVOKE takes no payload");
    }
    if (active_slot < 0 || !engine_has_model()) {
        return reply_error(r, ST_NO_MODEL, 0, "no committed fragment");
    }
    fw_error_t e;
    cycles_start();
    bool ok = engine_invoke(&e);
    uint32_t cycles = cycles_stop();
    if (!ok) {
        return reply_error(r, e.status, e.detail, e.message);
    }
    uint32_t size = 0;
    const uint8_t *out = engine_output(&size);
    uint32_t first = size < PROTO_MAX_BODY - 8u ? size : PROTO_MAX_BODY - 8u;
    put_u32(r->payload, cycles);
    put_u32(r->payload + 4, size);
    memcpy(r->payload + 8, out, first);
    r->length = (uint16_t)(8u + first);
    return true;
}

static bool cmd_output_read(const uint8_t *p, uint16_t len, reply_t *r)
{
    if (len != 6u) {
        return reply_error(r, ST_BAD_LENGTH, 6, "OUTPUT_READ takes u32 offset, u16 length");
    }
    if (active_slot < 0 || !engine_has_model()) {
        return reply_error(r, ST_NO_MODEL, 0, "no committed fragment");
    }
    uint32_t size = 0;
    const uint8_t *out = engine_output(&size);
    uint32_t offset = get_u32(p);
    uint32_t n = get_u16(p + 4);
    if (n > PROTO_MAX_BODY || offset > size || n > size - offset) {
        return reply_error(r, ST_BAD_LENGTH, (uint16_t)size, msg_num("output tensor bytes: ", size));
    }
    memcpy(r->payload, out + offset, n);
    r->length = (uint16_t)n;
    return true;
}

static bool cmd_bench(const uint8_t *p, uint16_t len, reply_t *r)
{
    uint16_t repeats = BENCH_DEFAULT_REPEATS;
    if (len == 2u) {
        repeats = get_u16(p);
    } else if (len != 0u) {
        return reply_error(r, ST_BAD_LENGTH, 2, "BENCH takes nothing or u16 repeats");
    }
    if (repeats == 0u || repeats > BENCH_MAX_REPEATS) {
        return reply_error(r, ST_BAD_LENGTH, BENCH_MAX_REPEATS, "repeats must be 1..4096");
    }
    bench_result_t b;
    bench_run(repeats, &b);
    uint8_t *o = r->payload;
    put_u32(o + 0, b.int8_macs);
    put_u32(o + 4, b.int8_cycles);
    put_u32(o + 8, b.fp32_flops);
    put_u32(o + 12, b.fp32_cycles);
    put_u32(o + 16, BOARD_CLOCK_HZ);
    o[20] = cycles_is_dwt() ? 1u : 2u;  /* 1 = DWT CYCCNT, 2 = SysTick at the core clock */
    o[21] = 0;
    put_u16(o + 22, repeats);
    r->length = 24;
    return true;
}

void commands_init(void)
{
    memset(&xfer, 0, sizeof xfer);
    active_slot = -1;
    train_init();
}

void commands_execute(uint8_t code, const uint8_t *payload, uint16_t length, reply_t *reply, bool *reset_after)
{
    switch (code) {
    case CMD_HELLO:
        (void)cmd_hello(payload, length, reply);
        break;
    case CMD_PING:
        memcpy(reply->payload, payload, length);
        reply->length = length;
        break;
    case CMD_RESET:
        if (length != 0u) {
            (void)reply_error(reply, ST_BAD_LENGTH, 0, "RESET takes no payload");
        } else {
            *reset_after = true;
        }
        break;
    case CMD_LOAD_BEGIN:
        (void)cmd_load_begin(payload, length, reply);
        break;
    case CMD_LOAD_CHUNK:
        (void)cmd_load_chunk(payload, length, reply);
        break;
    case CMD_LOAD_COMMIT:
        (void)cmd_load_commit(length, reply);
        break;
    case CMD_INPUT_WRITE:
        (void)cmd_input_write(payload, length, reply);
        break;
    case CMD_INVOKE:
        (void)cmd_invoke(length, reply);
        break;
    case CMD_OUTPUT_READ:
        (void)cmd_output_read(payload, length, reply);
        break;
    case CMD_BENCH:
        (void)cmd_bench(payload, length, reply);
        break;
    case CMD_PROFILE:
        (void)profile_cmd(active_slot >= 0, payload, length, reply);
        break;
    case CMD_PROFILE_READ:
        (void)profile_read_cmd(payload, length, reply);
        break;
    case CMD_KERNELS:
        (void)kernels_cmd(payload, length, reply);
        break;
    default:
        train_execute(code, payload, length, reply);
        break;
    }
}
