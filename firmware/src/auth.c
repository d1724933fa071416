/* Key page, board RNG seeding and the session's MAC states (auth.h). */
#include "auth.h"

#include <string.h>

#include "board.h"
#include "crc32.h"
#include "hmac_sha256.h"
#include "protocol.h"
#include "rng.h"

/* The key page, placed by boards/common/sections.ld on a flash page of its own. */
extern const uint8_t __tinyfed_key_page[];

/* Incremented at every boot; in .noinit, so it survives a RESET (not a power cycle or a fresh
 * emulator launch) and makes each boot's generator state differ. */
static uint32_t boot_counter __attribute__((section(".noinit")));

static bool keyed;
static const uint8_t *key_id;    /* in flash: device id, then key */
static const uint8_t zero_id[KEYPAGE_DEVICE_ID_BYTES];
/* The session: the SHA-256 chaining states after Ks ^ ipad and Ks ^ opad (one block each), kept
 * instead of two whole contexts (64 bytes, not 224, of the firmware's RAM); every tag starts from
 * copies of them. */
static uint32_t session_inner[8];
static uint32_t session_outer[8];
static bool session_open;

/* A context for one tag: the session's keyed states, one block absorbed each. */
static void session_ctx(hmac_sha256_ctx *c)
{
    memset(c, 0, sizeof *c);
    memcpy(c->inner.state, session_inner, sizeof session_inner);
    memcpy(c->outer.state, session_outer, sizeof session_outer);
    c->inner.total = SHA256_BLOCK_BYTES;
    c->outer.total = SHA256_BLOCK_BYTES;
}

void auth_init(void)
{
    const uint8_t *page = __tinyfed_key_page;
    uint32_t crc = get_u32(page + KEYPAGE_BYTES - 4u);
    keyed = memcmp(page, KEYPAGE_MAGIC, 4) == 0 && crc32_update(0, page, KEYPAGE_BYTES - 4u) == crc;
    key_id = keyed ? page + 4 : zero_id;
    session_open = false;
    if (keyed) {
        rng_seed(page + 4u + KEYPAGE_DEVICE_ID_BYTES + KEYPAGE_KEY_BYTES, KEYPAGE_SEED_BYTES);
        rng_seed(key_id, KEYPAGE_DEVICE_ID_BYTES);
    }
    boot_counter++;
    uint32_t mix[2] = {boot_counter, cycles_now()};
    rng_seed(mix, sizeof mix);
}

bool auth_keyed(void)
{
    return keyed;
}

const uint8_t *auth_device_id(void)
{
    return key_id;
}

bool auth_has_session(void)
{
    return session_open;
}

void auth_new_session(const uint8_t *host_nonce, uint8_t *board_nonce)
{
    sha256_wipe(session_inner, sizeof session_inner);
    sha256_wipe(session_outer, sizeof session_outer);
    session_open = false;
    rng_fill(board_nonce, PROTO_NONCE_BYTES);
    if (!keyed) {
        return;
    }
    uint8_t ks[HMAC_SHA256_TAG_BYTES];
    hmac_sha256_ctx derive;
    hmac_sha256_init(&derive, key_id + KEYPAGE_DEVICE_ID_BYTES, KEYPAGE_KEY_BYTES);
    hmac_sha256_update(&derive, PROTO_SESSION_LABEL, sizeof PROTO_SESSION_LABEL - 1u);
    hmac_sha256_update(&derive, key_id, KEYPAGE_DEVICE_ID_BYTES);
    hmac_sha256_update(&derive, host_nonce, PROTO_NONCE_BYTES);
    hmac_sha256_update(&derive, board_nonce, PROTO_NONCE_BYTES);
    hmac_sha256_final(&derive, ks);  /* wipes derive */
    hmac_sha256_init(&derive, ks, sizeof ks);
    memcpy(session_inner, derive.inner.state, sizeof session_inner);
    memcpy(session_outer, derive.outer.state, sizeof session_outer);
    sha256_wipe(&derive, sizeof derive);
    sha256_wipe(ks, sizeof ks);
    session_open = true;
}

void auth_packet_tag(uint8_t direction, const uint8_t *header5, uint32_t counter, const uint8_t *body,
                     size_t n, uint8_t tag[32])
{
    hmac_sha256_ctx c;
    session_ctx(&c);
    uint8_t lead[1u + PROTO_HEADER_BYTES + PROTO_COUNTER_BYTES];
    lead[0] = direction;
    memcpy(lead + 1, header5, PROTO_HEADER_BYTES);
    put_u32(lead + 1u + PROTO_HEADER_BYTES, counter);
    hmac_sha256_update(&c, lead, sizeof lead);
    hmac_sha256_update(&c, body, n);
    hmac_sha256_final(&c, tag);  /* wipes the copy */
}

void auth_update_tag(uint32_t version, uint8_t (*byte_at)(uint32_t), uint32_t n, uint8_t tag[32])
{
    hmac_sha256_ctx c;
    session_ctx(&c);
    uint8_t block[64];
    hmac_sha256_update(&c, PROTO_UPDATE_LABEL, sizeof PROTO_UPDATE_LABEL - 1u);
    hmac_sha256_update(&c, key_id, KEYPAGE_DEVICE_ID_BYTES);
    put_u32(block, version);
    hmac_sha256_update(&c, block, 4u);
    uint32_t at = 0;
    while (at < n) {
        uint32_t take = n - at < sizeof block ? n - at : (uint32_t)sizeof block;
        for (uint32_t i = 0; i < take; i++) {
            block[i] = byte_at(at + i);
        }
        hmac_sha256_update(&c, block, take);
        at += take;
    }
    hmac_sha256_final(&c, tag);
}
