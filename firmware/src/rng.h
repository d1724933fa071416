/* Random bytes for session nonces and differential-privacy noise. A board with a hardware RNG
 * (board_hw_random) serves every request from it; a board without one (the emulated boards)
 * serves them from a SHA-256 counter-mode generator whose state is seeded by rng_seed() from
 * secret material written at provisioning (docs/security.md says what that guarantees). */
#ifndef TINYFED_RNG_H
#define TINYFED_RNG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Mixes n bytes of seed material into the generator's state (call as often as there is new
 * material: the provisioned seed at boot, a boot counter, ...). */
void rng_seed(const void *material, size_t n);
/* n random bytes: the hardware RNG's where the board has one, else the generator's. */
void rng_fill(void *out, size_t n);
uint32_t rng_u32(void);
/* True when rng_fill reads a hardware RNG. */
bool rng_is_hardware(void);
/* Board hook (weak default: none): fills n bytes from a hardware RNG and returns true, or
 * returns false when the board has none. */
bool board_hw_random(uint8_t *out, size_t n);

#endif
