/* Frame receive state machine, packet validation, authentication (HELLO and PING free, every
 * other request tagged under the session key), duplicate replay, responses. */
#include "protocol.h"

#include <string.h>

#include "auth.h"
#include "board.h"
#include "crc32.h"
#include "hmac_sha256.h"

/* Receive side: encoded bytes up to the next delimiter. One byte of slack tells an
 * oversized frame from a maximal one. */
static uint8_t rx_buf[PROTO_MAX_ENCODED + 1u];
static size_t rx_len;
static bool rx_overflow;

/* Transmit side: one packet and its encoding (+ delimiter). */
static uint8_t tx_packet[PROTO_MAX_PACKET];
static uint8_t tx_encoded[PROTO_MAX_ENCODED + 1u];

/* The last executed request and its response, replayed on a duplicate: an authenticated one
 * (same seq and counter, good tag) or an unauthenticated one (same seq and packet CRC). */
static bool last_valid;
static bool last_authenticated;
static uint16_t last_seq;
static uint32_t last_crc;
static uint32_t last_counter;  /* highest counter run in this session (0 after HELLO) */
static uint8_t last_response[PROTO_MAX_PACKET];
static size_t last_response_len;

static reply_t reply;
static bool reset_pending;

void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

bool reply_error(reply_t *r, uint8_t status, uint16_t detail, const char *message)
{
    size_t n = 0;
    r->status = status;
    put_u16(r->payload, detail);
    if (message != NULL) {
        while (message[n] != '\0' && n < PROTO_MESSAGE_MAX) {
            n++;
        }
        memcpy(r->payload + 2, message, n);
    }
    r->length = (uint16_t)(2u + n);
    return false;
}

void protocol_init(void)
{
    rx_len = 0;
    rx_overflow = false;
    last_valid = false;
    last_counter = 0;
    reset_pending = false;
}

void protocol_session_opened(void)
{
    last_counter = 0;
}

bool protocol_reset_requested(void)
{
    return reset_pending;
}

/* Build, encode and send a response packet; returns its length in tx_packet. With `tagged`,
 * the response tag (under the session key, bound to the request's counter) follows the payload. */
static size_t send_packet(uint8_t status, uint16_t seq, const uint8_t *payload, uint16_t length, bool tagged,
                          uint32_t counter)
{
    tx_packet[0] = PROTO_VERSION;
    tx_packet[1] = PROTO_KIND_RESPONSE;
    tx_packet[2] = status;
    put_u16(tx_packet + 3, seq);
    if (length > 0u) {
        memcpy(tx_packet + PROTO_HEADER_BYTES, payload, length);
    }
    size_t n = PROTO_HEADER_BYTES + length;
    if (tagged) {
        uint8_t tag[HMAC_SHA256_TAG_BYTES];
        auth_packet_tag(PROTO_TAG_RESPONSE, tx_packet, counter, payload, length, tag);
        memcpy(tx_packet + n, tag, PROTO_TAG_BYTES);
        n += PROTO_TAG_BYTES;
    }
    put_u32(tx_packet + n, crc32_update(0, tx_packet, n));
    n += PROTO_CRC_BYTES;
    size_t enc = cobs_encode(tx_packet, n, tx_encoded, sizeof tx_encoded - 1u);
    tx_encoded[enc] = 0x00;
    board_uart_write(tx_encoded, enc + 1u);
    return n;
}

static size_t send_response(uint8_t status, uint16_t seq, const uint8_t *payload, uint16_t length)
{
    return send_packet(status, seq, payload, length, false, 0);
}

static void send_raw_packet(const uint8_t *packet, size_t n)
{
    size_t enc = cobs_encode(packet, n, tx_encoded, sizeof tx_encoded - 1u);
    tx_encoded[enc] = 0x00;
    board_uart_write(tx_encoded, enc + 1u);
}

static void send_frame_error(uint8_t status, const char *message)
{
    reply_error(&reply, status, 0, message);
    (void)send_response(reply.status, PROTO_SEQ_NONE, reply.payload, reply.length);
}

/* A header is "readable" when it has the request layout of this protocol version. */
static bool header_readable(const uint8_t *p, size_t n)
{
    return n >= PROTO_HEADER_BYTES && p[0] == PROTO_VERSION && p[1] == PROTO_KIND_REQUEST;
}

static void handle_frame(uint8_t *buf, size_t enc_len, bool overflow)
{
    size_t n = 0;
    if (overflow) {
        /* Decode what was kept (a prefix) only to see whether the header was readable. */
        size_t keep = enc_len;
        while (keep > 0u && !cobs_decode_inplace(buf, keep, &n)) {
            keep--;  /* the prefix may end inside a run: shorten until it decodes */
        }
        if (keep > 0u && header_readable(buf, n)) {
            send_frame_error(ST_FRAME_TOO_LARGE, "frame longer than max_payload");
        }
        return;
    }
    if (!cobs_decode_inplace(buf, enc_len, &n)) {
        return;  /* not COBS: silence, the next delimiter resynchronises */
    }
    if (!header_readable(buf, n)) {
        /* Another protocol version with an intact CRC gets WRONG_VERSION; else drop. */
        if (n >= PROTO_OVERHEAD && buf[0] != PROTO_VERSION && buf[1] == PROTO_KIND_REQUEST &&
            crc32_update(0, buf, n - 4u) == get_u32(buf + n - 4u)) {
            reply_error(&reply, ST_WRONG_VERSION, PROTO_VERSION, "protocol version 2 only");
            (void)send_response(reply.status, get_u16(buf + 3), reply.payload, reply.length);
        }
        return;
    }
    if (n < PROTO_OVERHEAD) {
        send_frame_error(ST_BAD_LENGTH, "frame shorter than 9 bytes");
        return;
    }
    if (n > PROTO_MAX_PACKET) {
        send_frame_error(ST_FRAME_TOO_LARGE, "frame longer than max_payload");
        return;
    }
    if (crc32_update(0, buf, n - PROTO_CRC_BYTES) != get_u32(buf + n - PROTO_CRC_BYTES)) {
        send_frame_error(ST_BAD_CRC, "frame CRC mismatch");
        return;
    }
    uint8_t code = buf[2];
    uint16_t seq = get_u16(buf + 3);
    uint16_t length = (uint16_t)(n - PROTO_OVERHEAD);  /* implied by the frame size */
    const uint8_t *payload = buf + PROTO_HEADER_BYTES;
    bool authenticated = code != CMD_HELLO && code != CMD_PING;
    uint32_t counter = 0;
    if (!authenticated) {
        uint32_t crc = get_u32(buf + n - PROTO_CRC_BYTES);
        if (last_valid && !last_authenticated && seq == last_seq && crc == last_crc) {
            send_raw_packet(last_response, last_response_len);  /* duplicate: replay, no re-run */
            return;
        }
        last_crc = crc;
    } else {
        /* Key, session, length, tag (constant time), then freshness: an authentic retransmission
         * replays, an old counter is refused. A refusal is untagged and changes nothing. */
        uint16_t refuse = 0;
        static const char *const why[] = {
            "", "no device key: provision this board", "no session: say HELLO first",
            "request tag does not verify", "counter not above the last one", "payload shorter than counter and tag",
        };
        if (!auth_keyed()) {
            refuse = AUTH_NO_KEY;
        } else if (!auth_has_session()) {
            refuse = AUTH_NO_SESSION;
        } else if (length < PROTO_REQUEST_AUTH_BYTES) {
            refuse = AUTH_TOO_SHORT;
        } else {
            uint8_t tag[HMAC_SHA256_TAG_BYTES];
            uint16_t body = (uint16_t)(length - PROTO_REQUEST_AUTH_BYTES);
            counter = get_u32(payload);
            auth_packet_tag(PROTO_TAG_REQUEST, buf, counter, payload + PROTO_COUNTER_BYTES, body, tag);
            if (!hmac_sha256_equal(tag, payload + PROTO_COUNTER_BYTES + body, PROTO_TAG_BYTES)) {
                refuse = AUTH_BAD_MAC;
            } else if (last_valid && last_authenticated && seq == last_seq && counter == last_counter) {
                send_raw_packet(last_response, last_response_len);  /* authentic retransmission */
                return;
            } else if (counter <= last_counter) {
                refuse = AUTH_REPLAYED_COUNTER;
            }
            sha256_wipe(tag, sizeof tag);
        }
        if (refuse != 0u) {
            reply_error(&reply, ST_AUTH, refuse, why[refuse]);
            (void)send_response(reply.status, seq, reply.payload, reply.length);
            return;
        }
        last_counter = counter;
        payload += PROTO_COUNTER_BYTES;
        length = (uint16_t)(length - PROTO_REQUEST_AUTH_BYTES);
    }
    bool reset_after = false;
    reply.status = ST_OK;
    reply.length = 0;
    commands_execute(code, payload, length, &reply, &reset_after);
    if (authenticated && reply.length > PROTO_MAX_BODY) {
        reply_error(&reply, ST_BAD_LENGTH, PROTO_MAX_BODY, "response body longer than max_payload less the tag");
    }
    size_t sent = send_packet(reply.status, seq, reply.payload, reply.length, authenticated, counter);
    memcpy(last_response, tx_packet, sent);
    last_response_len = sent;
    last_seq = seq;
    last_authenticated = authenticated;
    last_valid = true;
    if (reset_after) {
        reset_pending = true;
    }
}

void protocol_rx_byte(uint8_t byte)
{
    if (byte == 0x00u) {
        if (rx_len > 0u || rx_overflow) {
            handle_frame(rx_buf, rx_len, rx_overflow);
        }
        rx_len = 0;
        rx_overflow = false;
        return;
    }
    if (rx_len < sizeof rx_buf) {
        rx_buf[rx_len++] = byte;
    } else {
        rx_overflow = true;  /* count on to the delimiter, keep nothing more */
    }
}
