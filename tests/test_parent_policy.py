"""Parent locators are untrusted paths: the chain policy confines them."""

from __future__ import annotations

import os

import pytest

import vhdcore
from vhdcore import errors

MiB = 1024 * 1024


def make_pair(parent_path, child_path):
    with vhdcore.create(parent_path, MiB) as image:
        image.write(0, b"parent!")
    # The parent may lie outside the child's directory: these tests are about
    # opening such chains, so they allow it when creating them.
    with vhdcore.create(child_path, parent=parent_path,
                        allow_parent_dirs=[os.path.dirname(parent_path)]):
        pass


def test_parent_in_another_directory_needs_permission(tmp_path, cli):
    (tmp_path / "base").mkdir()
    (tmp_path / "leaf").mkdir()
    make_pair(tmp_path / "base" / "p.vhd", tmp_path / "leaf" / "c.vhd")
    with pytest.raises(errors.UnsafeParentError, match="outside the allowed directories"):
        vhdcore.open(tmp_path / "leaf" / "c.vhd")
    with vhdcore.open(tmp_path / "leaf" / "c.vhd", allow_parent_dirs=[tmp_path / "base"]) as c:
        assert c.read(0, 7) == b"parent!"
    code, _, err = cli("info", tmp_path / "leaf" / "c.vhd")
    assert code == 1 and "--allow-parent-dir" in err
    code, out, _ = cli("info", tmp_path / "leaf" / "c.vhd", "--allow-parent-dir", tmp_path / "base")
    assert code == 0 and "parent chain" in out


def test_subdirectory_of_the_leaf_directory_is_allowed(tmp_path):
    (tmp_path / "sub").mkdir()
    make_pair(tmp_path / "sub" / "p.vhd", tmp_path / "c.vhd")
    with vhdcore.open(tmp_path / "c.vhd") as child:
        assert child.parent.path.endswith(os.path.join("sub", "p.vhd"))


def test_symlinked_parent_refused_unless_allowed(tmp_path):
    (tmp_path / "real").mkdir()
    make_pair(tmp_path / "real" / "p.vhd", tmp_path / "real" / "c.vhd")
    (tmp_path / "leaf").mkdir()
    os.rename(tmp_path / "real" / "c.vhd", tmp_path / "leaf" / "c.vhd")
    # Put a link where the child's relative locator (..\real\p.vhd) and name look.
    os.symlink(tmp_path / "real" / "p.vhd", tmp_path / "leaf" / "p.vhd")
    with pytest.raises(errors.UnsafeParentError, match="symbolic link|outside"):
        vhdcore.open(tmp_path / "leaf" / "c.vhd")
    # Links allowed, but the target lies outside the allowed directories.
    with pytest.raises(errors.UnsafeParentError, match="outside"):
        vhdcore.open(tmp_path / "leaf" / "c.vhd", allow_symlinks=True)
    with vhdcore.open(
        tmp_path / "leaf" / "c.vhd", allow_symlinks=True, allow_parent_dirs=[tmp_path / "real"]
    ) as child:
        assert child.read(0, 7) == b"parent!"


def test_locator_naming_a_host_file_is_refused(tmp_path):
    """A crafted child whose only locator points at a file outside its directory."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "leaf").mkdir()
    secret = tmp_path / "elsewhere" / "secret.vhd"
    make_pair(secret, tmp_path / "elsewhere" / "c.vhd")
    os.rename(tmp_path / "elsewhere" / "c.vhd", tmp_path / "leaf" / "c.vhd")
    # Its W2ru (.\secret.vhd) now names nothing; its W2ku names the file outside.
    with pytest.raises(errors.UnsafeParentError, match="secret.vhd"):
        vhdcore.open(tmp_path / "leaf" / "c.vhd")
