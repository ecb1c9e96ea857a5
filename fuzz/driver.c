/*
 * driver.c — a main() for the fuzz targets (fuzz/fuzz_*.c) without libFuzzer: `make check`
 * and `make test` build every target with the project's compiler and this driver, so that a
 * target that no longer compiles or links is a test failure, and run each over its seeds.
 * Usage: fuzz_x [FILE|DIR]... — calls LLVMFuzzerTestOneInput once with an empty input (as
 * libFuzzer does first; targets set up and write their seeds then), then once per FILE and
 * per regular file of each DIR. A broken contract aborts, as under libFuzzer.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "driver: cannot open %s\n", path);
        return -1;
    }
    uint8_t *b = NULL;
    size_t n = 0, cap = 0, k;
    do {
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            uint8_t *nb = realloc(b, cap);
            if (!nb) {
                free(b);
                fclose(f);
                return -1;
            }
            b = nb;
        }
        k = fread(b + n, 1, cap - n, f);
        n += k;
    } while (k > 0);
    fclose(f);
    LLVMFuzzerTestOneInput(b, n);
    free(b);
    return 0;
}

int main(int argc, char **argv) {
    size_t inputs = 1;
    int bad = 0;
    LLVMFuzzerTestOneInput((const uint8_t *)"", 0);
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0) {
            fprintf(stderr, "driver: no %s\n", argv[i]);
            bad = 1;
            continue;
        }
        if (!S_ISDIR(sb.st_mode)) {
            bad |= run_file(argv[i]) != 0;
            inputs++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (!d) {
            fprintf(stderr, "driver: cannot read %s\n", argv[i]);
            bad = 1;
            continue;
        }
        struct dirent *de;
        while ((de = readdir(d))) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[i], de->d_name);
            if (stat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
            bad |= run_file(p) != 0;
            inputs++;
        }
        closedir(d);
    }
    printf("%s: %zu inputs\n", argv[0], inputs);
    return bad;
}
