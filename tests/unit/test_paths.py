"""Path resolution confined to a rootfs: symlinks of every shape stay inside it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ocirt.linux import paths


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, int]:
    """(rootfs, host canary dir outside it, O_PATH fd of the rootfs)."""
    root = tmp_path / "rootfs"
    root.mkdir()
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("host")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield root, canary, fd
    os.close(fd)


def _host_listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("raw, cleaned", [
    ("", "/"), ("/", "/"), ("dev", "/dev"), ("/dev/../..//etc/./x/", "/etc/x"), ("//proc", "/proc"),
    ("../../../etc", "/etc"),
])
def test_clean_makes_absolute_normal_paths(raw: str, cleaned: str) -> None:
    assert paths.clean(raw) == cleaned


def test_absolute_symlink_resolves_inside_the_root(tree) -> None:
    root, canary, fd = tree
    (root / "mnt").mkdir()
    (root / "mnt" / "escape").symlink_to(canary)  # absolute host path
    before = _host_listing(canary)
    made = paths.mkdir_all(fd, "/mnt/escape/sub/dir")
    try:
        assert os.path.samestat(os.fstat(made), os.stat(root / str(canary).lstrip("/") / "sub" / "dir"))
    finally:
        os.close(made)
    assert _host_listing(canary) == before


def test_dotdot_symlink_cannot_climb_out(tree) -> None:
    root, canary, fd = tree
    (root / "up").symlink_to("../../../../../../../../" + str(canary).lstrip("/"))
    before = _host_listing(canary)
    made = paths.create_file(fd, "/up/file")
    os.close(made)
    assert (root / str(canary).lstrip("/") / "file").is_file()
    assert _host_listing(canary) == before


def test_open_in_root_clamps_dotdot_at_the_root(tree) -> None:
    root, _canary, fd = tree
    opened = paths.open_in_root(fd, "/../../..")
    try:
        assert os.path.samestat(os.fstat(opened), os.stat(root))
    finally:
        os.close(opened)


def test_dangling_symlink_is_followed_inside_the_root(tree) -> None:
    root, canary, fd = tree
    (root / "etc").mkdir()
    (root / "etc" / "bad").symlink_to(str(canary / "created-by-runtime"))
    (root / "etc" / "rel").symlink_to("../../../../../../../../" + str(canary).lstrip("/") + "/reldir")
    before = _host_listing(canary)
    os.close(paths.create_file(fd, "/etc/bad"))
    os.close(paths.mkdir_all(fd, "/etc/rel/x"))
    inside = root / str(canary).lstrip("/")
    assert (inside / "created-by-runtime").is_file()
    assert (inside / "reldir" / "x").is_dir()
    assert _host_listing(canary) == before


def test_symlink_loop_is_reported(tree) -> None:
    root, _canary, fd = tree
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(paths.PathError, match="symbolic links"):
        paths.mkdir_all(fd, "/a/x")


def test_component_that_is_a_file_is_reported(tree) -> None:
    root, _canary, fd = tree
    (root / "file").write_text("x")
    with pytest.raises(paths.PathError, match="not a directory"):
        paths.mkdir_all(fd, "/file/sub")


def test_create_file_keeps_an_existing_entry(tree) -> None:
    root, _canary, fd = tree
    (root / "data").write_text("kept")
    opened = paths.create_file(fd, "/data")
    os.close(opened)
    assert (root / "data").read_text() == "kept"


def test_created_entries_are_real_directories_and_files(tree) -> None:
    root, _canary, fd = tree
    made = paths.mkdir_all(fd, "/a/b/c", 0o700)
    os.close(made)
    assert stat.S_ISDIR(os.lstat(root / "a" / "b" / "c").st_mode)
    made = paths.create_file(fd, "/a/b/c/f")
    os.close(made)
    assert stat.S_ISREG(os.lstat(root / "a" / "b" / "c" / "f").st_mode)


def test_lstat_in_root_sees_the_link_itself(tree) -> None:
    root, canary, fd = tree
    (root / "proc").symlink_to(canary)
    st = paths.lstat_in_root(fd, "/proc")
    assert st is not None and stat.S_ISLNK(st.st_mode)
    assert paths.lstat_in_root(fd, "/missing/thing") is None
