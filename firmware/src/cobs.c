#include "cobs.h"

size_t cobs_encode(const unsigned char *src, size_t n, unsigned char *dst, size_t cap)
{
    size_t out = 1;    /* next write position */
    size_t code_at = 0;
    unsigned char code = 1;
    if (cap == 0) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (src[i] == 0) {
            dst[code_at] = code;
            code_at = out++;
            code = 1;
            if (out > cap) {
                return 0;
            }
            continue;
        }
        if (out >= cap) {
            return 0;
        }
        dst[out++] = src[i];
        code++;
        if (code == 0xFF) {
            dst[code_at] = code;
            code_at = out++;
            code = 1;
            if (out > cap) {
                return 0;
            }
        }
    }
    dst[code_at] = code;
    return out;
}

bool cobs_decode_inplace(unsigned char *buf, size_t n, size_t *out_len)
{
    size_t in = 0;
    size_t out = 0;
    while (in < n) {
        unsigned char code = buf[in++];
        if (code == 0) {
            return false;
        }
        for (unsigned char k = 1; k < code; k++) {
            if (in >= n || buf[in] == 0) {
                return false;
            }
            buf[out++] = buf[in++];
        }
        if (code != 0xFF && in < n) {
            buf[out++] = 0;
        }
    }
    *out_len = out;
    return true;
}
