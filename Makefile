# ngd — the one build file.
#   make              libngd (static + versioned shared), the engine, the `ngd` command
#   make run          README's main job: train the default model (installs deps first)
#   make test         the whole suite, plain and under ASan+UBSan; ends with "N passed, N failed"
#   make check        the plain suite only (faster)
#   make bench        speed / memory benchmarks (never part of the tests)
#   make bench-compare  PyTorch (Debian's) and ngd bench train side by side: ms/step, ratios
#   make bench-kfac-author AUTHOR=DIR  the author's K-FAC / B-KFAC code and ngd train: one epoch
#   make mutate       mutation testing: plants the bugs of scripts/mutations.txt one at a time
#                     in a scratch copy, runs the plain suite, reports which survive (never
#                     part of the tests; MUTATE_ARGS='-o 1,3' etc., see scripts/mutate.sh -h)
#   make install      PREFIX=/usr/local DESTDIR=   (lib, header, pkg-config file, ngd, Python package)
#   make format / format-check / tidy / clean
#   options: SANITIZE=1 (build into build-san/), NATIVE=0 (no -march=native), OMP=0
# Files are found by wildcard: a new src/<layer>/x.c or tests/test_x.c needs no edit here.

# The version lives in one place, include/ngd.h (NGD_VERSION_MAJOR/MINOR/PATCH): read from there
ngd_version_part = $(shell sed -n 's/^\#define NGD_VERSION_$(1) \([0-9][0-9]*\)$$/\1/p' include/ngd.h)
VERSION_MAJOR := $(call ngd_version_part,MAJOR)
VERSION_MINOR := $(call ngd_version_part,MINOR)
VERSION_PATCH := $(call ngd_version_part,PATCH)
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

PREFIX ?= /usr/local
DESTDIR ?=
CC ?= cc
NATIVE ?= 1
OMP ?= 1
SANITIZE ?= 0

ifeq ($(SANITIZE),1)
BUILD ?= build-san
OPT := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LDSAN := -fsanitize=address,undefined
HARDEN :=
else
BUILD ?= build
OPT := -O3 -g
LDSAN :=
HARDEN := -D_FORTIFY_SOURCE=3 -fstack-protector-strong
endif

WARN := -std=c11 -Wall -Wextra -Wpedantic -Werror -Wshadow -Wstrict-prototypes \
        -Wmissing-prototypes -Wpointer-arith -Wcast-qual -Wdouble-promotion -Wfloat-conversion \
        -Wformat=2 -Wundef -Wvla -Wwrite-strings -Wimplicit-fallthrough
ARCH :=
ifeq ($(NATIVE),1)
ARCH := -march=native
endif
OMPFLAG :=
ifeq ($(OMP),1)
OMPFLAG := -fopenmp
else
# serial: the `#pragma omp` lines are ignored, and said to be
OMPFLAG := -Wno-unknown-pragmas
endif

BASEFLAGS := $(WARN) $(OPT) $(ARCH) $(OMPFLAG) $(HARDEN) -D_POSIX_C_SOURCE=200809L \
             -fvisibility=hidden -fPIC -fno-math-errno -MMD -MP
CFLAGS ?=
CFLAGS += $(BASEFLAGS)
LIBS := -ldnnl -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -llapacke -lz -lm
# Open MPI for `mpirun -np N ngd train` (src/cli/dist.c only; libngd and the engine never see it)
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c)
MPI_LIBS := $(shell pkg-config --libs ompi-c)
LDFLAGS ?=
LDFLAGS += $(LDSAN) $(OMPFLAG) -Wl,-z,relro,-z,now

# Per-layer include paths: libngd sees only itself, the engine sees only <ngd.h>.
INC_LIB := -Iinclude -Isrc/core -Isrc/structures -Isrc/optim
INC_ENG := -Iinclude -Isrc/nn -Isrc/data
INC_CLI := -Iinclude -Isrc/nn -Isrc/data -Isrc/cli
INC_TST := -Iinclude -Isrc/core -Isrc/structures -Isrc/optim -Isrc/nn -Isrc/data -Isrc/cli -Itests

LIB_SRC := $(sort $(wildcard src/core/*.c src/structures/*.c src/optim/*.c))
ENG_SRC := $(sort $(wildcard src/nn/*.c src/nn/models/*.c src/data/*.c))
CLI_SRC := $(sort $(wildcard src/cli/*.c))
TST_SUP := $(sort $(filter-out tests/test_%.c,$(wildcard tests/*.c)))
TST_SRC := $(sort $(wildcard tests/test_*.c))
BENCH_SRC := $(sort $(wildcard bench/*.c))
EX_SRC := $(sort $(wildcard examples/*.c))
FUZZ_SRC := $(sort $(wildcard fuzz/fuzz_*.c))

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
ENG_OBJ := $(ENG_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TST_SUP_OBJ := $(TST_SUP:%.c=$(BUILD)/%.o)
TST_BIN := $(TST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
EX_BIN := $(EX_SRC:examples/%.c=$(BUILD)/examples/%)
FUZZ_BIN := $(FUZZ_SRC:fuzz/%.c=$(BUILD)/fuzz/%)

LIBA := $(BUILD)/libngd.a
LIBSO := $(BUILD)/libngd.so.$(VERSION)
ENGA := $(BUILD)/libngdengine.a
NGD := $(BUILD)/ngd

# keep test objects between builds
.SECONDARY:

.PHONY: all run test check bench bench-compare bench-kfac-author examples install uninstall clean format format-check tidy deps deps-test \
        mutate
all: $(LIBA) $(LIBSO) $(NGD)

deps:
	@bash scripts/deps.sh
# the tests also need the Python stack (numpy, torch, pytest) that `make run` does not
deps-test:
	@bash scripts/deps.sh test

$(BUILD)/src/core/%.o $(BUILD)/src/structures/%.o $(BUILD)/src/optim/%.o: INC = $(INC_LIB)
$(BUILD)/src/nn/%.o $(BUILD)/src/data/%.o: INC = $(INC_ENG)
$(BUILD)/src/cli/%.o: INC = $(INC_CLI)
$(BUILD)/src/cli/dist.o: INC = $(INC_CLI) $(patsubst -I%,-isystem %,$(MPI_CFLAGS))
$(BUILD)/tests/%.o $(BUILD)/bench/%.o $(BUILD)/examples/%.o: INC = $(INC_TST)
$(BUILD)/fuzz/%.o: INC = $(INC_TST) -Ifuzz

# objects are rebuilt when the flags change (the stamp is rewritten only when they differ)
FLAGS_STAMP := $(BUILD)/.cflags
$(FLAGS_STAMP): FORCE
	@mkdir -p $(BUILD)
	@echo '$(CC) $(CFLAGS) $(LDFLAGS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS) $(LDFLAGS)' > $@
.PHONY: FORCE
FORCE:

$(BUILD)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  CC $<"
	@$(CC) $(CFLAGS) $(INC) -c $< -o $@

$(LIBA): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(LIBSO): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libngd.so.$(VERSION_MAJOR) $(LDFLAGS) -o $@ $^ $(LIBS)
	ln -sf libngd.so.$(VERSION) $(BUILD)/libngd.so.$(VERSION_MAJOR)
	ln -sf libngd.so.$(VERSION_MAJOR) $(BUILD)/libngd.so

$(ENGA): $(ENG_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(NGD): $(CLI_OBJ) $(ENGA) $(LIBA)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(ENGA) $(LIBA) $(LIBS) -lcjson -lz $(MPI_LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TST_SUP_OBJ) $(ENGA) $(LIBA)
	$(CC) $(LDFLAGS) -o $@ $< $(TST_SUP_OBJ) $(ENGA) $(LIBA) $(LIBS) -lcjson -lz

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(ENGA) $(LIBA)
	$(CC) $(LDFLAGS) -o $@ $< $(ENGA) $(LIBA) $(LIBS) -lcjson -lz

$(BUILD)/examples/%: $(BUILD)/examples/%.o $(LIBA)
	$(CC) $(LDFLAGS) -o $@ $< $(LIBA) $(LIBS)

examples: $(EX_BIN)

# The fuzz targets with a plain main() (fuzz/driver.c) instead of libFuzzer, built by the
# project's compiler: `make check` / `make test` build them (so that they keep compiling and
# linking) and run them over their seeds (tests/run.sh).
$(BUILD)/fuzz/%: $(BUILD)/fuzz/%.o $(BUILD)/fuzz/driver.o $(ENGA) $(LIBA)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(ENGA) $(LIBA) $(LIBS) -lcjson -lz

# fuzz_trainckpt links the command's checkpoint reader itself: trainckpt.o, traindata.o (the
# batches a loaded position and order drive) and dist.c built for one process (NGD_NO_MPI)
FUZZ_TRAINCKPT_OBJ := src/cli/trainckpt.o src/cli/traindata.o fuzz/dist-nompi.o
$(BUILD)/fuzz/fuzz_trainckpt: $(FUZZ_TRAINCKPT_OBJ:%=$(BUILD)/%)
$(BUILD)/fuzz/dist-nompi.o: src/cli/dist.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  CC $< (NGD_NO_MPI)"
	@$(CC) $(CFLAGS) $(INC_CLI) -DNGD_NO_MPI -c $< -o $@

# The plain suite in $(BUILD): every test binary, the examples, the fuzz targets' seeds, the
# CLI scripts.
check: deps-test
	@$(MAKE) --no-print-directory all $(TST_BIN) $(EX_BIN) $(FUZZ_BIN) >/dev/null
	@$(MAKE) --no-print-directory stage >/dev/null
	@bash tests/run.sh $(BUILD)

# `make test`: plain suite, then the same under ASan+UBSan, one closing line for both.
test: deps-test
	@$(MAKE) --no-print-directory all $(TST_BIN) $(EX_BIN) $(FUZZ_BIN)
	@$(MAKE) --no-print-directory SANITIZE=1 all $(TST_BIN:$(BUILD)/%=build-san/%) $(EX_BIN:$(BUILD)/%=build-san/%) \
	    $(FUZZ_BIN:$(BUILD)/%=build-san/%)
	@$(MAKE) --no-print-directory stage >/dev/null
	@echo "  the library and ngd built with OMP=0 (README's option; the warnings are errors there too)"
	@$(MAKE) --no-print-directory BUILD=build-omp0 OMP=0 all >/dev/null
	@bash tests/run.sh $(BUILD) build-san

# `make install` into $(BUILD)/stage (PREFIX = that folder): tests/install.sh builds the
# examples against it through pkg-config, shared and static, and runs them
.PHONY: stage
stage: all
	@rm -rf $(BUILD)/stage
	@$(MAKE) --no-print-directory install PREFIX=$(abspath $(BUILD))/stage

# `make fuzz`: the libFuzzer targets fuzz/fuzz_*.c, built with clang 14, ASan and UBSan
# into build-fuzz/ (library and engine instrumented for coverage), each run FUZZ_SECONDS
# seconds from its seeds in fuzz/corpus/<target>/ (plus generated ones); new inputs go to
# build-fuzz/corpus/<target>/, crashes to build-fuzz/artifacts/. Never part of `make test`
# (which builds the same targets with fuzz/driver.c instead of libFuzzer and runs their seeds).
# Serial (OMP=0: one OpenMP runtime less under the sanitizers), so the warnings of variables
# used only by `#pragma omp` clauses are off there.
FUZZ_SECONDS ?= 30
FUZZ_CC ?= clang-14
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
.PHONY: fuzz
fuzz:
	@bash scripts/deps.sh fuzz
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=$(FUZZ_CC) NATIVE=0 OMP=0 HARDEN= \
	    OPT='-O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link' LDSAN='$(FUZZ_SAN)' \
	    WARN='$(WARN) -Wno-unknown-pragmas -Wno-unused-variable -Wno-unused-but-set-variable' \
	    --eval '-include $$(shell find build-fuzz -name "*.d" 2>/dev/null)' \
	    build-fuzz/libngd.a build-fuzz/libngdengine.a $(FUZZ_TRAINCKPT_OBJ:%=build-fuzz/%)
	@set -e; for src in $(sort $(wildcard fuzz/fuzz_*.c)); do \
	    t=$$(basename $$src .c); \
	    mkdir -p build-fuzz/fuzz build-fuzz/corpus/$$t build-fuzz/seeds/$$t build-fuzz/artifacts; \
	    case $$t in fuzz_trainckpt) extra="$(FUZZ_TRAINCKPT_OBJ:%=build-fuzz/%)";; *) extra=;; esac; \
	    echo "  FUZZ $$t ($(FUZZ_SECONDS) s)"; \
	    $(FUZZ_CC) $(WARN) -g -O1 $(FUZZ_SAN) -fsanitize=fuzzer -D_POSIX_C_SOURCE=200809L \
	        $(INC_TST) -Ifuzz $$src $$extra build-fuzz/libngdengine.a build-fuzz/libngd.a $(LIBS) -lcjson -lz \
	        -o build-fuzz/fuzz/$$t; \
	    NGD_FUZZ_SEEDS_DIR=build-fuzz/seeds/$$t build-fuzz/fuzz/$$t -runs=0 \
	        build-fuzz/seeds/$$t 2>/dev/null >/dev/null || true; \
	    if ! build-fuzz/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        -artifact_prefix=build-fuzz/artifacts/$$t- build-fuzz/corpus/$$t build-fuzz/seeds/$$t \
	        $$(ls -d fuzz/corpus/$$t 2>/dev/null) >build-fuzz/fuzz/$$t.log 2>&1; then \
	        tail -n 40 build-fuzz/fuzz/$$t.log; echo "fuzz: $$t: a finding (build-fuzz/artifacts/)"; \
	        exit 1; fi; \
	    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)' build-fuzz/fuzz/$$t.log \
	        | tr '\n' ' '; echo; \
	done; echo "fuzz: no findings"

# `make mutate`: scripts/mutate.sh (a scratch copy of the tree per run; the tree is not
# touched). Exit 0 when every mutation is killed, 1 when some survive.
MUTATE_ARGS ?=
mutate: deps
	@bash scripts/mutate.sh $(MUTATE_ARGS)

bench: deps all $(BENCH_BIN)
	@bash bench/run.sh $(BUILD)

# `make bench-compare`: bench/pytorch_reference.py (the same models in Debian's PyTorch, from
# `scripts/deps.sh bench`) and `ngd bench train`, alternately, ROUNDS times each, on THREADS
# threads; prints ms per step and PyTorch/ngd ratios, and ngd's SINGD beside the quoted
# PyTorch+SINGD figures. MODELS of mlp, cnn, chargpt, vit, vgg16bn; COMPARE: more options of
# bench/compare.py (--steps, --warmup, --optims, --singd, --batch, --precision bf16, and
# --official-singd DIR to time the official SINGD package too). Never part of the tests.
MODELS ?= mlp,cnn,chargpt
THREADS ?= 2
ROUNDS ?= 3
COMPARE ?=
PYTHON ?= /usr/bin/python3
bench-compare:
	@bash scripts/deps.sh bench
	@$(MAKE) --no-print-directory all
	@$(PYTHON) bench/compare.py --ngd $(NGD) --python $(PYTHON) --models $(MODELS) \
	    --threads $(THREADS) --rounds $(ROUNDS) $(COMPARE)

# `make bench-kfac-author AUTHOR=DIR`: bench/kfac_author.py times one Fashion-MNIST epoch of the
# MLP (T_u 20, T_i 100) with the author's K-FAC and B-KFAC (DIR: a checkout of
# github.com/ConstantinPuiu/Distributed_Brand_and_Randomized_KFACs, not in Debian; run on the
# CPU) and with `ngd train`, alternately, ROUNDS times on THREADS threads; prints seconds, author
# / ngd and test accuracies. Never part of the tests.
AUTHOR ?=
bench-kfac-author:
	@test -n "$(AUTHOR)" || { echo "make bench-kfac-author: give AUTHOR=DIR, a checkout of" \
	    "github.com/ConstantinPuiu/Distributed_Brand_and_Randomized_KFACs" >&2; exit 1; }
	@bash scripts/deps.sh bench
	@$(MAKE) --no-print-directory all
	@$(PYTHON) bench/kfac_author.py --author $(AUTHOR) --ngd $(NGD) --python $(PYTHON) \
	    --threads $(THREADS) --rounds $(ROUNDS)

run: deps all
	@bash scripts/run.sh $(BUILD)

# the Python package (python/ngd) goes where Debian's python3 looks for PREFIX /usr/local and
# /usr: PREFIX/lib/python3.X/dist-packages (skipped when there is no $(PYTHON))
PYVER = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
PYSITE = $(PREFIX)/lib/python$(PYVER)/dist-packages
install: all
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(LIBA) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(LIBSO) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libngd.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libngd.so.$(VERSION_MAJOR)
	ln -sf libngd.so.$(VERSION_MAJOR) $(DESTDIR)$(PREFIX)/lib/libngd.so
	install -m 644 include/ngd.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(NGD) $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@LIBS_PRIVATE@|$(LIBS)$(if $(filter 1,$(OMP)), -lgomp)|g' \
	    ngd.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/ngd.pc
	@if [ -n "$(PYVER)" ]; then \
	    install -d $(DESTDIR)$(PYSITE)/ngd && \
	    install -m 644 python/ngd/__init__.py python/ngd/_lib.py python/ngd/torch.py $(DESTDIR)$(PYSITE)/ngd/ && \
	    echo 'LIBDIR = "$(PREFIX)/lib"' > $(DESTDIR)$(PYSITE)/ngd/_install.py && \
	    echo "installed the Python package ngd in $(DESTDIR)$(PYSITE)"; fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/lib/libngd.a $(DESTDIR)$(PREFIX)/lib/libngd.so* \
	      $(DESTDIR)$(PREFIX)/include/ngd.h $(DESTDIR)$(PREFIX)/bin/ngd \
	      $(DESTDIR)$(PREFIX)/lib/pkgconfig/ngd.pc
	rm -rf $(DESTDIR)$(PYSITE)/ngd

FMT_SRC = $(shell git ls-files '*.c' '*.h')
format:
	clang-format -i $(FMT_SRC)
format-check:
	clang-format --dry-run --Werror $(FMT_SRC)
# `make tidy`: clang-tidy with .clang-tidy's checks, each layer with its own include paths
# (several minutes; not part of the tests)
tidy:
	clang-tidy $(LIB_SRC) -- $(INC_LIB) -std=c11 -D_POSIX_C_SOURCE=200809L
	clang-tidy $(ENG_SRC) -- $(INC_ENG) -std=c11 -D_POSIX_C_SOURCE=200809L
	clang-tidy $(CLI_SRC) -- $(INC_CLI) -std=c11 -D_POSIX_C_SOURCE=200809L
	-cppcheck --quiet --enable=warning,performance,portability $(INC_LIB) $(LIB_SRC)

clean:
	rm -rf build build-san build-fuzz build-omp0

# (every build folder's header dependencies, BUILD=... ones too: without them an object of a
# custom BUILD kept an old struct layout after a header changed)
-include $(shell find $(sort build build-san $(BUILD)) -name '*.d' 2>/dev/null)
