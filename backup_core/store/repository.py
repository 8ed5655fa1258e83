"""An off-site copy of the backup tree in S3-compatible object storage (`s3://bucket/prefix`).

The repository holds the local tree's layout under its prefix. A backup is published by its
manifest object (`backup-<stamp>.json`), uploaded LAST, after the dump and the roles sidecar
(each a multipart upload with SHA-256-checksummed parts, invisible until complete): a reader
never sees a manifest whose dump is incomplete, and an interrupted push leaves nothing that
looks like a backup. The manifest object is the local manifest plus an `offsite` record (the
stored objects' keys, sizes, ciphertext and plaintext SHA-256, the recipients' fingerprints).
Encrypted (age recipients given), every object but that record is ciphertext, and the record
itself leaves out the row counts, checksums, inventory and definitions (they travel in the
encrypted full manifest).

Endpoint, region, addressing style and credentials come only from the standard AWS chain
(environment, shared config and credentials files, instance role): never from argv, and
never logged. boto3 is imported lazily: the light install needs none of this.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from backup_core.store import catalog, sealing
from backup_core.store.catalog import Backup
from backup_core.store.manifest import Manifest
from backup_core.store.naming import (
    DRILL_SUFFIX,
    DUMP_SUFFIX,
    MANIFEST_SUFFIX,
    ROLES_SUFFIX,
    backup_path,
    db_from_dir,
    dir_name,
    drill_path,
    manifest_path,
    roles_path,
    taken_at,
)
from backup_core.store.verdicts import DrillVerdict
from backup_core.tools.errors import (
    AtbError,
    ConfigError,
    ConnectionFailed,
    StorageError,
    VerifyFailed,
)
from backup_core.tools.extras import require

log = logging.getLogger("atb.repository")

AGE_SUFFIX = ".age"
FULL_MANIFEST = ".manifest.json"  # the whole manifest, encrypted, beside the record
OFFSITE_FORMAT = 1
# what an encrypted repository's plaintext record leaves out: the data's shape and content
PRIVATE_FIELDS = ("row_counts", "row_checksums", "inventory", "definitions", "conditions")
PART_SIZE = 8 << 20  # boto3's own default part size
_URL = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")
_STEM = re.compile(r"^(.*/)?(backup-\d{8}T\d{6}Z)(\..+)$")
# A cache of the small JSON objects (manifest records, drill histories) so that a listing of
# 10,000 backups reads a few segments instead of 10,000 objects. Each entry carries the
# object's ETag and is used only while the listing shows the same ETag: the listing decides
# what exists and what it holds, the index only saves the reads.
INDEX_DIR = ".index"
INDEX_FORMAT = 1
INDEX_SEGMENTS_MAX = 16


class Obj(NamedTuple):
    size: int
    modified: datetime
    etag: str


@dataclass(frozen=True)
class RepoUrl:
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty

    @classmethod
    def parse(cls, text: str) -> RepoUrl:
        m = _URL.match(text.strip())
        if not m:
            raise ConfigError(f"--repo {text!r} is not s3://bucket/prefix (endpoint, region "
                              "and credentials come from the AWS configuration)")
        prefix = (m.group(2) or "").strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise ConfigError(f"--repo {text!r}: the prefix has an empty, . or .. part")
        return cls(m.group(1), prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        return key[len(self.prefix) + 1:] if self.prefix else key


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


# -- the client ------------------------------------------------------------------------------


def _boto() -> Any:
    require("s3", what="an off-site repository (--repo / BACKUP_REPO)")
    import boto3

    return boto3


def _translate(exc: BaseException, repo: RepoUrl, doing: str) -> AtbError:
    """A store's refusal as one line a person can act on (never a key or a secret)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ConfigError(f"{doing} {repo}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",) or (code == "404" and "bucket" in doing):
            return ConnectionFailed(f"{doing} {repo}: bucket {repo.bucket!r} does not exist")
        if code == "RequestTimeTooSkewed" or _skewed(exc.response):
            return ConnectionFailed(f"{doing} {repo}: this host's clock is too far from the "
                                    "store's: fix the clock (NTP)")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") \
                or status == 403:
            return ConnectionFailed(f"{doing} {repo}: the store refused our credentials "
                                    f"({code or status}): check the AWS keys or profile and "
                                    "the key's permissions")
        if code == "RequestTimeTooSkewed" or _skewed(exc.response):
            return ConnectionFailed(f"{doing} {repo}: this host's clock is too far from the "
                                    "store's: fix the clock (NTP)")
        return ConnectionFailed(f"{doing} {repo}: the store answered {code or status}: "
                                f"{err.get('Message', '')}".rstrip(": "))
    if isinstance(exc, bx.BotoCoreError):
        return ConnectionFailed(f"{doing} {repo}: cannot reach the store: {exc}")
    return ConnectionFailed(f"{doing} {repo}: {exc}")


def _skewed(response: dict[str, Any]) -> bool:
    """Whether the store's clock (its Date header) is more than 5 minutes from ours: a
    signature it refuses for that reason looks like bad credentials (a HEAD has no body)."""
    from email.utils import parsedate_to_datetime

    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        theirs = parsedate_to_datetime(str(date))
    except (TypeError, ValueError):
        return False
    from botocore.auth import get_current_datetime  # the clock botocore signs with

    ours = get_current_datetime()
    ours = ours if ours.tzinfo else ours.replace(tzinfo=UTC)
    return bool(abs((theirs - ours).total_seconds()) > 300)


@contextmanager
def _store(repo: RepoUrl, doing: str) -> Iterator[None]:
    from botocore import exceptions as bx

    try:
        yield
    except (bx.BotoCoreError, bx.ClientError) as exc:
        raise _translate(exc, repo, doing) from exc


class Repository:
    """A connection to one repository; open it with `open_repository`."""

    def __init__(self, url: RepoUrl, client: Any) -> None:
        self.url = url
        self.client = client

    def __str__(self) -> str:
        return str(self.url)

    # -- objects --

    def objects(self) -> dict[str, Obj]:
        """Every object under the prefix: relative key -> (size, last modified, ETag).

        Read as raw XML pages through presigned URLs: botocore's parser costs ~0.3 s per
        1,000 keys, ElementTree ~0.01 s, and a repository of 10,000 backups holds 20,000 to
        40,000 objects. Anything unexpected falls back to botocore's paginator, whose errors
        are the ones a person reads."""
        try:
            return self._objects_fast()
        except Exception as exc:  # the paginator repeats it and says what went wrong
            log.debug("fast listing of %s failed (%s): using the paginator", self.url, exc)
        return self._objects_paginated()

    def _objects_fast(self) -> dict[str, Obj]:
        import xml.etree.ElementTree as ET
        from urllib.parse import unquote_plus

        import urllib3
        from botocore.httpsession import get_cert_path

        ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        verify = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
        http = urllib3.PoolManager(ca_certs=verify if isinstance(verify, str) else None,
                                   retries=urllib3.Retry(3, backoff_factor=0.2),
                                   timeout=urllib3.Timeout(connect=5, read=60))
        found: dict[str, Obj] = {}
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.url.bucket, "MaxKeys": 1000}
            if self.url.prefix:
                params["Prefix"] = self.url.key("")
            if token:
                params["ContinuationToken"] = token
            url = self.client.generate_presigned_url("list_objects_v2", Params=params,
                                                     ExpiresIn=300)
            response = http.request("GET", url, preload_content=True)
            if response.status != 200:
                raise ConnectionError(f"HTTP {response.status}")
            root = ET.fromstring(response.data)
            for item in root.iter(f"{ns}Contents"):
                key = unquote_plus(item.findtext(f"{ns}Key") or "")  # encoding-type=url
                found[self.url.rel(key)] = Obj(
                    int(item.findtext(f"{ns}Size") or 0),
                    datetime.fromisoformat(item.findtext(f"{ns}LastModified") or ""),
                    item.findtext(f"{ns}ETag") or "")
            if (root.findtext(f"{ns}IsTruncated") or "false").lower() != "true":
                return found
            token = root.findtext(f"{ns}NextContinuationToken")
            if not token:
                raise ValueError("a truncated page without a continuation token")

    def _objects_paginated(self) -> dict[str, Obj]:
        found: dict[str, Obj] = {}
        prefix = self.url.key("") if self.url.prefix else ""
        with _store(self.url, "listing"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.url.bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", ()):
                    found[self.url.rel(item["Key"])] = Obj(int(item["Size"]),
                                                           item["LastModified"],
                                                           str(item.get("ETag", "")))
        return found

    def head(self, rel: str) -> dict[str, Any] | None:
        from botocore import exceptions as bx

        try:
            out: dict[str, Any] = self.client.head_object(Bucket=self.url.bucket,
                                                          Key=self.url.key(rel))
            return out
        except bx.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise _translate(exc, self.url, "reading") from exc
        except bx.BotoCoreError as exc:
            raise _translate(exc, self.url, "reading") from exc

    def read_small(self, rel: str, limit: int = 64 << 20) -> bytes:
        with _store(self.url, f"reading {rel} from"):
            body = self.client.get_object(Bucket=self.url.bucket, Key=self.url.key(rel))["Body"]
            data: bytes = body.read(limit + 1)
        if len(data) > limit:
            raise VerifyFailed(f"{rel} in {self.url} is larger than {limit >> 20} MiB")
        return data

    def open(self, rel: str) -> Any:
        """A streaming body of one object."""
        from botocore import exceptions as bx

        try:
            return self.client.get_object(Bucket=self.url.bucket, Key=self.url.key(rel))["Body"]
        except bx.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise VerifyFailed(f"{rel} is gone from {self.url} (deleted while it was "
                                   "being read?): nothing was restored") from exc
            raise _translate(exc, self.url, f"reading {rel} from") from exc
        except bx.BotoCoreError as exc:
            raise _translate(exc, self.url, f"reading {rel} from") from exc

    def upload(self, path: Path, rel: str, *, metadata: dict[str, str],
               progress: Callable[[int], None] | None = None) -> None:
        """One file as one object: multipart past PART_SIZE, each part SHA-256-checksummed
        (the store refuses a part whose bytes differ), invisible until the last part lands."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                max_concurrency=10, use_threads=True)
        sent = [0]

        def count(n: int) -> None:  # boto3 reports each chunk; we report the running total
            sent[0] += n
            if progress is not None:
                progress(sent[0])

        with _store(self.url, f"uploading {rel} to"):
            self.client.upload_file(str(path), self.url.bucket, self.url.key(rel),
                                    ExtraArgs={"ChecksumAlgorithm": "SHA256",
                                               "Metadata": metadata},
                                    Config=config, Callback=count)

    def put(self, rel: str, data: bytes) -> None:
        with _store(self.url, f"writing {rel} to"):
            self.client.put_object(Bucket=self.url.bucket, Key=self.url.key(rel), Body=data,
                                   ChecksumAlgorithm="SHA256",
                                   ContentType="application/json")

    def delete(self, rels: list[str]) -> None:
        """Delete objects in the order given (the manifest record first)."""
        for rel in rels:
            with _store(self.url, f"deleting {rel} from"):
                self.client.delete_object(Bucket=self.url.bucket, Key=self.url.key(rel))


def open_repository(url: str) -> Repository:
    """Parse `url`, build a client from the standard AWS chain, and check that the bucket
    answers to these credentials (exit 4 when it does not), before any work starts."""
    repo = RepoUrl.parse(url)
    boto3 = _boto()
    from botocore.config import Config

    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                    read_timeout=60, max_pool_connections=32,
                    signature_version="s3v4")  # presigned URLs too (the fast listing)
    with _store(repo, "opening"):
        session = boto3.session.Session()
        client = session.client("s3", config=config,
                                region_name=session.region_name or "us-east-1")
    with _store(repo, "opening"):  # List is what even a read-only key may do
        client.list_objects_v2(Bucket=repo.bucket, Prefix=repo.key(""), MaxKeys=1)
    return Repository(repo, client)


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


# -- pushing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    key: str
    database: str
    taken_at: datetime | None
    size_bytes: int
    encrypted: bool
    uploaded: bool  # False: it was already off-site


@dataclass(frozen=True)
class PushReport:
    repository: str
    pushed: tuple[Pushed, ...]
    skipped: tuple[str, ...] = ()  # local files that are not sound backups, not pushed

    @property
    def uploaded(self) -> int:
        return sum(p.uploaded for p in self.pushed)


def remote_rel(manifest: Manifest) -> str:
    """The key (relative to the prefix) of a backup's dump: the local tree's layout."""
    at = datetime.fromisoformat(manifest.taken_at)
    return str(PurePosixPath(*backup_path(Path("x"), manifest.database, at).parts[1:]))


def push_backup(repo: Repository, dump: Path, manifest: Manifest, *,
                recipients: tuple[str, ...] = (), now: datetime | None = None,
                progress: Callable[[int], None] | None = None) -> Pushed:
    """Upload one sound local backup unless it is already off-site: dump, roles, (encrypted:
    the full manifest), then the manifest record last. An object of an earlier, interrupted
    push is reused when its recorded plaintext hash and recipients are the ones wanted."""
    rel = remote_rel(manifest)
    stem = rel[: -len(DUMP_SUFFIX)]
    if repo.head(stem + MANIFEST_SUFFIX) is not None:
        return Pushed(rel, manifest.database, _at(manifest), manifest.size_bytes,
                      bool(recipients), uploaded=False)
    prints = tuple(sealing.fingerprint(k) for k in recipients)
    suffix = AGE_SUFFIX if recipients else ""
    with tempfile.TemporaryDirectory(prefix="atb-push-") as tmp:
        def send(src: Path, key: str, expect: str, count: bool) -> StoredObject:
            tag = ",".join(prints)
            old = repo.head(key)
            meta = (old or {}).get("Metadata", {})
            if old is not None and meta.get("atb-plain-sha256") == expect \
                    and meta.get("atb-recipients", "") == tag and "atb-sha256" in meta:
                return StoredObject(key, int(old["ContentLength"]), meta["atb-sha256"],
                                    expect, int(meta.get("atb-plain-size", "0")))
            if recipients:
                sealed = Path(tmp) / "object"
                hashed = sealing.seal(src, sealed, recipients)
            else:  # plain: the file itself, hashed first (no copy of a large dump)
                sealed = src
                hashed = sealing.hash_file(src)
            if hashed.plain_sha256 != expect:
                raise VerifyFailed(f"{src} changed since its manifest was written: not pushed")
            repo.upload(sealed, key, metadata={
                "atb-plain-sha256": hashed.plain_sha256, "atb-sha256": hashed.stored_sha256,
                "atb-plain-size": str(hashed.plain_size), "atb-recipients": tag},
                progress=progress if count else None)
            if sealed != src:
                sealed.unlink()
            return StoredObject(key, hashed.stored_size, hashed.stored_sha256,
                                hashed.plain_sha256, hashed.plain_size)

        stored_dump = send(dump, rel + suffix, manifest.sha256, True)
        stored_roles = None
        if manifest.roles is not None:
            stored_roles = send(roles_path(dump), stem + ROLES_SUFFIX + suffix,
                                str(manifest.roles["sha256"]), False)
        full = None
        local_manifest = manifest_path(dump)
        if recipients:
            digest = sealing.hash_file(local_manifest).plain_sha256
            full = send(local_manifest, stem + FULL_MANIFEST + AGE_SUFFIX, digest, False)
        offsite = Offsite("age" if recipients else "none", prints, stored_dump, stored_roles,
                          full, (now or datetime.now(UTC)).isoformat(timespec="seconds"))
        data = json.loads(local_manifest.read_bytes())
        if recipients:
            for name in PRIVATE_FIELDS:
                data.pop(name, None)
        data["offsite"] = offsite.to_dict()
        drill = drill_path(dump)
        if drill.is_file() and not drill.is_symlink():
            repo.put(stem + DRILL_SUFFIX, drill.read_bytes())
        repo.put(stem + MANIFEST_SUFFIX, (json.dumps(data, indent=2, sort_keys=True)
                                          + "\n").encode())
    log.info("pushed %s to %s (%s)", rel, repo, "encrypted" if recipients else "plain")
    return Pushed(rel, manifest.database, _at(manifest), manifest.size_bytes, bool(recipients),
                  uploaded=True)


def _at(manifest: Manifest) -> datetime | None:
    try:
        return datetime.fromisoformat(manifest.taken_at)
    except ValueError:
        return None


STALE_UPLOAD = 86400  # an upload started a day ago is no longer running


def abort_stale_uploads(repo: Repository, *, now: datetime) -> int:
    """Abort the multipart uploads of pushes that died (never visible as objects, but the
    store keeps their parts and bills them); a day old is never a running push."""
    prefix = repo.url.key("") if repo.url.prefix else ""
    aborted = 0
    with _store(repo.url, "cleaning up interrupted uploads in"):
        page = repo.client.list_multipart_uploads(Bucket=repo.url.bucket, Prefix=prefix)
        for up in page.get("Uploads", ()):
            if (now - up["Initiated"]).total_seconds() > STALE_UPLOAD:
                repo.client.abort_multipart_upload(Bucket=repo.url.bucket, Key=up["Key"],
                                                   UploadId=up["UploadId"])
                aborted += 1
    if aborted:
        log.info("aborted %d interrupted upload(s) in %s", aborted, repo.url)
    return aborted


def push(repo: Repository, backup_dir: Path, *, recipients: tuple[str, ...] = (),
         database: str | None = None,
         progress: Callable[[int], None] | None = None) -> PushReport:
    """Upload every sound local backup the repository lacks, oldest first: idempotent and
    resumable, so cron may run it as often as it likes."""
    local = catalog.scan(backup_dir, database)
    abort_stale_uploads(repo, now=datetime.now(UTC))
    present = {r for r in repo.objects() if r.endswith(MANIFEST_SUFFIX)}
    pushed = []
    for b in sorted(catalog.complete_backups(local), key=lambda b: b.taken_at or datetime.min):
        assert b.manifest is not None
        rel = remote_rel(b.manifest)
        if rel[: -len(DUMP_SUFFIX)] + MANIFEST_SUFFIX in present:
            pushed.append(Pushed(rel, b.database, b.taken_at, b.size, bool(recipients), False))
            continue
        pushed.append(push_backup(repo, b.path, b.manifest, recipients=recipients,
                                  progress=progress))
    skipped = tuple(str(b.path) for b in local if b.is_backup and not b.complete)
    if any(p.uploaded for p in pushed):
        refresh_index(repo)
    return PushReport(str(repo), tuple(pushed), skipped)


# -- fetching --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """A backup downloaded into a local tree, both hashes proven."""

    key: str
    path: Path  # the local dump, in `BACKUP_DIR` layout under the fetch directory
    manifest: Manifest
    offsite: Offsite
    duration_s: float
    checks: tuple[str, ...] = field(default=())


def find(repo: Repository, key: str, *, now: datetime | None = None) -> RemoteBackup:
    """The repository's record of one backup, named by its dump's key (as `list` shows it),
    with or without the `s3://bucket/prefix/` in front."""
    full = str(repo.url) + "/"
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


def fetch(repo: Repository, remote: RemoteBackup, dest: Path, *,
          identity_file: Path | None = None,
          progress: Callable[[int], None] | None = None) -> Fetched:
    """Download one sound backup into `dest` (the local tree's layout), decrypting with the
    identity, and prove the stored and the plaintext SHA-256 of every object. Refuses before
    downloading when the backup is encrypted and the identity is missing or not a recipient."""
    import time

    b, offsite = remote.backup, remote.offsite
    if not b.complete or offsite is None or b.manifest is None:
        raise VerifyFailed(f"{b.path} in {repo.url} is not a sound backup ({b.state}"
                           f"{': ' + b.problem if b.problem else ''})")
    ids = None
    if offsite.encrypted:
        ids = sealing.identities(identity_file)
        if not sealing.identity_fingerprints(ids) & set(offsite.recipients):
            raise ConfigError(f"ATB_AGE_IDENTITY_FILE: none of its identities is a recipient "
                              f"of {b.path} (encrypted to {', '.join(offsite.recipients)})")
    started = time.monotonic()
    local = dest / b.path
    local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def get(obj: StoredObject, target: Path, count: bool) -> None:
        if obj.size_bytes > PART_SIZE:  # large: ranged GETs in parallel, then one local pass
            hashed = _get_large(obj, target, count)
        else:
            body = repo.open(obj.key)
            try:
                counted = _Counting(body, progress) if count and progress else body
                hashed = sealing.unseal(counted, target, ids=ids, what=obj.key)
            except OSError as exc:
                raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
            except Exception as exc:
                if isinstance(exc, AtbError):
                    raise
                raise _translate(exc, repo.url, f"downloading {obj.key} from") from exc
            finally:
                body.close()
        if (hashed.stored_size, hashed.stored_sha256) != (obj.size_bytes, obj.sha256):
            raise VerifyFailed(f"{obj.key} in {repo.url}: stored bytes differ from the "
                               "manifest's SHA-256 (altered, replaced or cut short)")
        if (hashed.plain_size, hashed.plain_sha256) != (obj.plain_size_bytes,
                                                        obj.plain_sha256):
            raise VerifyFailed(f"{obj.key} in {repo.url}: plaintext differs from the "
                               "manifest's SHA-256")

    def _get_large(obj: StoredObject, target: Path, count: bool) -> sealing.Hashed:
        from boto3.s3.transfer import TransferConfig
        from botocore import exceptions as bx

        stored = target if ids is None else target.with_name(target.name + AGE_SUFFIX)
        got = [0]

        def seen(n: int) -> None:
            got[0] += n
            if count and progress is not None:
                progress(got[0])

        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                max_concurrency=10)
        try:
            repo.client.download_file(repo.url.bucket, repo.url.key(obj.key), str(stored),
                                      Config=config, Callback=seen)
        except bx.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise VerifyFailed(f"{obj.key} is gone from {repo.url} (deleted while it was "
                                   "being read?): nothing was restored") from exc
            raise _translate(exc, repo.url, f"downloading {obj.key} from") from exc
        except bx.BotoCoreError as exc:
            raise _translate(exc, repo.url, f"downloading {obj.key} from") from exc
        except OSError as exc:
            raise StorageError(f"cannot write {stored}: {exc.strerror or exc}") from exc
        if ids is None:
            return sealing.hash_file(stored)
        try:
            with stored.open("rb") as fin:
                return sealing.unseal(fin, target, ids=ids, what=obj.key)
        finally:
            stored.unlink(missing_ok=True)

    try:
        get(offsite.dump, local, True)
        if b.manifest.sha256 != offsite.dump.plain_sha256:
            raise VerifyFailed(f"{b.path}: the offsite record and the manifest disagree")
        if offsite.roles is not None:
            get(offsite.roles, roles_path(local), False)
        if offsite.manifest is not None:
            get(offsite.manifest, manifest_path(local), False)
        else:
            data = json.loads(repo.read_small(remote.manifest_key))
            data.pop("offsite", None)
            manifest_path(local).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    except BaseException:
        for p in (local, local.with_name(local.name + AGE_SUFFIX), roles_path(local),
                  manifest_path(local)):
            p.unlink(missing_ok=True)
        raise
    from backup_core.store.manifest import read_manifest

    full = read_manifest(manifest_path(local))
    if full.sha256 != b.manifest.sha256 or full.file != b.manifest.file:
        raise VerifyFailed(f"{b.path}: the encrypted manifest does not describe this dump")
    return Fetched(str(b.path), local, full, offsite, time.monotonic() - started)


class _Counting:
    def __init__(self, body: Any, progress: Callable[[int], None]) -> None:
        self.body = body
        self.progress = progress
        self.done = 0

    def readinto(self, buf: Any) -> int:
        data = self.body.read(len(buf))
        n = len(data)
        buf[:n] = data
        self.done += n
        self.progress(self.done)
        return n

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.body.read(n)
        self.done += len(data)
        self.progress(self.done)
        return data

    def close(self) -> None:
        self.body.close()


def identities_for(remote: RemoteBackup, identity_file: Path | None) -> list[Any] | None:
    """The identities that open `remote` (None when it is not encrypted); refuses, before
    anything is read, a missing identity or one that is not among its recipients."""
    offsite = remote.offsite
    if offsite is None or not offsite.encrypted:
        return None
    ids = sealing.identities(identity_file)
    if not sealing.identity_fingerprints(ids) & set(offsite.recipients):
        raise ConfigError(f"ATB_AGE_IDENTITY_FILE: none of its identities is a recipient "
                          f"of {remote.backup.path} (encrypted to "
                          f"{', '.join(offsite.recipients)})")
    return ids


def read_through(repo: Repository, obj: StoredObject, out: Any, *,
                 ids: list[Any] | None) -> None:
    """Stream one object (decrypted) into the writer `out`, then prove its stored and its
    plaintext SHA-256 (`VerifyFailed` when either differs)."""
    body = repo.open(obj.key)
    try:
        hashed = sealing.unseal_to(body, out, ids=ids, what=obj.key)
    except AtbError:
        raise
    except Exception as exc:
        raise _translate(exc, repo.url, f"reading {obj.key} from") from exc
    finally:
        body.close()
    if (hashed.stored_size, hashed.stored_sha256) != (obj.size_bytes, obj.sha256):
        raise VerifyFailed(f"{obj.key} in {repo.url}: stored bytes differ from the "
                           "manifest's SHA-256 (altered, replaced or cut short)")
    if (hashed.plain_size, hashed.plain_sha256) != (obj.plain_size_bytes, obj.plain_sha256):
        raise VerifyFailed(f"{obj.key} in {repo.url}: plaintext differs from the manifest's "
                           "SHA-256")


@contextmanager
def fetched(repo: Repository, remote: RemoteBackup, *, identity_file: Path | None = None,
            progress: Callable[[int], None] | None = None) -> Iterator[Fetched]:
    """`fetch` into a private temporary directory, removed on the way out."""
    with tempfile.TemporaryDirectory(prefix="atb-fetch-") as tmp:
        os.chmod(tmp, 0o700)
        yield fetch(repo, remote, Path(tmp), identity_file=identity_file, progress=progress)


# -- pruning ---------------------------------------------------------------------------------


def delete_backup(repo: Repository, remote: RemoteBackup) -> list[str]:
    """The manifest record first (from then on no reader sees a backup), then the rest."""
    stem = str(remote.backup.path)[: -len(DUMP_SUFFIX)]
    keys = [remote.manifest_key, stem + DRILL_SUFFIX]
    if remote.offsite is not None:
        keys += [o.key for o in (remote.offsite.dump, remote.offsite.roles,
                                 remote.offsite.manifest) if o is not None]
    repo.delete(keys)
    return keys
