/* Host harness of the firmware's SHA-256 and HMAC-SHA-256 (tests/test_firmware_hmac.py):
 * the streaming APIs fed a message cut at the given offsets, as a shared library for ctypes.
 * cuts[0..ncuts) are ascending offsets in 0..n; the pieces between them may be empty. */
#include "hmac_sha256.h"

void harness_sha256_chunks(const uint8_t *msg, size_t n, const size_t *cuts, size_t ncuts, uint8_t *out)
{
    sha256_ctx ctx;
    size_t at = 0;
    sha256_init(&ctx);
    for (size_t i = 0; i < ncuts; i++) {
        sha256_update(&ctx, msg + at, cuts[i] - at);
        at = cuts[i];
    }
    sha256_update(&ctx, msg + at, n - at);
    sha256_final(&ctx, out);
}

void harness_hmac_chunks(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t n, const size_t *cuts,
                         size_t ncuts, uint8_t *out)
{
    hmac_sha256_ctx ctx;
    size_t at = 0;
    hmac_sha256_init(&ctx, key, key_len);
    for (size_t i = 0; i < ncuts; i++) {
        hmac_sha256_update(&ctx, msg + at, cuts[i] - at);
        at = cuts[i];
    }
    hmac_sha256_update(&ctx, msg + at, n - at);
    hmac_sha256_final(&ctx, out);
}

/* The one-shot SHA-256 of n copies of byte c, streamed from a 1000-byte buffer (the
 * million-'a' vector without a megabyte crossing ctypes). */
void harness_sha256_repeat(uint8_t c, size_t n, uint8_t *out)
{
    uint8_t buf[1000];
    sha256_ctx ctx;
    for (size_t i = 0; i < sizeof buf; i++) {
        buf[i] = c;
    }
    sha256_init(&ctx);
    while (n > 0) {
        size_t take = n < sizeof buf ? n : sizeof buf;
        sha256_update(&ctx, buf, take);
        n -= take;
    }
    sha256_final(&ctx, out);
}
