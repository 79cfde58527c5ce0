"""The error root is format-neutral: ``ImageError``, still also called ``VHDError``."""

from __future__ import annotations

import inspect

import pytest

import vhdcore
from vhdcore import errors


def test_vhderror_is_the_same_class_as_imageerror():
    assert errors.VHDError is errors.ImageError
    assert vhdcore.ImageError is vhdcore.VHDError is errors.ImageError


@pytest.mark.parametrize(
    "cls",
    [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)],
)
def test_every_error_is_an_imageerror(cls):
    assert issubclass(cls, errors.ImageError)


def test_an_old_except_vhderror_still_catches(tmp_path):
    missing = tmp_path / "none.vhd"
    missing.write_bytes(b"conectix" + bytes(504))
    with pytest.raises(errors.VHDError):
        vhdcore.open(missing)
    with pytest.raises(errors.ImageError):
        vhdcore.open(missing)
