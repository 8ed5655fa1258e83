"""Removing a tree atb made never enters what is mounted inside it, nor follows a link."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backup_core.tools import removal

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:35 / /tmp/atb-pg-x/with\\040space rw - tmpfs tmpfs rw\n"
    "41 22 8:1 /srv /tmp/atb-pg-x/data/bound rw - ext4 /dev/sda1 rw\n"
)


def test_mount_points_are_read_with_mountinfos_escapes_undone() -> None:
    assert removal.mount_points(MOUNTINFO) == frozenset(
        {"/", "/tmp/atb-pg-x/with space", "/tmp/atb-pg-x/data/bound"})
    assert removal.mount_points("") == frozenset()


def test_a_tree_is_removed_whole_and_a_link_in_it_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("kept")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "a" / "g").write_text("y")
    (tree / "link").symlink_to(outside)
    (tree / "a" / "filelink").symlink_to(outside / "keep")
    assert removal.remove_tree(tree) == ()
    assert not os.path.lexists(tree)
    assert (outside / "keep").read_text() == "kept"
    assert removal.remove_tree(tree) == ()  # already gone: nothing to do


def test_a_link_given_as_the_tree_is_unlinked_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("kept")
    (tmp_path / "link").symlink_to(target)
    assert removal.remove_tree(tmp_path / "link") == ()
    assert not os.path.lexists(tmp_path / "link")
    assert (target / "keep").read_text() == "kept"


def test_the_program_removes_the_tree_in_a_process_of_its_own(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_text("x")
    done = subprocess.run(removal.argv(tree), capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert not tree.exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_a_bind_mount_and_a_tmpfs_inside_the_tree_are_left_whole(tmp_path: Path) -> None:
    """`rm -rf --one-file-system` empties a bind mount of the same file system (measured:
    coreutils 9.1 deleted the bound directory's file); here both mounts are left, named."""
    script = textwrap.dedent(f"""
        import os, subprocess, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(removal.__file__).parents[2])!r})
        from backup_core.tools import removal
        base = Path({str(tmp_path)!r})
        tree, precious = base / "tree", base / "precious"
        (tree / "bound").mkdir(parents=True)
        (tree / "tmp").mkdir()
        (tree / "plain").mkdir()
        (tree / "plain" / "f").write_text("x")
        precious.mkdir()
        (precious / "file").write_text("keep")
        subprocess.run(["mount", "--bind", str(precious), str(tree / "bound")], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tree / "tmp")], check=True)
        (tree / "tmp" / "t").write_text("in tmpfs")
        left = removal.remove_tree(tree)
        print(sorted(str(p.relative_to(tree)) for p in left))
        print((precious / "file").read_text(), (tree / "tmp" / "t").read_text(),
              (tree / "bound" / "file").read_text(), (tree / "plain").exists())
        done = subprocess.run(removal.argv(tree), capture_output=True, text=True)
        print(done.returncode, sorted(done.stderr.splitlines()))
    """)
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable,
                           "-c", script], capture_output=True, text=True, check=False)
    if done.returncode != 0 and "unshare" in done.stderr and "Operation not permitted" in \
            done.stderr:
        pytest.skip(f"user and mount namespaces are not allowed here: {done.stderr.strip()}")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        "['bound', 'tmp']",
        "keep in tmpfs keep False",
        f"1 ['left {tmp_path}/tree/bound', 'left {tmp_path}/tree/tmp']",
    ]
