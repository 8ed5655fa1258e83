"""`bench.drill --pick-tree`: with several sizes, each size's tree links its own dump only,
whatever the dumps' file names."""

from __future__ import annotations

import json
from pathlib import Path

from bench.drill import pick_tree


def _dump(folder: Path, stem: str, data: bytes) -> Path:
    folder.mkdir(parents=True)
    dump = folder / f"{stem}.dump"
    dump.write_bytes(data)
    (folder / f"{stem}.json").write_text(json.dumps(
        {"database": "shop", "file": dump.name, "taken_at": "2026-11-30T12:00:00+00:00"}))
    return dump


def test_two_sizes_get_two_trees_each_of_its_own_dump(tmp_path: Path) -> None:
    work = tmp_path / "work"
    small = _dump(tmp_path / "dumps" / "100MB", "backup-20261130T120000Z", b"small")
    # the same file name in another folder: two dumps given as SIZE=PATH may share one
    large = _dump(tmp_path / "dumps" / "1GB", "backup-20261130T120000Z", b"large!")
    trees = [pick_tree(small, work, 3, "100MB"), pick_tree(large, work, 2, "1GB")]
    assert trees == [work / "pick-100MB" / "tree-3", work / "pick-1GB" / "tree-2"]
    held = [sorted((p.relative_to(t).as_posix(), p.read_bytes()) for p in t.rglob("*.dump"))
            for t in trees]
    assert held == [
        [("shop/2026/11/30/backup-20261130T100000Z.dump", b"small"),
         ("shop/2026/11/30/backup-20261130T110000Z.dump", b"small"),
         ("shop/2026/11/30/backup-20261130T120000Z.dump", b"small")],
        [("shop/2026/11/30/backup-20261130T110000Z.dump", b"large!"),
         ("shop/2026/11/30/backup-20261130T120000Z.dump", b"large!")]]
    manifest = json.loads((trees[0] / "shop/2026/11/30/backup-20261130T100000Z.json").read_text())
    assert (manifest["file"], manifest["taken_at"]) == (
        "backup-20261130T100000Z.dump", "2026-11-30T10:00:00+00:00")
