# The two commands the README promises, and the pieces they are made of.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test test-cython test-reference test-debug bench-smoke bench

install:
	$(PIP) install -e ".[test]"

demo: install
	$(PYTHON) -m vhdcore demo

# Full suite under both kernel backends, the kernel tests against a
# bounds-checked debug build, and every benchmark once with timing off.
test: install test-cython test-reference test-debug bench-smoke

test-cython:
	VHDCORE_BACKEND=cython $(PYTHON) -m pytest

test-reference:
	VHDCORE_BACKEND=reference $(PYTHON) -m pytest

test-debug:
	VHDCORE_DEBUG_BUILD=1 $(PYTHON) setup.py -q build_ext --inplace --force
	VHDCORE_BACKEND=cython $(PYTHON) -m pytest -q tests/test_kernels.py; status=$$?; \
	$(PYTHON) setup.py -q build_ext --inplace --force; exit $$status

bench-smoke:
	VHDCORE_BACKEND=cython $(PYTHON) -m pytest benchmarks --benchmark-disable -q

bench:
	VHDCORE_BACKEND=cython $(PYTHON) -m pytest benchmarks --benchmark-only
