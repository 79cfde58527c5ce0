"""Build the Cython kernels; all metadata lives in pyproject.toml.

Compiler directives are set here, once, for the whole extension. Set
VHDCORE_DEBUG_BUILD=1 to compile with bounds, wraparound and
initialisation checks on and without optimisation, so the kernel tests can
be run once against a checked build (``make test-debug``).
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("VHDCORE_DEBUG_BUILD", "") not in ("", "0")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

extensions = [
    Extension(
        "vhdcore._kernels",
        ["vhdcore/_kernels.pyx"],
        # Portable flags only: wheels must run on any x86-64 (or other)
        # host, so no -march=native; the kernels are written so that the
        # baseline instruction set vectorises them.
        extra_compile_args=["-O0", "-g", "-UNDEBUG"] if DEBUG else ["-O3"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        # The debug build's C goes to its own directory: cythonize only
        # compares timestamps, so sharing vhdcore/_kernels.c would let the
        # next optimised build reuse C generated with the checks on.
        build_dir="build/debug-c" if DEBUG else None,
    )
)
