"""Outside Cython code can cimport the kernels from the installed package.

A consumer module is written to ``tmp_path``, compiled against the
``_kernels.pxd`` that sits beside the imported ``vhdcore`` (include path:
the directory holding the package, as for any installed package), then run
in a child interpreter that sees the same ``vhdcore``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vhdcore

PACKAGE_PARENT = Path(vhdcore.__file__).resolve().parent.parent

CONSUMER = textwrap.dedent(
    """
    from libc.stdint cimport uint8_t
    from vhdcore._kernels cimport (
        c_bitmap_count, c_is_zero, c_vhd_checksum, load_be32, load_be64, store_be32,
    )

    def run(bytes data):
        cdef const uint8_t* p = data
        cdef uint8_t out[4]
        store_be32(out, 0x11223344)
        return (
            load_be32(p),
            load_be64(p),
            bytes(out[:4]),
            c_is_zero(p, len(data)),
            c_is_zero(p + 8, len(data) - 8),
            c_bitmap_count(p, 0, 64),
            c_vhd_checksum(p, len(data), 0),
        )
    """
)

SETUP = textwrap.dedent(
    """
    import sys
    from Cython.Build import cythonize
    from setuptools import Extension, setup

    setup(
        name="consumer",
        ext_modules=cythonize(
            [Extension("consumer", ["consumer.pyx"])],
            include_path=[sys.argv.pop()],
            compiler_directives={"language_level": 3},
            quiet=True,
        ),
        script_args=["build_ext", "--inplace", "-q"],
    )
    """
)


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        message = f"{module} is needed to compile a consumer (pip install -e '.[test]')"
        if os.environ.get("CI") or os.environ.get("VHDCORE_BACKEND", "").lower() == "cython":
            pytest.fail(message)
        pytest.skip(message)


def test_pxd_is_beside_the_package():
    assert (PACKAGE_PARENT / "vhdcore" / "_kernels.pxd").is_file()


def test_outside_pyx_cimports_the_kernels(tmp_path):
    _require("Cython")
    _require("setuptools")
    try:
        import vhdcore._kernels  # noqa: F401  (the consumer imports it at run time)
    except ImportError as exc:
        if os.environ.get("VHDCORE_BACKEND", "").strip().lower() == "cython":
            pytest.fail(f"vhdcore._kernels is not built: {exc}")
        pytest.skip(f"vhdcore._kernels is not built: {exc}")

    (tmp_path / "consumer.pyx").write_text(CONSUMER)
    (tmp_path / "setup.py").write_text(SETUP)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
    build = subprocess.run(
        [sys.executable, "setup.py", str(PACKAGE_PARENT)],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr

    data = bytes.fromhex("0102030405060708") + bytes(8)
    run = subprocess.run(
        [sys.executable, "-c", f"import consumer; print(consumer.run({data!r}))"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    expected = (
        0x01020304,
        0x0102030405060708,
        b"\x11\x22\x33\x44",
        False,
        True,
        1 + 1 + 2 + 1 + 2 + 2 + 3 + 1,  # set bits of 01..08
        ~sum(data[4:]) & 0xFFFFFFFF,
    )
    assert run.stdout.strip() == repr(expected)
