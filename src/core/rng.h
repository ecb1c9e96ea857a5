/*
 * rng.h — a small, explicit-state PRNG (splitmix64 seeding + xoshiro256**), so that every
 * random draw of libngd is reproducible from (seed, stream) and checkpointable.
 */
#ifndef NGD_RNG_H
#define NGD_RNG_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t s[4];
} ngd_rng;

void ngd_rng_seed(ngd_rng *r, uint64_t seed, uint64_t stream);
uint64_t ngd_rng_u64(ngd_rng *r);
double ngd_rng_uniform(ngd_rng *r); // [0, 1)
double ngd_rng_normal(ngd_rng *r);  // standard normal (Box–Muller, one value per call)
void ngd_rng_normal_f32(ngd_rng *r, float *x, size_t n);
#endif
