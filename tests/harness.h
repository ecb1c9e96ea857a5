/*
 * harness.h — the in-house test harness (redis testhelp.h + llm.c check_tensor).
 *
 * A test file defines `static void name(void)` functions and lists them in
 *     static const test_case TESTS[] = { TEST(name), ... };
 *     int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
 * `--filter SUBSTR` runs only the tests whose name contains SUBSTR. Every binary ends
 * with exactly one line "N passed, N failed" and exits non-zero on any failure.
 * CHECK_TENSOR prints max abs / rel error, nmse and the first bad index on failure.
 * A test that ran no check at all fails ("ran no checks"): a test that cannot fail is a
 * defect, and one whose checks were skipped by an early return is one too.
 */
#ifndef NGD_TEST_HARNESS_H
#define NGD_TEST_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    const char *name;
    void (*fn)(void);
} test_case;

// A small seeded generator for test inputs (LCG, the top 53 bits): tu in [0, 1), tfill
// uniform in [lo, hi)
typedef struct {
    uint64_t s;
} trng;
static inline double tu(trng *r) {
    r->s = r->s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(r->s >> 11) / 9007199254740992.0;
}
static inline void tfill(trng *r, float *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(lo + (hi - lo) * tu(r));
}
// the bits of a float
static inline uint32_t f_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

// OpenMP's thread count set to n (when n > 0); returns the one before (1 without OpenMP)
static inline int th_set_threads(int n) {
#ifdef _OPENMP
    const int before = omp_get_max_threads();
    if (n > 0) omp_set_num_threads(n);
    return before;
#else
    (void)n;
    return 1;
#endif
}

#define TEST(fn)                                                                                   \
    { #fn, fn }
#define NTESTS(a) (sizeof(a) / sizeof((a)[0]))

static int th_failed_checks; // failed checks in the current test
static long th_checks;       // checks run in the current test (passed or failed)
static int th_verbose;
// a progress line on stderr when the test runs verbose
#define NOTE(...)                                                                                  \
    do {                                                                                           \
        if (th_verbose) {                                                                          \
            fprintf(stderr, "    ");                                                               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)
// after this many failed checks in one test, further ones are counted but not printed
#define TH_MAX_PRINTED 12
#define TH_PRINT       (th_failed_checks <= TH_MAX_PRINTED)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        th_checks++;                                                                               \
        if (!(cond)) {                                                                             \
            th_failed_checks++;                                                                    \
            if (TH_PRINT)                                                                          \
                fprintf(stderr, "    %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        th_checks++;                                                                               \
        if (!(cond)) {                                                                             \
            th_failed_checks++;                                                                    \
            if (TH_PRINT) {                                                                        \
                fprintf(stderr, "    %s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);       \
                fprintf(stderr, __VA_ARGS__);                                                      \
                fputc('\n', stderr);                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)

// |got - want| <= atol + rtol * |want|
#define CHECK_CLOSE(got, want, rtol, atol)                                                         \
    do {                                                                                           \
        double th_g_ = (double)(got), th_w_ = (double)(want);                                      \
        th_checks++;                                                                               \
        if (!(fabs(th_g_ - th_w_) <= (atol) + (rtol)*fabs(th_w_))) {                               \
            th_failed_checks++;                                                                    \
            if (TH_PRINT)                                                                          \
                fprintf(stderr, "    %s:%d: CHECK_CLOSE failed: %s = %.10g, want %s = %.10g\n",    \
                        __FILE__, __LINE__, #got, th_g_, #want, th_w_);                            \
        }                                                                                          \
    } while (0)

// Element-wise |got[i] - want[i]| <= atol + rtol * |want[i]| for doubles/floats read through
// a getter so that float and double arrays both work.
static inline int th_check_tensor(const char *file, int line, const char *label, const void *got,
                                  int got_is_double, const void *want, int want_is_double, size_t n,
                                  double rtol, double atol) {
    th_checks++;
    double maxabs = 0, maxrel = 0, num = 0, den = 0;
    size_t first_bad = (size_t)-1;
    for (size_t i = 0; i < n; i++) {
        double g = got_is_double ? ((const double *)got)[i] : (double)((const float *)got)[i];
        double w = want_is_double ? ((const double *)want)[i] : (double)((const float *)want)[i];
        double e = fabs(g - w);
        if (!(e <= atol + rtol * fabs(w)) && first_bad == (size_t)-1) first_bad = i;
        if (e > maxabs || e != e) maxabs = e;
        if (w != 0 && e / fabs(w) > maxrel) maxrel = e / fabs(w);
        num += (g - w) * (g - w);
        den += w * w;
    }
    double nmse = den > 0 ? num / den : num;
    if (first_bad != (size_t)-1) {
        th_failed_checks++;
        if (!TH_PRINT) return 0;
        double g = got_is_double ? ((const double *)got)[first_bad]
                                 : (double)((const float *)got)[first_bad];
        double w = want_is_double ? ((const double *)want)[first_bad]
                                  : (double)((const float *)want)[first_bad];
        fprintf(stderr,
                "    %s:%d: CHECK_TENSOR %s failed: n=%zu max_abs=%.3g max_rel=%.3g nmse=%.3g, "
                "first bad [%zu]: got %.10g want %.10g (rtol %.1g atol %.1g)\n",
                file, line, label, n, maxabs, maxrel, nmse, first_bad, g, w, rtol, atol);
        return 0;
    }
    if (th_verbose)
        fprintf(stderr, "    %s: n=%zu max_abs=%.3g nmse=%.3g ok\n", label, n, maxabs, nmse);
    return 1;
}

#define TH_IS_DOUBLE(p) _Generic((p), double * : 1, const double * : 1, default : 0)
#define CHECK_TENSOR(got, want, n, rtol, atol, label)                                              \
    th_check_tensor(__FILE__, __LINE__, (label), (got), TH_IS_DOUBLE(got), (want),                 \
                    TH_IS_DOUBLE(want), (size_t)(n), (rtol), (atol))

static inline int test_main(int argc, char **argv, const test_case *tests, size_t ntests) {
    const char *filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
            filter = argv[++i];
        else if (strcmp(argv[i], "-v") == 0)
            th_verbose = 1;
    }
    int passed = 0, failed = 0;
    for (size_t i = 0; i < ntests; i++) {
        if (filter && !strstr(tests[i].name, filter)) continue;
        th_failed_checks = 0, th_checks = 0;
        tests[i].fn();
        if (!th_checks) {
            failed++;
            fprintf(stderr, "FAIL %s (ran no checks)\n", tests[i].name);
        } else if (th_failed_checks) {
            failed++;
            fprintf(stderr, "FAIL %s (%d checks)\n", tests[i].name, th_failed_checks);
        } else {
            passed++;
            if (th_verbose) fprintf(stderr, "ok   %s\n", tests[i].name);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif
