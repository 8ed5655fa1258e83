"""What is in a backup directory: sound backups, and everything that is not one.

Nothing found in the tree is trusted. A backup is *sound* (state `complete`) only when its dump
is a real regular file, its manifest validates against the schema, names this file and this
database, its size matches, and it is not dated in the future. Only sound backups count toward
retention floors and tiers, status and drill picks; everything else is listed with its state
and a reason. No symbolic link is followed, at any level: a scan never leaves `BACKUP_DIR`.

Each backup belongs to a *source*: the server it was taken from (recorded in its manifest)
and its database. Backups of different sources never stand in for each other.
"""

from __future__ import annotations

import errno
import functools
import gc
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_core.store.catalog_cache import CatalogCache
from backup_core.store.manifest import Manifest, ManifestError, parse_manifest, read_manifest
from backup_core.store.naming import (
    DRILL_SUFFIX,
    DUMP_SUFFIX,
    MANIFEST_SUFFIX,
    SIDECAR_SUFFIXES,
    VERIFY_SUFFIX,
    db_from_dir,
    dir_name,
    is_partial_name,
    legacy_dir_name,
    name_taken_at,
    printable,
    pruned_name,
    taken_at,
)
from backup_core.store.verdicts import (
    DrillVerdict,
    VerifyRecord,
    effective,
    read_drill_history,
    read_verify,
)
from backup_core.tools.errors import ConfigError

log = logging.getLogger("atb.catalog")

COMPLETE = "complete"
NO_MANIFEST = "no-manifest"
BAD_MANIFEST = "bad-manifest"
DAMAGED = "damaged"
CORRUPT = "verify-failed"
FUTURE = "future"
PARTIAL = "partial"
STRAY = "stray"
ORPHAN_MANIFEST = "orphan-manifest"
MISFILED = "misfiled"
PRUNING = "pruning"  # a dump an interrupted prune had started to delete (see naming)
# Dumps filed under our naming scheme, whatever their state. Only `complete` ones may ever be
# pruned; the others are counted to tell a healthy tree from one that looks wrong.
BACKUP_STATES = frozenset({COMPLETE, NO_MANIFEST, BAD_MANIFEST, DAMAGED, CORRUPT, FUTURE,
                           MISFILED})
# How far ahead of our clock a backup may be dated before it is an anomaly.
CLOCK_SKEW = timedelta(minutes=5)


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
    drills: tuple[DrillVerdict, ...] = ()
    verified: VerifyRecord | None = None
    problem: str = ""
    # the manifest holds only its head, from the catalog cache (list and prune): counts,
    # inventory and definitions are read by the commands that parse it whole
    head_only: bool = False

    @property
    def drill(self) -> DrillVerdict | None:
        """The drill verdict that stands (a PASS is never hidden by a later verdict the
        backup did not cause)."""
        return effective(self.drills)

    @property
    def source(self) -> str:
        """The server and database this backup is of; manifests from before atb recorded
        the server share one source per database name."""
        if self.manifest is not None and self.manifest.source_id:
            return f"{self.manifest.source_id}, database {self.database}"
        return f"unknown source of database {self.database}"

    @property
    def complete(self) -> bool:
        """Sound: counts toward floors, tiers, status and drill picks."""
        return self.state == COMPLETE

    @property
    def is_backup(self) -> bool:
        """A dump filed under our naming scheme (sound or not)."""
        return self.state in BACKUP_STATES

    @property
    def checked(self) -> str:
        """The strongest evidence we hold that this backup is good (or bad)."""
        drill = self.drill
        if drill is not None:
            if drill.verdict == "INCOMPLETE":
                return "drill-incomplete"
            if drill.passed:
                return "drill-passed"
            return "drill-failed" if drill.decides else "drill-error"
        if self.verified is not None:
            if self.verified.ok:
                return "verified" + (" (deep)" if self.verified.deep else "")
            # an older atb recorded tool failures too: they say nothing about the file
            return "verify-failed" if self.verified.condemns else "unverified (tool failed)"
        return "unverified"


def database_dirs(backup_dir: Path, database: str | None = None) -> list[tuple[Path, str]]:
    """(directory, database it is named for) for each real directory at the top of the tree.

    A directory whose name `dir_name` would not write is a legacy one (the first layout
    cleaned names lossily); its backups are told apart by their manifests."""
    try:
        entries = list(os.scandir(backup_dir))
    except OSError:
        return []
    wanted = None if database is None else {dir_name(database), legacy_dir_name(database)}
    found = []
    for e in sorted(entries, key=lambda e: e.name):
        if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
            continue
        if wanted is not None and e.name not in wanted:
            continue
        found.append((Path(e.path), db_from_dir(e.name) or e.name))
    return found


def real_tree(backups: list[Backup], *, root: Path | None = None) -> str:
    """When `root` (BACKUP_DIR) is not the backup tree but a level off it, the line naming
    the real one and what to do; empty otherwise. Said by prune (which refuses), status
    (which refuses) and list (which warns): a database named "2026" is this, not a database."""
    unsound = [b for b in backups if b.is_backup and not b.complete]
    roots = sorted({r for b in backups if b.state == MISFILED
                    for r in [_real_root(b)] if r is not None}
                   | {r for b in unsound for r in [_deeper_root(b, root)] if r is not None},
                   key=str)
    if not roots:
        return ""
    where = roots[0]
    how = ("BACKUP_DIR points inside it" if root is not None and root != where
           and root.is_relative_to(where) else "backups are filed one level below BACKUP_DIR")
    return (f"{printable(str(where))} looks like the real backup tree ({how}): point "
            "BACKUP_DIR there")


def _deeper_root(b: Backup, root: Path | None) -> Path | None:
    """For a dump filed as `<dir>/<db>/<YYYY>/<MM>/<DD>/<file>` where `<dir>` lies below
    `root` (not `root` itself), that `<dir>`: the tree starts one level down."""
    if root is None or len(b.path.parents) < 5:
        return None
    year, tree = b.path.parents[2].name, b.path.parents[4]
    if len(year) == 4 and year.isdigit() and tree != root and tree.is_relative_to(root):
        return tree
    return None


def _real_root(b: Backup) -> Path | None:
    """For a mis-filed backup, the directory it would be correctly filed under (the parent
    of the directory named for its manifest's database), when that is not where it is."""
    if b.manifest is None:
        return None
    names = {dir_name(b.manifest.database), legacy_dir_name(b.manifest.database)}
    for folder in b.path.parents:
        if folder.name in names:
            return folder.parent
    return None


def require_tree(backup_dir: Path) -> Path:
    """`backup_dir` as a command that reads the tree needs it: a directory that exists. A
    mistyped BACKUP_DIR is then one line and exit 2, not an empty tree that lists nothing and
    prunes nothing in silence (only `backup` creates it)."""
    try:
        st = os.stat(backup_dir)
    except FileNotFoundError:
        raise ConfigError(f"BACKUP_DIR {printable(str(backup_dir))} does not exist "
                          "(`atb db backup` creates it)") from None
    except OSError as exc:
        raise ConfigError(f"BACKUP_DIR {printable(str(backup_dir))} cannot be read: "
                          f"{exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"BACKUP_DIR {printable(str(backup_dir))} is not a directory")
    return backup_dir


def scan(backup_dir: Path, database: str | None = None, *,
         now: datetime | None = None, cache_dir: Path | None = None) -> list[Backup]:
    """Everything under `backup_dir` (one database's backups if given), newest first.

    With `cache_dir`, manifests whose exact bytes were validated before are not parsed
    again and their backups carry only the manifest's head (see `catalog_cache`)."""
    now = now or datetime.now(UTC)
    with collector_paused():
        return _scan(backup_dir, database, now=now, cache_dir=cache_dir)


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a scan runs: a scan allocates a few objects per
    file (records, heads, the cache's entries) and makes no cycles, yet each allocation burst
    set off full collections that walked everything made so far, a fifth of a 50,000-backup
    scan. Reference counting still frees all that is dropped; the collector runs again after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _scan(backup_dir: Path, database: str | None, *, now: datetime,
          cache_dir: Path | None) -> list[Backup]:
    cache = CatalogCache.open(cache_dir, backup_dir) if cache_dir is not None else None
    found: list[Backup] = [] if database is not None else _top_level_links(backup_dir)
    for root, named in database_dirs(backup_dir, database):
        for dirpath, dirnames, filenames in os.walk(root):  # never follows symlinked dirs
            folder = Path(dirpath)
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            dirnames[:] = sorted(d for d in dirnames if d not in links)
            for d in links:
                found.append(_record(folder / d, named, STRAY, None,
                                     problem="symbolic link: not followed"))
            found.extend(_scan_dir(folder, named, set(filenames), now, top=root.name,
                                   cache=cache, where=dirpath))
    if cache is not None:
        cache.save(complete=database is None)
    if database is not None:
        found = [b for b in found if b.database == database]
    found.sort(key=lambda b: (b.taken_at.timestamp() if b.taken_at else b.mtime, b.path.name),
               reverse=True)
    return found


def _top_level_links(backup_dir: Path) -> list[Backup]:
    """Symbolic links at the top of the tree: shown, never scanned as a database."""
    try:
        links = [Path(e.path) for e in os.scandir(backup_dir) if e.is_symlink()]
    except OSError:
        return []
    return [_record(p, p.name, STRAY, None, problem="symbolic link: not followed")
            for p in links]


def _scan_dir(folder: Path, db: str, names: set[str], now: datetime, *,
              top: str, cache: CatalogCache | None = None, where: str) -> list[Backup]:
    """The files of one directory (`where`, as `folder`), asked about by name: one Path is
    built per file recorded, none per question (a scan of 50,000 backups is mostly this)."""
    out: list[Backup] = []
    manifests_used: set[str] = set()
    for name in sorted(names):
        if name == ".lock" or (name.endswith(SIDECAR_SUFFIXES) and not name.startswith(".")):
            continue
        if name.startswith("backup-") and name.endswith(MANIFEST_SUFFIX):
            continue  # never named like a dump; judged below, once every dump has claimed its
        if is_partial_name(name):
            out.append(_record(folder / name, db, PARTIAL, None))
            continue
        pruned = pruned_name(name)
        if pruned is not None:
            manifests_used.add(pruned[: -len(DUMP_SUFFIX)] + MANIFEST_SUFFIX)
            out.append(_record(folder / name, db, PRUNING, name_taken_at(pruned),
                               problem="left by an interrupted prune: the next prune "
                                       "finishes deleting it"))
            continue
        at = name_taken_at(name)
        if at is None:
            out.append(_record(folder / name, db, STRAY, None, problem="not named like a backup"))
            continue
        manifests_used.add(name[: -len(DUMP_SUFFIX)] + MANIFEST_SUFFIX)
        out.append(_judge(folder / name, db, at, names, now, top=top, cache=cache,
                          where=os.path.join(where, name)))
    for name in names:
        if (name.startswith("backup-") and name.endswith(MANIFEST_SUFFIX)
                and not name.endswith(SIDECAR_SUFFIXES)
                and name not in manifests_used):
            out.append(_record(folder / name, db, ORPHAN_MANIFEST, None,
                               problem="manifest without its dump"))
    return out


def _judge(path: Path, db: str, at: datetime, names: set[str], now: datetime, *,
           top: str | None, cache: CatalogCache | None = None,
           where: str | None = None) -> Backup:
    """The state of one dump named like a backup (`path`, spelt `where`), trusting nothing
    about it."""
    where = str(path) if where is None else where
    stem = path.name[: -len(DUMP_SUFFIX)]
    drills = read_drill_history(path) if stem + DRILL_SUFFIX in names else ()
    verified = read_verify(path) if stem + VERIFY_SUFFIX in names else None
    try:
        st = os.lstat(where)
    except OSError as exc:
        return _record(path, db, DAMAGED, at, problem=f"cannot stat: {exc.strerror}")
    extra: dict[str, object] = {"stat": st}
    if stat.S_ISLNK(st.st_mode):
        return _record(path, db, STRAY, at, problem="symbolic link: not followed", **extra)
    if not stat.S_ISREG(st.st_mode):
        return _record(path, db, DAMAGED, at, problem="not a regular file", **extra)
    if stem + MANIFEST_SUFFIX not in names:
        return _record(path, db, NO_MANIFEST, at, problem="manifest missing", **extra)
    try:  # the dump's name ends in DUMP_SUFFIX: its manifest is beside it
        manifest, head_only = _manifest(where[: -len(DUMP_SUFFIX)] + MANIFEST_SUFFIX, cache)
    except ManifestError as exc:
        return _record(path, db, BAD_MANIFEST, at, problem=str(exc), **extra)
    extra["head_only"] = head_only
    database = manifest.database
    db = db or database
    extra.update(manifest=manifest, drills=drills, verified=verified,
                 alembic_revision=manifest.alembic_revision)
    if top is not None and top not in _dir_names(manifest.database):
        return _record(path, db, MISFILED, at, problem=f"manifest names database "
                       f"{manifest.database!r}, filed under {top!r}", **extra)
    if manifest.file != path.name:
        return _record(path, database, DAMAGED, at,
                       problem=f"manifest describes {manifest.file}", **extra)
    if st.st_size != manifest.size_bytes:
        return _record(path, database, DAMAGED, at, problem=f"{st.st_size} bytes, manifest "
                       f"says {manifest.size_bytes} (truncated or replaced)", **extra)
    if st.st_size > 65536 and st.st_blocks * 512 < st.st_size // 8:
        return _record(path, database, DAMAGED, at,
                       problem="sparse file: holes where the dump's data should be", **extra)
    if verified is not None and verified.condemns:
        return _record(path, database, CORRUPT, at, problem=verified.reason, **extra)
    if at > now + CLOCK_SKEW:
        return _record(path, database, FUTURE, at, problem="dated in the future: a clock "
                       "was wrong when it was taken; not counted toward anything", **extra)
    return _record(path, database, COMPLETE, at, **extra)


@functools.lru_cache(maxsize=256)
def _dir_names(database: str) -> tuple[str, str]:
    """The directories a database's backups may be filed under (asked once per backup)."""
    return dir_name(database), legacy_dir_name(database)


def _manifest(mpath: str, cache: CatalogCache | None) -> tuple[Manifest, bool]:
    """The manifest at `mpath` validated whole, or its head when the cache holds one made
    from these exact bytes; never through a symbolic link."""
    if cache is None:
        if os.path.islink(mpath):
            raise ManifestError("manifest is a symbolic link")
        return read_manifest(Path(mpath)), False
    try:
        got = cache.read(mpath)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ManifestError("manifest is a symbolic link") from exc
        if exc.errno == errno.ENOENT:
            raise ManifestError(f"no manifest at {mpath}") from exc
        raise ManifestError(f"unreadable manifest {mpath}: {exc}") from exc
    if got.head is not None:
        return got.head, True
    manifest = parse_manifest(got.raw, Path(mpath))
    cache.store(mpath, got, manifest)
    return manifest, False


def _record(path: Path, db: str, state: str, at: datetime | None, **extra: object) -> Backup:
    known = extra.pop("stat", None)
    try:
        st = known if isinstance(known, os.stat_result) else path.lstat()
        size, mtime = st.st_size, st.st_mtime
    except OSError:
        size, mtime = 0, 0.0
    given = {"path": path, "database": db, "state": state, "taken_at": at, "size": size,
             "mtime": mtime}
    if given.keys() & extra.keys():  # as the constructor would: a field given twice
        raise TypeError(f"fields given twice: {sorted(given.keys() & extra.keys())}")
    values = dict(_BACKUP_DEFAULTS, **given)
    values.update(extra)
    if values.keys() != _BACKUP_FIELDS or not _BACKUP_FAST:  # the constructor says what's wrong
        return Backup(**values)
    backup = object.__new__(Backup)  # not its frozen per-field assignments (a scan of 50,000
    backup.__dict__.update(values)  # backups spent 0.1 s on them): every field given once
    return backup


_BACKUP_FIELDS = frozenset(f.name for f in fields(Backup))
_BACKUP_DEFAULTS = {f.name: f.default for f in fields(Backup) if f.default is not MISSING}
# a field with a factory (a fresh list per record) would need the constructor
_BACKUP_FAST = all(f.default_factory is MISSING for f in fields(Backup))


def of_database(found: list[Backup], backup_dir: Path, database: str) -> list[Backup]:
    """What `scan(backup_dir, database)` finds, taken from `found`, a scan of the whole tree
    (`scan(backup_dir)`): the records of `database` filed under its directories, in the same
    order. A caller holding the whole tree's scan does not scan it again (pure)."""
    wanted = set(_dir_names(database))
    under = str(backup_dir)
    prefix = "" if under == "." else under.rstrip("/") + "/"  # as scandir spells the paths
    out = []
    for b in found:
        text = str(b.path)
        if b.database == database and text.startswith(prefix):
            top, sep, _ = text[len(prefix):].partition("/")
            if sep and top in wanted:
                out.append(b)
    return out


def complete_backups(backups: list[Backup]) -> list[Backup]:
    return [b for b in backups if b.complete]


def find(backup_dir: Path, path: Path, *, now: datetime | None = None) -> Backup | None:
    """The catalog record of one dump path (which may lie outside `backup_dir`)."""
    path = path.absolute()
    if taken_at(path) is None or not path.name.endswith(DUMP_SUFFIX):
        return None
    folder = path.parent
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return None
    top = _top_dir(backup_dir, path)
    db = (db_from_dir(top) or top) if top else ""
    return _judge(path, db, taken_at(path) or datetime.now(UTC), names,
                  now or datetime.now(UTC), top=top)


def _top_dir(backup_dir: Path, path: Path) -> str | None:
    """The database directory `path` is filed under inside `backup_dir`; None outside it,
    where only the manifest says which database a dump belongs to."""
    try:
        rel = path.relative_to(backup_dir.absolute())
    except ValueError:
        return None
    return rel.parts[0] if len(rel.parts) > 1 else None


@dataclass(frozen=True)
class Listed:
    """One backup as `atb db list` publishes it, aged at the time of listing."""

    path: Path
    database: str
    state: str
    taken_at: datetime | None
    age_s: float | None
    size_bytes: int
    alembic_revision: str | None
    checked: str
    drill: DrillVerdict | None
    drills: int
    verified: VerifyRecord | None
    source: str
    problem: str
    backup: Backup = field(repr=False, metadata={"json": False})  # the rest, for people


def listing(backup_dir: Path, database: str | None = None, *,
            now: datetime | None = None, cache_dir: Path | None = None) -> tuple[Listed, ...]:
    """Every file of interest, newest first, with its age and the evidence held for it
    (manifests through the catalog cache in `cache_dir`, when given)."""
    now = now or datetime.now(UTC)
    found = scan(require_tree(backup_dir), database, now=now, cache_dir=cache_dir)
    hint = real_tree(found, root=backup_dir)
    if hint:  # listed all the same: a list shows what is there
        log.warning("%s", hint)
    with collector_paused():  # 50,000 records made in a burst, no cycles (see scan)
        return tuple(_listed(
            path=b.path, database=b.database, state=b.state, taken_at=b.taken_at,
            age_s=(now - b.taken_at).total_seconds() if b.taken_at else None,
            size_bytes=b.size, alembic_revision=b.alembic_revision, checked=b.checked,
            drill=b.drill, drills=len(b.drills), verified=b.verified, source=b.source,
            problem=b.problem, backup=b) for b in found)


_LISTED_FIELDS = frozenset(f.name for f in fields(Listed))


def _listed(**values: object) -> Listed:
    """A `Listed` of exactly its fields, not through `__init__`, whose frozen per-field
    assignments were half the cost of listing 50,000 scanned backups. Listed has no defaults
    and no post-init: every field is given here, each once (a missing or extra one raises)."""
    if values.keys() != _LISTED_FIELDS:
        raise TypeError(f"Listed fields: {sorted(values.keys() ^ _LISTED_FIELDS)}")
    listed = object.__new__(Listed)
    listed.__dict__.update(values)
    return listed
