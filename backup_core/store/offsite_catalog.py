"""The repository's catalog: which backups it holds, judged as the local catalog judges a
tree, from one listing and the manifest records.

A backup is published by its manifest object (`backup-<stamp>.json`), uploaded last, after
the dump and the roles sidecar: a reader never sees a manifest whose dump is incomplete. The
manifest object is the local manifest plus an `offsite` record (the stored objects' keys,
sizes, ciphertext and plaintext SHA-256, the recipients' fingerprints). Encrypted, every
object but that record is ciphertext, and the record leaves out the row counts, checksums,
inventory and definitions (they travel in the encrypted full manifest).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_core.store import catalog
from backup_core.store.catalog import Backup
from backup_core.store.manifest import Manifest
from backup_core.store.naming import (
    DRILL_SUFFIX,
    DUMP_SUFFIX,
    MANIFEST_SUFFIX,
    db_from_dir,
    dir_name,
    taken_at,
)
from backup_core.store.repository import (
    AGE_SUFFIX,
    INDEX_DIR,
    INDEX_FORMAT,
    INDEX_SEGMENTS_MAX,
    OFFSITE_FORMAT,
    PRIVATE_FIELDS,
    Obj,
    Repository,
)
from backup_core.store.verdicts import DrillVerdict
from backup_core.tools.errors import (
    AtbError,
    ConfigError,
)

_STEM = re.compile(r"^(.*/)?(backup-\d{8}T\d{6}Z)(\..+)$")


@dataclass(frozen=True)
class StoredObject:
    key: str  # relative to the repository's prefix
    size_bytes: int
    sha256: str  # of the bytes stored (the ciphertext when encrypted)
    plain_sha256: str
    plain_size_bytes: int


@dataclass(frozen=True)
class Offsite:
    """How a backup is stored off-site: the `offsite` record of its manifest object."""

    encryption: str  # "age" or "none"
    recipients: tuple[str, ...]  # fingerprints of the public keys it was encrypted to
    dump: StoredObject
    roles: StoredObject | None
    manifest: StoredObject | None  # the full manifest (encrypted repositories only)
    uploaded_at: str

    def to_dict(self) -> dict[str, Any]:
        def obj(o: StoredObject | None) -> dict[str, Any] | None:
            return None if o is None else {
                "key": o.key, "size_bytes": o.size_bytes, "sha256": o.sha256,
                "plain_sha256": o.plain_sha256, "plain_size_bytes": o.plain_size_bytes}
        return {"format": OFFSITE_FORMAT, "encryption": self.encryption,
                "recipients": list(self.recipients), "dump": obj(self.dump),
                "roles": obj(self.roles), "manifest": obj(self.manifest),
                "uploaded_at": self.uploaded_at}

    @classmethod
    def from_dict(cls, data: object) -> Offsite:
        if not isinstance(data, dict) or data.get("format") != OFFSITE_FORMAT:
            raise ValueError("no offsite record of a known format")

        def obj(d: object) -> StoredObject | None:
            if d is None:
                return None
            if not isinstance(d, dict):
                raise ValueError("an offsite object is not a JSON object")
            try:
                o = StoredObject(str(d["key"]), int(d["size_bytes"]), str(d["sha256"]),
                                 str(d["plain_sha256"]), int(d["plain_size_bytes"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"an offsite object lacks {exc}") from None
            if ".." in o.key.split("/") or o.key.startswith("/"):
                raise ValueError("an offsite object's key leaves the repository")
            return o
        dump = obj(data.get("dump"))
        if dump is None:
            raise ValueError("the offsite record names no dump")
        encryption = data.get("encryption")
        if encryption not in ("age", "none"):
            raise ValueError("unknown encryption")
        return cls(str(encryption), tuple(str(r) for r in data.get("recipients", [])), dump,
                   obj(data.get("roles")), obj(data.get("manifest")),
                   str(data.get("uploaded_at", "")))

    @property
    def encrypted(self) -> bool:
        return self.encryption == "age"


@dataclass(frozen=True)
class RemoteBackup:
    """One backup in the repository, judged like a local one (`catalog.Backup`, whose path
    is the key relative to the prefix)."""

    backup: Backup
    offsite: Offsite | None
    manifest_key: str


# -- reading the catalog ---------------------------------------------------------------------


def _stem(rel: str) -> tuple[str, str] | None:
    """(directory/backup-<stamp>, suffix) of a key named like a backup's object."""
    m = _STEM.match(rel)
    if m is None or any(part in ("", ".", "..") for part in rel.split("/")):
        return None  # never a path that could leave a download directory
    return (m.group(1) or "") + m.group(2), m.group(3)


def scan(repo: Repository, database: str | None = None, *,
         now: datetime | None = None, workers: int = 32) -> list[RemoteBackup]:
    """Every backup in the repository (one database's if given), newest first: one listing,
    the index segments, and the manifest records the index lacks read concurrently."""
    return _scan(repo, database, now=now, workers=workers)[0]


Fresh = dict[str, tuple[str, Any]]  # key -> (ETag, JSON) of what was read outside the index


def _scan(repo: Repository, database: str | None = None, *, now: datetime | None = None,
          workers: int = 32) -> tuple[list[RemoteBackup], Fresh, dict[str, Obj]]:
    now = now or datetime.now(UTC)
    objects = repo.objects()
    stems: dict[str, dict[str, str]] = {}
    for rel in objects:
        parsed = _stem(rel)
        if parsed is not None:
            stems.setdefault(parsed[0], {})[parsed[1]] = rel
    if database is not None:
        top = dir_name(database) + "/"
        stems = {s: v for s, v in stems.items() if s.startswith(top)}
    wanted = [v[k] for v in stems.values() for k in (MANIFEST_SUFFIX, DRILL_SUFFIX) if k in v]
    segments = {k: o for k, o in objects.items() if k.startswith(INDEX_DIR + "/")}
    data, fresh = _small_objects(repo, wanted, objects, segments, workers)
    found = [_judge(stem, parts, data.get(stem + MANIFEST_SUFFIX), objects, now,
                    drill=data.get(parts[DRILL_SUFFIX]) if DRILL_SUFFIX in parts else None)
             for stem, parts in stems.items()]
    if database is not None:
        found = [f for f in found if f.backup.database == database]
    found.sort(key=lambda r: (r.backup.taken_at or now, r.backup.path.name), reverse=True)
    return found, fresh, segments


def _small_objects(repo: Repository, rels: list[str], objects: dict[str, Obj],
                   segments: dict[str, Obj], workers: int,
                   ) -> tuple[dict[str, Any], Fresh]:
    """The JSON of each of `rels` (an `AtbError` for one that cannot be read): from the
    index where its ETag is the listing's, else read (and returned in `Fresh` too)."""
    def segment(rel: str) -> dict[str, Any]:
        try:
            doc = json.loads(repo.read_small(rel))
        except (AtbError, ValueError, RecursionError):
            return {}
        if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT \
                or not isinstance(doc.get("objects"), dict):
            return {}
        return dict(doc["objects"])

    def read(rel: str) -> tuple[str, Any]:
        try:
            return rel, json.loads(repo.read_small(rel))
        except AtbError as exc:
            return rel, exc
        except (ValueError, RecursionError) as exc:
            return rel, AtbError(f"unreadable manifest: {exc}")

    index: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(segment, sorted(segments)):
            index.update(part)
        out: dict[str, Any] = {}
        missing = []
        for rel in rels:
            hit = index.get(rel)
            etag = objects[rel].etag
            if isinstance(hit, dict) and etag and hit.get("etag") == etag and "json" in hit:
                out[rel] = hit["json"]
            else:
                missing.append(rel)
        fresh: Fresh = {}
        for rel, value in pool.map(read, missing):
            out[rel] = value
            if not isinstance(value, AtbError) and objects[rel].etag:
                fresh[rel] = (objects[rel].etag, value)
    return out, fresh


def _lean(value: Any) -> Any:
    """What the catalog reads of a record: a plain repository's record less the data's shape
    (row counts, inventory, definitions can be megabytes; a restore reads the record itself)."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in PRIVATE_FIELDS}
    return value


def refresh_index(repo: Repository) -> int:
    """Add what a listing had to read to the index (one new segment), folding every segment
    into one past `INDEX_SEGMENTS_MAX`. Returns the entries written. Safe to race: entries
    are checked against the listing's ETags, duplicates are harmless."""
    import uuid

    _, fresh, segments = _scan(repo)
    if not fresh and len(segments) <= INDEX_SEGMENTS_MAX:
        return 0
    name = f"{INDEX_DIR}/{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.json"
    entries = {rel: {"etag": etag, "json": _lean(value)} for rel, (etag, value) in fresh.items()}
    fold = len(segments) + 1 > INDEX_SEGMENTS_MAX
    if fold:  # everything the listing shows, read through the index, in one segment
        objects = repo.objects()
        rels = [k for k in objects if k.endswith((MANIFEST_SUFFIX, DRILL_SUFFIX))
                and _stem(k) is not None]
        data, _ = _small_objects(repo, rels, objects, segments, 32)
        entries = {rel: {"etag": objects[rel].etag, "json": _lean(value)}
                   for rel, value in data.items() if not isinstance(value, AtbError)}
    repo.put(name, json.dumps({"format": INDEX_FORMAT, "objects": entries}).encode())
    if fold:
        repo.delete(sorted(segments))
    return len(entries)


def _judge(stem: str, parts: dict[str, str], data: Any, objects: dict[str, Obj],
           now: datetime, *, drill: Any) -> RemoteBackup:
    dump_rel = stem + DUMP_SUFFIX
    path = Path(dump_rel)
    at = taken_at(path)
    top = stem.split("/", 1)[0]
    db_named = db_from_dir(top) or top
    size, modified, _ = objects.get(parts.get(DUMP_SUFFIX + AGE_SUFFIX) or dump_rel,
                                    Obj(0, now, ""))

    def record(state: str, problem: str = "", **extra: Any) -> Backup:
        return Backup(path=path, database=extra.pop("database", db_named), state=state,
                      taken_at=at, size=size, mtime=modified.timestamp(), problem=problem,
                      **extra)

    manifest_key = stem + MANIFEST_SUFFIX
    if data is None:
        return RemoteBackup(record(catalog.NO_MANIFEST, "no manifest object: an upload that "
                                   "did not finish (the next push completes it)"), None,
                            manifest_key)
    if isinstance(data, AtbError):
        return RemoteBackup(record(catalog.BAD_MANIFEST, str(data)), None, manifest_key)
    try:
        manifest = Manifest.from_dict(data)
        offsite = Offsite.from_dict(data.get("offsite"))
    except (ValueError, RecursionError) as exc:
        return RemoteBackup(record(catalog.BAD_MANIFEST, f"unreadable manifest: {exc}"), None,
                            manifest_key)
    drills = _drills(drill)
    extra: dict[str, Any] = {"manifest": manifest, "alembic_revision": manifest.alembic_revision,
             "database": manifest.database, "drills": drills}
    stored = objects.get(offsite.dump.key)
    if top not in (dir_name(manifest.database),):
        return RemoteBackup(record(catalog.MISFILED, f"manifest names database "
                                   f"{manifest.database!r}, filed under {top!r}", **extra),
                            offsite, manifest_key)
    if manifest.file != path.name or not offsite.dump.key.startswith(stem + DUMP_SUFFIX):
        return RemoteBackup(record(catalog.DAMAGED, f"manifest describes {manifest.file}",
                                   **extra), offsite, manifest_key)
    if stored is None:
        return RemoteBackup(record(catalog.DAMAGED, "dump object missing", **extra), offsite,
                            manifest_key)
    if stored[0] != offsite.dump.size_bytes:
        return RemoteBackup(record(catalog.DAMAGED, f"{stored[0]} bytes stored, manifest says "
                                   f"{offsite.dump.size_bytes} (truncated or replaced)",
                                   **extra), offsite, manifest_key)
    if at is not None and at > now + catalog.CLOCK_SKEW:
        return RemoteBackup(record(catalog.FUTURE, "dated in the future: a clock was wrong "
                                   "when it was taken; not counted toward anything", **extra),
                            offsite, manifest_key)
    return RemoteBackup(record(catalog.COMPLETE, **extra), offsite, manifest_key)


def _drills(data: Any) -> tuple[DrillVerdict, ...]:
    """The drill history pushed beside a backup (read as the local reader reads it)."""
    from backup_core.store import verdicts

    if not isinstance(data, dict):
        return ()
    history = data.get("history")
    items = history if isinstance(history, list) else [data]
    return tuple(v for v in map(verdicts._verdict, items) if v is not None)


def listing(repo: Repository, database: str | None = None, *,
            now: datetime | None = None) -> tuple[catalog.Listed, ...]:
    now = now or datetime.now(UTC)
    return tuple(catalog.Listed(
        path=b.path, database=b.database, state=b.state, taken_at=b.taken_at,
        age_s=(now - b.taken_at).total_seconds() if b.taken_at else None,
        size_bytes=b.size, alembic_revision=b.alembic_revision, checked=b.checked,
        drill=b.drill, drills=len(b.drills), verified=b.verified, source=b.source,
        problem=b.problem, backup=b) for b in (r.backup for r in scan(repo, database, now=now)))


def find(repo: Repository, key: str, *, now: datetime | None = None) -> RemoteBackup:
    """The repository's record of one backup, named by its dump's key (as `list` shows it),
    with or without the `s3://bucket/prefix/` in front (or `s3:/...`, what a command-line
    path made of the URL: one slash)."""
    if key.startswith("s3:/") and not key.startswith("s3://"):
        key = "s3://" + key[len("s3:/"):]
    full = str(repo.url) + "/"
    if key.startswith("s3://") and not key.startswith(full):
        raise ConfigError(f"{key} is not in the repository {repo.url}: give its key as `atb "
                          "db list --repo` shows it, or --repo its repository")
    rel = key[len(full):] if key.startswith(full) else key.lstrip("/")
    parsed = _stem(rel)
    if parsed is None:
        raise ConfigError(f"{key!r} does not name a backup in {repo.url} (see `atb db list "
                          "--repo`)")
    top = parsed[0].split("/", 1)[0]
    database = db_from_dir(top) or top
    for r in scan(repo, database, now=now):
        if str(r.backup.path)[: -len(DUMP_SUFFIX)] == parsed[0]:
            return r
    raise ConfigError(f"no backup {rel} in {repo.url}")
