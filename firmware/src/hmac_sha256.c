#include "hmac_sha256.h"

void hmac_sha256_init(hmac_sha256_ctx *ctx, const void *key, size_t key_len)
{
    uint8_t pad[SHA256_BLOCK_BYTES];
    uint8_t hashed[SHA256_DIGEST_BYTES];
    const uint8_t *k = (const uint8_t *)key;
    if (key_len > SHA256_BLOCK_BYTES) {
        sha256(key, key_len, hashed);
        k = hashed;
        key_len = SHA256_DIGEST_BYTES;
    }
    /* The key zero-padded to one block, XORed with ipad (0x36) and opad (0x5C). */
    for (size_t i = 0; i < SHA256_BLOCK_BYTES; i++) {
        pad[i] = (uint8_t)((i < key_len ? k[i] : 0u) ^ 0x36u);
    }
    sha256_init(&ctx->inner);
    sha256_update(&ctx->inner, pad, sizeof pad);
    for (size_t i = 0; i < SHA256_BLOCK_BYTES; i++) {
        pad[i] ^= (uint8_t)(0x36u ^ 0x5Cu);
    }
    sha256_init(&ctx->outer);
    sha256_update(&ctx->outer, pad, sizeof pad);
    sha256_wipe(pad, sizeof pad);
    sha256_wipe(hashed, sizeof hashed);
}

void hmac_sha256_update(hmac_sha256_ctx *ctx, const void *data, size_t n)
{
    sha256_update(&ctx->inner, data, n);
}

void hmac_sha256_final(hmac_sha256_ctx *ctx, uint8_t tag[HMAC_SHA256_TAG_BYTES])
{
    uint8_t inner[SHA256_DIGEST_BYTES];
    sha256_final(&ctx->inner, inner);
    sha256_update(&ctx->outer, inner, sizeof inner);
    sha256_final(&ctx->outer, tag);
    sha256_wipe(inner, sizeof inner);
}

void hmac_sha256(const void *key, size_t key_len, const void *data, size_t n,
                 uint8_t tag[HMAC_SHA256_TAG_BYTES])
{
    hmac_sha256_ctx ctx;
    hmac_sha256_init(&ctx, key, key_len);
    hmac_sha256_update(&ctx, data, n);
    hmac_sha256_final(&ctx, tag);
}

int hmac_sha256_equal(const uint8_t *a, const uint8_t *b, size_t n)
{
    /* Accumulate every difference with no early exit; volatile keeps the compiler from
     * turning the loop into a short-circuiting compare. */
    volatile uint8_t diff = 0;
    for (size_t i = 0; i < n; i++) {
        diff = (uint8_t)(diff | (a[i] ^ b[i]));
    }
    /* 1 when diff == 0, else 0, without a data-dependent branch. */
    return (int)(1u & (((uint32_t)diff - 1u) >> 8));
}
