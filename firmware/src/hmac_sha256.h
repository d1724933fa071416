/* HMAC-SHA-256 (RFC 2104, FIPS 198-1): a streaming init/update/final API on a caller-owned
 * context (224 bytes on the M4), a one-shot helper and a constant-time tag comparison. No heap,
 * no global state. */
#ifndef TINYFED_HMAC_SHA256_H
#define TINYFED_HMAC_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "sha256.h"

#define HMAC_SHA256_TAG_BYTES SHA256_DIGEST_BYTES

typedef struct {
    sha256_ctx inner;   /* has absorbed key ^ ipad, then the message */
    sha256_ctx outer;   /* has absorbed key ^ opad */
} hmac_sha256_ctx;

/* Any key length (a key longer than one block is hashed first, as the RFC says). */
void hmac_sha256_init(hmac_sha256_ctx *ctx, const void *key, size_t key_len);
void hmac_sha256_update(hmac_sha256_ctx *ctx, const void *data, size_t n);
/* Writes the 32-byte tag and wipes the context. */
void hmac_sha256_final(hmac_sha256_ctx *ctx, uint8_t tag[HMAC_SHA256_TAG_BYTES]);
/* The tag of one message. */
void hmac_sha256(const void *key, size_t key_len, const void *data, size_t n,
                 uint8_t tag[HMAC_SHA256_TAG_BYTES]);

/* 1 when the first n bytes of a and b are equal, else 0, in time that depends on n only
 * (never on where they differ): the comparison of a received tag with the computed one. A
 * truncated tag compares its first n bytes. */
int hmac_sha256_equal(const uint8_t *a, const uint8_t *b, size_t n);

#endif
