/* Default local-data source: the TFDS image in the local-data flash store.
 *
 * TFDS (little endian): "TFDS" | u16 version=2 | u16 classes | u32 count | u32 sample_bytes
 * | u32 crc32(body) | u8 target kind | u8 reserved[11], then the body: target[count][target
 * bytes], zero padding to 4 bytes, int8 samples[count][sample_bytes]. Targets by kind: CLASS a
 * u8 below classes (>= 2); LABELS `classes` bytes of 0 or 1; REAL `classes` finite float32;
 * INPUT none (the sample is the target, classes = sample_bytes). The CRC makes a preloaded
 * image self-checking; every target is checked once, when the image is validated. */
#include "local_data.h"

#include <string.h>

#include "crc32.h"
#include "memmap.h"
#include "protocol.h"

/* The TFDS format (host: compile/local_data.py, checked by tests/test_wire_constants.py). */
#define TFDS_MAGIC "TFDS"
#define TFDS_VERSION 2u
#define TFDS_HEADER_BYTES 32u
#define TFDS_TARGET_CLASS 0u
#define TFDS_TARGET_LABELS 1u
#define TFDS_TARGET_REAL 2u
#define TFDS_TARGET_INPUT 3u

static bool checked;  /* the image was validated since boot / the last rewrite */
static bool valid;

static uint32_t rd32(const uint8_t *p) { return get_u32(p); }

void local_data_invalidate(void)
{
    checked = false;
    valid = false;
}

/* Bytes of one sample's target in the image. */
static uint32_t target_bytes(uint8_t kind, uint32_t classes)
{
    switch (kind) {
    case TFDS_TARGET_CLASS:
        return 1u;
    case TFDS_TARGET_LABELS:
        return classes;
    case TFDS_TARGET_REAL:
        return 4u * classes;
    default:
        return 0u;
    }
}

/* Every target of a framed, CRC-checked image within its kind's bounds: NULL or the problem. */
static const char *check_targets(const uint8_t *t, uint8_t kind, uint32_t classes, uint32_t count)
{
    uint32_t n = count * target_bytes(kind, classes); /* bounded by the image size */
    if (kind == TFDS_TARGET_CLASS) {
        for (uint32_t i = 0; i < n; i++) {
            if (t[i] >= classes) {
                return "local data: a label is not below the class count";
            }
        }
    } else if (kind == TFDS_TARGET_LABELS) {
        for (uint32_t i = 0; i < n; i++) {
            if (t[i] > 1u) {
                return "local data: a multilabel target is not 0 or 1";
            }
        }
    } else if (kind == TFDS_TARGET_REAL) {
        for (uint32_t i = 0; i < n; i += 4u) {
            if (((rd32(t + i) >> 23) & 0xFFu) == 0xFFu) { /* all-ones exponent: inf or NaN */
                return "local data: a regression target is not finite";
            }
        }
    }
    return NULL;
}

/* The header's fields are consistent: NULL or the problem. */
static const char *check_header(const uint8_t *d, uint8_t kind, uint32_t classes, uint32_t count, uint32_t sample)
{
    if (get_u16(d + 4) != TFDS_VERSION) {
        return "local data: TFDS version is not 2 (pack it again)";
    }
    for (uint32_t i = 21; i < TFDS_HEADER_BYTES; i++) {
        if (d[i] != 0u) {
            return "local data: reserved header bytes set";
        }
    }
    if (count == 0u || sample == 0u) {
        return "local data: no samples or empty samples";
    }
    if (kind > TFDS_TARGET_INPUT) {
        return "local data: unknown target kind";
    }
    if (kind == TFDS_TARGET_CLASS ? classes < 2u : (kind == TFDS_TARGET_INPUT ? classes != sample : classes == 0u)) {
        return "local data: class / target count bad for the target kind";
    }
    return NULL;
}

bool local_data_check(const char **err, uint16_t *classes, uint8_t *kind)
{
    const uint8_t *d = __data_region;
    static const char *why = "no local data: provision it first";
    if (!checked) {
        checked = true;
        valid = false;
        why = "no local data: provision it first";
        uint32_t cap = DATA_REGION_BYTES;
        if (cap >= TFDS_HEADER_BYTES && memcmp(d, TFDS_MAGIC, 4) == 0) {
            uint8_t k = d[20];
            uint32_t n_classes = get_u16(d + 6);
            uint32_t count = rd32(d + 8);
            uint32_t sample = rd32(d + 12);
            uint64_t targets = ((uint64_t)count * target_bytes(k, n_classes) + 3u) & ~(uint64_t)3u;
            uint64_t body = targets + (uint64_t)count * sample;
            why = check_header(d, k, n_classes, count, sample);
            if (why != NULL) {
                /* the reason stands */
            } else if (body > cap - TFDS_HEADER_BYTES) {
                why = "local data: image larger than the local-data store";
            } else if (crc32_update(0, d + TFDS_HEADER_BYTES, (uint32_t)body) != rd32(d + 16)) {
                why = "local data: CRC-32 mismatch (corrupt image)";
            } else {
                why = check_targets(d + TFDS_HEADER_BYTES, k, n_classes, count);
                valid = why == NULL;
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
    if (kind != NULL) {
        *kind = d[20];
    }
    return true;
}

__attribute__((weak)) uint32_t local_data_count(void)
{
    return local_data_check(NULL, NULL, NULL) ? rd32(__data_region + 8) : 0u;
}

__attribute__((weak)) uint32_t local_data_sample_bytes(void)
{
    return local_data_check(NULL, NULL, NULL) ? rd32(__data_region + 12) : 0u;
}

__attribute__((weak)) bool local_data_sample(uint32_t index, int8_t *input, uint8_t *target)
{
    if (!local_data_check(NULL, NULL, NULL)) {
        return false;
    }
    const uint8_t *d = __data_region;
    uint32_t count = rd32(d + 8);
    uint32_t sample = rd32(d + 12);
    uint32_t tb = target_bytes(d[20], get_u16(d + 6));
    if (index >= count) {
        return false;
    }
    const uint8_t *body = d + TFDS_HEADER_BYTES;
    memcpy(target, body + index * tb, tb);
    memcpy(input, body + ((count * tb + 3u) & ~3u) + index * sample, sample);
    return true;
}
