#!/usr/bin/env bash
# install.sh — libngd as a user installs it: `make install PREFIX=STAGE` (make check and make
# test stage BUILD/stage), then every examples/*.c compiled against that tree through
# pkg-config alone, linked with libngd.so (run with LD_LIBRARY_PATH) and with libngd.a
# (pkg-config --static), and run. Usage: tests/install.sh STAGE
set -u
S=${1:?usage: install.sh STAGE (a make install PREFIX)}
. "$(dirname "$0")/lib.sh"
CC=${CC:-cc}
export PKG_CONFIG_PATH="$S/lib/pkgconfig"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
if ! pkg-config --exists ngd; then
    bad "pkg-config finds no ngd in $S/lib/pkgconfig"
    echo "$pass passed, $fail failed"
    exit 1
fi
[ "$(pkg-config --variable=prefix ngd)" = "$S" ] && ok || bad "ngd.pc's prefix is not $S"
# the file helpers (src/core/fileio.h) are libngd's own while the ABI is 0.x: neither the
# installed header nor the shared library offers them
grep -q 'ngd_file_\|ngd_crc32\|ngd_write_atomic' "$S/include/ngd.h" \
    && bad "the installed ngd.h declares file helpers" || ok
fx=$(nm -D --defined-only "$S/lib/libngd.so" | awk '{print $3}' \
     | grep '^ngd_\(file_\|crc32\|write_atomic\|read_file\|wbuf_\|rbuf_\)' || true)
[ -z "$fx" ] && ok || bad "libngd.so exports file helpers: $fx"
# a user's static link sees every global of libngd.a: each one is ngd_-prefixed, so that a
# program's own kf_pi (27 kf_* helpers of the K-FAC family were global) cannot clash
ga=$(nm -g --defined-only "$S/lib/libngd.a" | awk 'NF == 3 && $2 ~ /[TDBRC]/ {print $3}' \
     | grep -v '^ngd_' | sort -u | tr '\n' ' ' || true)
[ -z "$ga" ] && ok || bad "libngd.a has globals without the ngd_ prefix: $ga"
for ex in examples/*.c; do
    n=$(basename "$ex" .c)
    # shared: what the README shows
    # shellcheck disable=SC2046
    if $CC -o "$T/$n" "$ex" $(pkg-config --cflags --libs ngd) 2>"$T/err"; then ok
    else bad "$n: cc \$(pkg-config --cflags --libs ngd) failed"; tail -n 5 "$T/err"; continue; fi
    LD_LIBRARY_PATH="$S/lib" ldd "$T/$n" | grep -q "$S/lib/libngd.so" && ok || bad "$n: not linked with $S/lib/libngd.so"
    LD_LIBRARY_PATH="$S/lib" "$T/$n" >"$T/out" 2>&1 && ok || { bad "$n (shared) failed"; tail -n 5 "$T/out"; }
    # static: libngd.a and its Libs.private
    # shellcheck disable=SC2046
    if $CC -o "$T/$n-static" "$ex" $(pkg-config --cflags ngd) \
        $(pkg-config --static --libs ngd | sed 's/-lngd /-l:libngd.a /') 2>"$T/err"; then ok
    else bad "$n: static link with pkg-config --static failed"; tail -n 5 "$T/err"; continue; fi
    ldd "$T/$n-static" | grep -q libngd && bad "$n-static: needs libngd.so" || ok
    "$T/$n-static" >"$T/out" 2>&1 && ok || { bad "$n (static) failed"; tail -n 5 "$T/out"; }
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
