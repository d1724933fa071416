/* Consistent Overhead Byte Stuffing, bounded buffers only. */
#ifndef TINYFED_COBS_H
#define TINYFED_COBS_H

#include <stdbool.h>
#include <stddef.h>

/* Largest encoding of n bytes (without the 0x00 delimiter). */
#define COBS_MAX_ENCODED(n) ((n) + ((n) / 254u) + 1u)

/* Encode src[0..n) into dst (capacity cap). Returns the encoded length, 0 if it does not fit. */
size_t cobs_encode(const unsigned char *src, size_t n, unsigned char *dst, size_t cap);
/* Decode in place; returns false on a malformed encoding (a zero byte or a run past the end).
 * *out_len gets the decoded length. */
bool cobs_decode_inplace(unsigned char *buf, size_t n, size_t *out_len);

#endif
