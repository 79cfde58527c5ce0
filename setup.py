"""Build the Cython kernels; all metadata lives in pyproject.toml.

Set VHDCORE_DEBUG_BUILD=1 to compile with bounds and wraparound checks on,
so the kernel tests can be run once against a checked build.
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
        extra_compile_args=["-O3"] if not DEBUG else ["-O0", "-g"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
