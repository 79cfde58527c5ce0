"""The valid samples: one image per layout vhdcore must read as it is."""

from __future__ import annotations

from pathlib import Path

from .build import (
    Sample,
    _dynamic,
    _pair,
    _pattern,
    _sample,
    build_fixed,
    content_digest,
)

# ---------------------------------------------------------------------------
# valid images


def valid_dynamic(directory) -> Sample:
    path, digest = _dynamic(directory, "valid_dynamic")
    return _sample("valid_dynamic", path, (), 0, digest=digest,
                   description="dynamic disk, blocks 0 and 2 partly written")


def valid_dynamic_full_last_block(directory) -> Sample:
    name = "valid_dynamic_full_last_block"
    path, digest = _dynamic(
        directory, name, blocks={3: [(0, _pattern(name, 3))]}, full_blocks=(0,),
    )
    return _sample(name, path, (), 0, digest=digest,
                   description="dynamic disk with an all-ones bitmap (as qemu writes) and the "
                               "last, partial block allocated")


def valid_fixed(directory) -> Sample:
    path = build_fixed(Path(directory) / "valid_fixed.vhd", name="valid_fixed")
    return _sample("valid_fixed", path, (), 0, digest=content_digest(path),
                   description="fixed disk of 4 MiB")


def valid_differencing(directory) -> Sample:
    child, parent, digest = _pair(directory, "valid_differencing")
    return _sample("valid_differencing", child, (), 0, digest=digest, files=(child, parent),
                   check_options={"parents": True},
                   description="differencing disk over a dynamic parent (W2ru and MacX locators)")


def valid_blktap(directory) -> Sample:
    name = "valid_blktap"
    path, digest = _dynamic(directory, name, blktap=True, full_blocks=(0,))
    return _sample(name, path, (), 0, digest=digest,
                   description="blktap layout: creator tap 1.3, batmap, 4 KiB-aligned data")


