# The two commands the README promises, and the pieces they are made of.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test test-cython test-reference test-debug bench-smoke bench bench-kernels

install:
	$(PIP) install -e ".[test,bench]"

# The demo needs only the package itself (numpy), not the test tools.
demo:
	$(PIP) install -e .
	$(PYTHON) -m vhdcore demo

# Full suite under both kernel backends, the kernel tests against a
# bounds-checked debug build, and every benchmark once with timing off.
test: install test-cython test-reference test-debug bench-smoke

test-cython:
	VHDCORE_BACKEND=cython $(PYTHON) -m pytest

test-reference:
	VHDCORE_BACKEND=reference $(PYTHON) -m pytest

# The kernel and mutation tests against a build with Cython's checks and C
# assertions on, then the optimised build again (also when the tests fail).
test-debug:
	VHDCORE_DEBUG_BUILD=1 $(PYTHON) setup.py -q build_ext --inplace --force
	VHDCORE_BACKEND=cython $(PYTHON) -m pytest -q tests/test_kernels.py tests/test_mutations.py; status=$$?; \
	$(PYTHON) setup.py -q build_ext --inplace --force; exit $$status

# bench_*.py are collected because pyproject.toml lists them in python_files;
# without that pytest would collect nothing here and exit with status 5.
bench-smoke:
	VHDCORE_BACKEND=cython $(PYTHON) -m pytest benchmarks --benchmark-disable -q

bench:
	VHDCORE_BACKEND=cython $(PYTHON) -m pytest benchmarks --benchmark-only

# Only the kernel tables (and their ratio summary) quoted in the README.
bench-kernels:
	VHDCORE_BACKEND=cython $(PYTHON) -m pytest benchmarks/bench_zero.py \
	    benchmarks/bench_checksum.py benchmarks/bench_bitmap.py benchmarks/bench_bat.py \
	    --benchmark-only
