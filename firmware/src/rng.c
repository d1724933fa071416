/* The generator behind rng.h. Without a hardware RNG: state S (32 bytes) and a block counter;
 * output block i = SHA-256("out" || S || i); after each rng_fill the state moves on to
 * SHA-256("next" || S || i), so bytes already handed out cannot be recomputed from a later state. */
#include "rng.h"

#include <string.h>

#include "sha256.h"

static uint8_t state[SHA256_DIGEST_BYTES];
static uint64_t blocks;

__attribute__((weak)) bool board_hw_random(uint8_t *out, size_t n)
{
    (void)out;
    (void)n;
    return false;
}

static void hash_state(const char *label, uint8_t out[SHA256_DIGEST_BYTES])
{
    sha256_ctx ctx;
    uint8_t count[8];
    for (size_t i = 0; i < sizeof count; i++) {
        count[i] = (uint8_t)(blocks >> (8u * i));
    }
    sha256_init(&ctx);
    sha256_update(&ctx, label, strlen(label));
    sha256_update(&ctx, state, sizeof state);
    sha256_update(&ctx, count, sizeof count);
    sha256_final(&ctx, out);
}

void rng_seed(const void *material, size_t n)
{
    sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, "seed", 4u);
    sha256_update(&ctx, state, sizeof state);
    sha256_update(&ctx, material, n);
    sha256_final(&ctx, state);
}

bool rng_is_hardware(void)
{
    uint8_t probe;
    return board_hw_random(&probe, 1u);
}

void rng_fill(void *out, size_t n)
{
    uint8_t *o = out;
    if (board_hw_random(o, n)) {
        return;
    }
    uint8_t block[SHA256_DIGEST_BYTES];
    while (n > 0u) {
        size_t take = n < sizeof block ? n : sizeof block;
        hash_state("out", block);
        blocks++;
        memcpy(o, block, take);
        o += take;
        n -= take;
    }
    hash_state("next", state);
    blocks++;
    sha256_wipe(block, sizeof block);
}

uint32_t rng_u32(void)
{
    uint8_t b[4];
    rng_fill(b, sizeof b);
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}
