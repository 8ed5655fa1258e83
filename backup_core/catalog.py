"""What is in a backup directory: complete backups, and everything that is not one."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from backup_core.manifest import Manifest, ManifestError, read_manifest
from backup_core.naming import (
    DRILL_SUFFIX,
    DUMP_SUFFIX,
    MANIFEST_SUFFIX,
    VERIFY_SUFFIX,
    is_partial,
    taken_at,
)
from backup_core.verdicts import DrillVerdict, VerifyRecord, read_drill, read_verify

COMPLETE = "complete"
NO_MANIFEST = "no-manifest"
BAD_MANIFEST = "bad-manifest"
PARTIAL = "partial"
STRAY = "stray"
ORPHAN_MANIFEST = "orphan-manifest"


@dataclass(frozen=True)
class Backup:
    """One file of interest under the backup directory; `state` says what it is."""

    path: Path
    database: str
    state: str
    taken_at: datetime | None
    size: int
    mtime: float
    manifest: Manifest | None = None
    alembic_revision: str | None = None
    drill: DrillVerdict | None = None
    verified: VerifyRecord | None = None
    problem: str = ""

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE

    @property
    def is_backup(self) -> bool:
        """A dump filed under our naming scheme (with or without a usable manifest)."""
        return self.state in (COMPLETE, NO_MANIFEST, BAD_MANIFEST)

    @property
    def checked(self) -> str:
        """The strongest evidence we hold that this backup is good (or bad)."""
        if self.drill is not None:
            return "drill-passed" if self.drill.passed else "drill-failed"
        if self.verified is not None:
            return ("verified" + (" (deep)" if self.verified.deep else "")) if self.verified.ok \
                else "verify-failed"
        return "unverified"


def scan(backup_dir: Path, database: str | None = None, *,
         details: bool | Literal["summary"] = True) -> list[Backup]:
    """Everything under `backup_dir` (one database's subtree if given), newest first.

    With `details=False` manifests are not read (only drill verdicts, where present): enough
    for retention plans over tens of thousands of backups. With `"summary"` only each
    manifest's head is read, for the Alembic revision a listing shows.
    """
    if not backup_dir.is_dir():
        return []
    dbs = [database] if database else sorted(
        e.name for e in os.scandir(backup_dir) if e.is_dir() and not e.name.startswith(".")
    )
    found: list[Backup] = []
    for db in dbs:
        root = backup_dir / db
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            found.extend(_scan_dir(Path(dirpath), db, set(filenames), details))
    found.sort(key=lambda b: (b.taken_at.timestamp() if b.taken_at else b.mtime, b.path.name),
               reverse=True)
    return found


def _scan_dir(folder: Path, db: str, names: set[str],
              details: bool | Literal["summary"]) -> list[Backup]:
    out: list[Backup] = []
    manifests_used: set[str] = set()
    for name in sorted(names):
        path = folder / name
        if name == ".lock" and folder.name == db:
            continue
        if name.endswith((DRILL_SUFFIX, VERIFY_SUFFIX)) and not name.startswith("."):
            continue
        if is_partial(path):
            out.append(_record(path, db, PARTIAL, None))
            continue
        at = taken_at(path)
        if at is None:
            if name.endswith(MANIFEST_SUFFIX) and name.startswith("backup-"):
                continue  # judged below, once every dump has claimed its manifest
            out.append(_record(path, db, STRAY, None, problem="not named like a backup"))
            continue
        stem = name[: -len(DUMP_SUFFIX)]
        manifests_used.add(stem + MANIFEST_SUFFIX)
        if stem + MANIFEST_SUFFIX not in names:
            out.append(_record(path, db, NO_MANIFEST, at, problem="manifest missing"))
            continue
        # Sidecars are read only where they exist: a failed open per backup is the cost that
        # dominates a listing of tens of thousands.
        drill = read_drill(path) if stem + DRILL_SUFFIX in names else None
        if not details:  # retention needs only the drill verdicts
            out.append(_record(path, db, COMPLETE, at, drill=drill))
            continue
        verified = read_verify(path) if stem + VERIFY_SUFFIX in names else None
        mpath = folder / (stem + MANIFEST_SUFFIX)
        revision, readable = _summary(mpath) if details == "summary" else (None, False)
        if readable:
            out.append(_record(path, db, COMPLETE, at, alembic_revision=revision, drill=drill,
                               verified=verified))
            continue
        try:
            manifest = read_manifest(mpath)
        except ManifestError as exc:
            out.append(_record(path, db, BAD_MANIFEST, at, problem=str(exc)))
            continue
        out.append(_record(path, db, COMPLETE, at, manifest=manifest,
                           alembic_revision=manifest.alembic_revision, drill=drill,
                           verified=verified))
    for name in names:
        if (name.startswith("backup-") and name.endswith(MANIFEST_SUFFIX)
                and not name.endswith((DRILL_SUFFIX, VERIFY_SUFFIX))
                and name not in manifests_used):
            out.append(_record(folder / name, db, ORPHAN_MANIFEST, None,
                               problem="manifest without its dump"))
    return out


_HEAD = re.compile(rb'^\{\s*"alembic_revision":\s*(null|"((?:[^"\\]|\\.)*)")')


def _summary(manifest: Path) -> tuple[str | None, bool]:
    """(alembic revision, True) from the first bytes of a manifest we wrote (keys sorted, so
    `alembic_revision` comes first); (None, False) when that shape is not there."""
    try:
        with manifest.open("rb") as fh:
            head = fh.read(512)
    except OSError:
        return None, False
    m = _HEAD.match(head)
    if not m:
        return None, False
    return (m.group(2).decode() if m.group(2) is not None else None), True


def _record(path: Path, db: str, state: str, at: datetime | None, **extra: object) -> Backup:
    try:
        st = path.stat()
        size, mtime = st.st_size, st.st_mtime
    except OSError:
        size, mtime = 0, 0.0
    return Backup(path=path, database=db, state=state, taken_at=at, size=size, mtime=mtime,
                  **extra)  # type: ignore[arg-type]


def complete_backups(backups: list[Backup]) -> list[Backup]:
    return [b for b in backups if b.complete]


def find(backup_dir: Path, path: Path) -> Backup | None:
    """The catalog record of one dump path."""
    path = path.resolve()
    at = taken_at(path)
    if at is None or not path.name.endswith(DUMP_SUFFIX):
        return None
    for b in _scan_dir(path.parent, _database_of(backup_dir, path), {p.name for p in
                       path.parent.iterdir()}, True):
        if b.path == path:
            return b
    return None


def _database_of(backup_dir: Path, path: Path) -> str:
    try:
        return path.relative_to(backup_dir.resolve()).parts[0]
    except ValueError:
        return path.parents[3].name if len(path.parents) > 3 else ""
