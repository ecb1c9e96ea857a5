/*
 * rng.c — the engine's PRNG: xoshiro256** (Blackman & Vigna) seeded through splitmix64.
 * Explicit state, no globals: weight initialisation, dropout masks, shuffling and
 * augmentation each hold their own nn_rng, so every run is reproducible from its seeds.
 * Not cryptographic.
 */
#include <math.h>

#include "nn.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void nn_rng_seed(nn_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

uint64_t nn_rng_u64(nn_rng *r) {
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float nn_rng_uniform(nn_rng *r) { return (float)(nn_rng_u64(r) >> 40) * 0x1.0p-24f; }

double nn_rng_uniform_f64(nn_rng *r) { return (double)(nn_rng_u64(r) >> 11) * 0x1.0p-53; }

uint64_t nn_rng_below(nn_rng *r, uint64_t n) {
    NN_ASSERT(n >= 1);
    // rejection of the incomplete last block of 2^64 mod n values keeps it unbiased
    uint64_t limit = UINT64_MAX - (UINT64_MAX % n + 1) % n;
    uint64_t x;
    do
        x = nn_rng_u64(r);
    while (x > limit);
    return x % n;
}

float nn_rng_normal(nn_rng *r) {
    // Box–Muller in float64; 1 - u keeps the log argument in (0, 1]
    double u1 = 1.0 - nn_rng_uniform_f64(r), u2 = nn_rng_uniform_f64(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void nn_rng_fill_uniform(nn_rng *r, float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * nn_rng_uniform(r);
}

void nn_rng_fill_normal(nn_rng *r, float *x, size_t n, float mean, float std) {
    for (size_t i = 0; i < n; i++)
        x[i] = mean + std * nn_rng_normal(r);
}

void nn_rng_permutation(nn_rng *r, size_t *perm, size_t n) {
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)nn_rng_below(r, i);
        size_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}
