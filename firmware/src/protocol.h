/* tinyfed serial protocol v2 (docs/protocol.md), board side. The host's framing.py is the source of
 * these codes; tests/test_wire_constants.py checks that both sides agree. */
#ifndef TINYFED_PROTOCOL_H
#define TINYFED_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cobs.h"

#define PROTO_VERSION 2u
#define PROTO_KIND_REQUEST 0x01u
#define PROTO_KIND_RESPONSE 0x02u
#define PROTO_HEADER_BYTES 5u        /* version, kind, code, seq u16; the payload length is implied */
#define PROTO_CRC_BYTES 4u           /* CRC-32 (zlib.crc32) of everything before it */
#define PROTO_OVERHEAD (PROTO_HEADER_BYTES + PROTO_CRC_BYTES) /* 9: the shortest packet */
#define PROTO_MAX_PAYLOAD 256u       /* announced in HELLO: the whole payload, counter and tag included */
#define PROTO_MAX_PACKET (PROTO_MAX_PAYLOAD + PROTO_OVERHEAD)
#define PROTO_MAX_ENCODED COBS_MAX_ENCODED(PROTO_MAX_PACKET)
#define PROTO_SEQ_NONE 0xFFFFu
#define PROTO_MESSAGE_MAX 64u

/* Authentication (docs/protocol.md, "Authentication"): request payload = counter u32 | body |
 * tag[16], response payload = body | tag[16]; tag = HMAC-SHA-256(Ks, direction || header5 ||
 * counter_le || body)[:16]. */
#define PROTO_COUNTER_BYTES 4u
#define PROTO_TAG_BYTES 16u
#define PROTO_REQUEST_AUTH_BYTES (PROTO_COUNTER_BYTES + PROTO_TAG_BYTES)
#define PROTO_NONCE_BYTES 16u
#define PROTO_DEVICE_ID_BYTES 16u
#define PROTO_UPDATE_TAG_BYTES 32u
#define PROTO_TAG_REQUEST 0x01u
#define PROTO_TAG_RESPONSE 0x02u
#define PROTO_SESSION_LABEL "tinyfed-session-v2"
#define PROTO_UPDATE_LABEL "tinyfed-update-v2"
#define PROTO_KEY_STATE_KEYED 1u
/* The largest body a command may answer with: the tag follows it. */
#define PROTO_MAX_BODY (PROTO_MAX_PAYLOAD - PROTO_TAG_BYTES)

enum proto_status {
    ST_OK = 0,
    ST_BAD_CRC = 1,
    ST_UNKNOWN_COMMAND = 2,
    ST_FRAGMENT_TOO_LARGE = 3,
    ST_OUT_OF_MEMORY = 4,
    ST_UNSUPPORTED_OP = 5,
    ST_WRONG_VERSION = 6,
    ST_BAD_LENGTH = 7,
    ST_OUT_OF_ORDER = 8,
    ST_NO_MODEL = 9,
    ST_BAD_MODEL = 10,
    ST_FRAME_TOO_LARGE = 11,
    ST_BUSY = 12,
    ST_NO_DATA = 13,
    ST_BAD_ARGUMENT = 14,
    ST_NO_UPDATE = 15,
    ST_AUTH = 16,
};

/* The detail of an ST_AUTH answer (it carries the request's seq and no tag). */
enum proto_auth_detail {
    AUTH_NO_KEY = 1,
    AUTH_NO_SESSION = 2,
    AUTH_BAD_MAC = 3,
    AUTH_REPLAYED_COUNTER = 4,
    AUTH_TOO_SHORT = 5,
};

enum proto_command {
    CMD_HELLO = 0x01,
    CMD_PING = 0x02,
    CMD_RESET = 0x03,
    CMD_LOAD_BEGIN = 0x10,
    CMD_LOAD_CHUNK = 0x11,
    CMD_LOAD_COMMIT = 0x12,
    CMD_INPUT_WRITE = 0x20,
    CMD_INVOKE = 0x21,
    CMD_OUTPUT_READ = 0x22,
    CMD_BENCH = 0x30,
    CMD_STATS = 0x31,
    CMD_PROFILE = 0x32,
    CMD_PROFILE_READ = 0x33,
    CMD_KERNELS = 0x34,
    CMD_TRAIN_SET = 0x40,
    CMD_TRAIN = 0x41,
    CMD_UPDATE_READ = 0x42,
    CMD_EVALUATE = 0x43,
};

/* A response under construction: commands fill payload and set status; on an error the
 * payload is u16 detail + message (see reply_error). */
typedef struct {
    uint8_t status;
    uint16_t length;
    uint8_t payload[PROTO_MAX_PAYLOAD];
} reply_t;

/* Feed one received byte to the frame state machine; complete frames are executed and
 * answered from here. */
void protocol_rx_byte(uint8_t byte);
void protocol_init(void);
/* HELLO opened a session: counters start again (the host's first is 1). */
void protocol_session_opened(void);
/* True once a RESET response has gone out: the main loop resets the board. */
bool protocol_reset_requested(void);

/* Helpers for commands.c */
bool reply_error(reply_t *r, uint8_t status, uint16_t detail, const char *message);
void put_u16(uint8_t *p, uint16_t v);
void put_u32(uint8_t *p, uint32_t v);
uint16_t get_u16(const uint8_t *p);
uint32_t get_u32(const uint8_t *p);

/* Small formatter for first-error strings: "<text><number>" (commands.c, one shared buffer). */
const char *msg_num(const char *text, uint32_t value);

/* commands.c: run one request; returns false when it asked for a reset after replying. */
void commands_init(void);
void commands_execute(uint8_t code, const uint8_t *payload, uint16_t length, reply_t *reply, bool *reset_after);

#endif
