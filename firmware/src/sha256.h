/* SHA-256 (FIPS 180-4): a streaming init/update/final API on a caller-owned context, and a
 * one-shot helper. No heap, no global state; the context is 112 bytes on the M4. */
#ifndef TINYFED_SHA256_H
#define TINYFED_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_BLOCK_BYTES 64u
#define SHA256_DIGEST_BYTES 32u

typedef struct {
    uint32_t state[8];
    uint64_t total;                      /* bytes hashed so far (the message length) */
    uint8_t block[SHA256_BLOCK_BYTES];   /* the partial block not yet compressed */
    uint32_t fill;                       /* bytes held in block (0..63) */
} sha256_ctx;

void sha256_init(sha256_ctx *ctx);
/* Any number of calls, any lengths (n == 0 is fine; data may be NULL then). */
void sha256_update(sha256_ctx *ctx, const void *data, size_t n);
/* Writes the digest and wipes the context; init it again to hash another message. */
void sha256_final(sha256_ctx *ctx, uint8_t out[SHA256_DIGEST_BYTES]);
/* The digest of one message. */
void sha256(const void *data, size_t n, uint8_t out[SHA256_DIGEST_BYTES]);

/* Overwrites n bytes with zeros in a way the compiler does not remove (key material). */
void sha256_wipe(void *p, size_t n);

#endif
