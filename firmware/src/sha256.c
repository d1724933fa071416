#include "sha256.h"

/* The first 32 bits of the fractional parts of the cube roots of the first 64 primes. */
static const uint32_t round_k[64] = {
    0x428A2F98u, 0x71374491u, 0xB5C0FBCFu, 0xE9B5DBA5u, 0x3956C25Bu, 0x59F111F1u, 0x923F82A4u, 0xAB1C5ED5u,
    0xD807AA98u, 0x12835B01u, 0x243185BEu, 0x550C7DC3u, 0x72BE5D74u, 0x80DEB1FEu, 0x9BDC06A7u, 0xC19BF174u,
    0xE49B69C1u, 0xEFBE4786u, 0x0FC19DC6u, 0x240CA1CCu, 0x2DE92C6Fu, 0x4A7484AAu, 0x5CB0A9DCu, 0x76F988DAu,
    0x983E5152u, 0xA831C66Du, 0xB00327C8u, 0xBF597FC7u, 0xC6E00BF3u, 0xD5A79147u, 0x06CA6351u, 0x14292967u,
    0x27B70A85u, 0x2E1B2138u, 0x4D2C6DFCu, 0x53380D13u, 0x650A7354u, 0x766A0ABBu, 0x81C2C92Eu, 0x92722C85u,
    0xA2BFE8A1u, 0xA81A664Bu, 0xC24B8B70u, 0xC76C51A3u, 0xD192E819u, 0xD6990624u, 0xF40E3585u, 0x106AA070u,
    0x19A4C116u, 0x1E376C08u, 0x2748774Cu, 0x34B0BCB5u, 0x391C0CB3u, 0x4ED8AA4Au, 0x5B9CCA4Fu, 0x682E6FF3u,
    0x748F82EEu, 0x78A5636Fu, 0x84C87814u, 0x8CC70208u, 0x90BEFFFAu, 0xA4506CEBu, 0xBEF9A3F7u, 0xC67178F2u,
};

/* The first 32 bits of the fractional parts of the square roots of the first 8 primes. */
static const uint32_t initial_h[8] = {
    0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au, 0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u,
};

static uint32_t rotr(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32u - n));
}

static uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* One 64-byte block into the state. The message schedule is a 16-word ring (64 bytes of
 * stack rather than 256). */
static void compress(uint32_t state[8], const uint8_t *block)
{
    uint32_t w[16];
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (unsigned i = 0; i < 16u; i++) {
        w[i] = load_be32(block + 4u * i);
    }
    for (unsigned i = 0; i < 64u; i++) {
        uint32_t wi;
        if (i < 16u) {
            wi = w[i];
        } else {
            uint32_t w15 = w[(i - 15u) & 15u], w2 = w[(i - 2u) & 15u];
            uint32_t s0 = rotr(w15, 7) ^ rotr(w15, 18) ^ (w15 >> 3);
            uint32_t s1 = rotr(w2, 17) ^ rotr(w2, 19) ^ (w2 >> 10);
            wi = w[i & 15u] + s0 + w[(i - 7u) & 15u] + s1;
            w[i & 15u] = wi;
        }
        uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + round_k[i] + wi;
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
    sha256_wipe(w, sizeof w);
}

void sha256_wipe(void *p, size_t n)
{
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--) {
        *v++ = 0;
    }
}

void sha256_init(sha256_ctx *ctx)
{
    for (unsigned i = 0; i < 8u; i++) {
        ctx->state[i] = initial_h[i];
    }
    ctx->total = 0;
    ctx->fill = 0;
}

void sha256_update(sha256_ctx *ctx, const void *data, size_t n)
{
    const uint8_t *p = (const uint8_t *)data;
    ctx->total += (uint64_t)n;
    if (ctx->fill > 0u) {
        while (n > 0u && ctx->fill < SHA256_BLOCK_BYTES) {
            ctx->block[ctx->fill++] = *p++;
            n--;
        }
        if (ctx->fill < SHA256_BLOCK_BYTES) {
            return;
        }
        compress(ctx->state, ctx->block);
        ctx->fill = 0;
    }
    while (n >= SHA256_BLOCK_BYTES) {
        compress(ctx->state, p);
        p += SHA256_BLOCK_BYTES;
        n -= SHA256_BLOCK_BYTES;
    }
    while (n > 0u) {
        ctx->block[ctx->fill++] = *p++;
        n--;
    }
}

void sha256_final(sha256_ctx *ctx, uint8_t out[SHA256_DIGEST_BYTES])
{
    uint64_t bits = ctx->total << 3;
    /* 0x80, zeros up to 56 mod 64, then the 64-bit big-endian bit length. */
    ctx->block[ctx->fill++] = 0x80u;
    if (ctx->fill > SHA256_BLOCK_BYTES - 8u) {
        while (ctx->fill < SHA256_BLOCK_BYTES) {
            ctx->block[ctx->fill++] = 0;
        }
        compress(ctx->state, ctx->block);
        ctx->fill = 0;
    }
    while (ctx->fill < SHA256_BLOCK_BYTES - 8u) {
        ctx->block[ctx->fill++] = 0;
    }
    store_be32(ctx->block + 56, (uint32_t)(bits >> 32));
    store_be32(ctx->block + 60, (uint32_t)bits);
    compress(ctx->state, ctx->block);
    for (unsigned i = 0; i < 8u; i++) {
        store_be32(out + 4u * i, ctx->state[i]);
    }
    sha256_wipe(ctx, sizeof *ctx);
}

void sha256(const void *data, size_t n, uint8_t out[SHA256_DIGEST_BYTES])
{
    sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, data, n);
    sha256_final(&ctx, out);
}
