#include "shuffle.h"

uint32_t shuffle_mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

uint32_t shuffle_epoch_key(uint32_t seed, uint32_t epoch)
{
    return shuffle_mix32(seed ^ shuffle_mix32(epoch + 1u));
}

uint32_t shuffle_index(uint32_t i, uint32_t n, uint32_t key)
{
    uint32_t bits = 2u;
    while (bits < 32u && (1u << bits) < n) {
        bits += 2u;
    }
    uint32_t half = bits / 2u;
    uint32_t mask = (1u << half) - 1u;
    do {
        uint32_t left = i >> half;
        uint32_t right = i & mask;
        for (uint32_t round = 0; round < 4u; round++) {
            uint32_t f = shuffle_mix32(right ^ key ^ (round * 0x9E3779B9u)) & mask;
            uint32_t t = left ^ f;
            left = right;
            right = t;
        }
        i = (left << half) | right;
    } while (i >= n);
    return i;
}
