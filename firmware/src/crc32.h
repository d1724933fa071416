#ifndef TINYFED_CRC32_H
#define TINYFED_CRC32_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32 (IEEE 802.3, reflected, as zlib.crc32). Pass 0 to start; chain by passing the
 * previous result. */
uint32_t crc32_update(uint32_t crc, const void *data, size_t n);

#endif
