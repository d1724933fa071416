/* Default local-data source: the TFDS image in the local-data flash store.
 *
 * TFDS (little endian): "TFDS" | u16 version=1 | u16 classes | u32 count | u32 sample_bytes
 * | u32 crc32(body) | u32 reserved[3], then the body: u8 label[count], zero padding to 4 bytes,
 * int8 samples[count][sample_bytes]. The CRC makes a preloaded image self-checking. */
#include "local_data.h"

#include <string.h>

#include "crc32.h"
#include "memmap.h"
#include "protocol.h"

/* The TFDS format (host: compile/local_data.py, checked by tests/test_wire_constants.py). */
#define TFDS_MAGIC "TFDS"
#define TFDS_VERSION 1u
#define TFDS_HEADER_BYTES 32u

static bool checked;  /* the image was validated since boot / the last rewrite */
static bool valid;

static uint32_t rd32(const uint8_t *p) { return get_u32(p); }

void local_data_invalidate(void)
{
    checked = false;
    valid = false;
}

bool local_data_check(const char **err, uint16_t *classes)
{
    const uint8_t *d = __data_region;
    static const char *why = "no local data: provision it first";
    if (!checked) {
        checked = true;
        valid = false;
        why = "no local data: provision it first";
        uint32_t cap = DATA_REGION_BYTES;
        if (cap >= TFDS_HEADER_BYTES && memcmp(d, TFDS_MAGIC, 4) == 0) {
            uint32_t count = rd32(d + 8);
            uint32_t sample = rd32(d + 12);
            uint32_t labels = (count + 3u) & ~3u;
            uint64_t body = (uint64_t)labels + (uint64_t)count * sample;
            if (get_u16(d + 4) != TFDS_VERSION) {
                why = "local data: TFDS version is not 1";
            } else if (count == 0u || sample == 0u || get_u16(d + 6) < 2u) {
                why = "local data: no samples, empty samples or fewer than 2 classes";
            } else if (body > cap - TFDS_HEADER_BYTES) {
                why = "local data: image larger than the local-data store";
            } else if (crc32_update(0, d + TFDS_HEADER_BYTES, (uint32_t)body) != rd32(d + 16)) {
                why = "local data: CRC-32 mismatch (corrupt image)";
            } else {
                valid = true;
                for (uint32_t i = 0; i < count; i++) {
                    if (d[TFDS_HEADER_BYTES + i] >= get_u16(d + 6)) {
                        valid = false;
                        why = "local data: a label is not below the class count";
                        break;
                    }
                }
            }
        }
    }
    if (!valid) {
        if (err != NULL) {
            *err = why;
        }
        return false;
    }
    if (classes != NULL) {
        *classes = get_u16(d + 6);
    }
    return true;
}

__attribute__((weak)) uint32_t local_data_count(void)
{
    return local_data_check(NULL, NULL) ? rd32(__data_region + 8) : 0u;
}

__attribute__((weak)) uint32_t local_data_sample_bytes(void)
{
    return local_data_check(NULL, NULL) ? rd32(__data_region + 12) : 0u;
}

__attribute__((weak)) bool local_data_sample(uint32_t index, int8_t *input, uint8_t *label)
{
    if (!local_data_check(NULL, NULL)) {
        return false;
    }
    const uint8_t *d = __data_region;
    uint32_t count = rd32(d + 8);
    uint32_t sample = rd32(d + 12);
    if (index >= count) {
        return false;
    }
    const uint8_t *body = d + TFDS_HEADER_BYTES;
    *label = body[index];
    memcpy(input, body + ((count + 3u) & ~3u) + index * sample, sample);
    return true;
}
