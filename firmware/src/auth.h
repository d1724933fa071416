/* The board's identity and sessions (docs/protocol.md, "Authentication"; docs/security.md).
 *
 * The key page (a flash page of its own, written at provisioning, never served by any command)
 * holds magic "TFK1" | device_id[16] | key[32] | seed[8] | crc32 of the 60 bytes before it. At
 * boot auth_init() checks it and seeds the random generator; HELLO opens a session whose key
 * Ks = HMAC-SHA-256(K, "tinyfed-session-v2" || device_id || host_nonce || board_nonce). The
 * HMAC's inner and outer states of Ks are computed once per session (and Ks wiped), so a tag
 * costs only the blocks of its own message. */
#ifndef TINYFED_AUTH_H
#define TINYFED_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KEYPAGE_MAGIC "TFK1"
#define KEYPAGE_BYTES 64u
#define KEYPAGE_DEVICE_ID_BYTES 16u
#define KEYPAGE_KEY_BYTES 32u
#define KEYPAGE_SEED_BYTES 8u

/* Check the key page and seed the random generator (seed, device id, boot counter, cycles). */
void auth_init(void);
/* True when the key page holds a valid key. */
bool auth_keyed(void);
/* The device id (all zeros on a keyless board): 16 bytes. */
const uint8_t *auth_device_id(void);
/* HELLO: wipe the previous session, draw the board nonce (16 bytes into board_nonce) and, on a
 * keyed board, derive the new session key from the host's nonce. */
void auth_new_session(const uint8_t *host_nonce, uint8_t *board_nonce);
bool auth_has_session(void);
/* A packet's tag: HMAC(Ks, direction || header5 || counter_le || body), all 32 bytes (the wire
 * carries the first PROTO_TAG_BYTES). */
void auth_packet_tag(uint8_t direction, const uint8_t *header5, uint32_t counter, const uint8_t *body,
                     size_t n, uint8_t tag[32]);
/* The update tag: HMAC(Ks, "tinyfed-update-v2" || device_id || version_le || update bytes), the
 * update read a byte at a time from byte_at (it is computed on demand, never held whole). */
void auth_update_tag(uint32_t version, uint8_t (*byte_at)(uint32_t), uint32_t n, uint8_t tag[32]);

#endif
