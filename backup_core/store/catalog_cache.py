"""A cache of validated manifest heads, so `list` and `prune` over tens of thousands of backups
do not parse and validate every manifest again.

Trusted state in a catalog whose point is to trust nothing must not be able to make a backup
count that would not count without it. So:

- an entry is used only for the very bytes it was made from: the manifest is read every time
  and its SHA-256 must equal the entry's (its inode, size, mtime and ctime must match too), so
  a replaced, edited or re-dated manifest is parsed and validated afresh: a stale entry
  cannot survive a change to the file;
- the cache holds only what a manifest said after it passed full validation, and everything
  else (the dump's type, size, sparseness, links, the sidecars) is judged live on every scan;
- the file lives in a private directory (0700) of the user running atb, never in the shared
  backup tree, and carries an HMAC under a key kept beside it (0600): a cache edited by anyone
  without the key is ignored whole and rebuilt;
- a cache another atb wrote (another format, or heads validated by another `manifest.py`)
  is rebuilt, never read;
- any doubt (unreadable, foreign owner, wrong version, bad MAC) means no cache, never an error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
import tempfile
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from backup_core.store import manifest as manifest_module
from backup_core.store.manifest import MAX_MANIFEST_BYTES, Manifest

log = logging.getLogger("atb.catalog")

# 2: a head is its values in HEAD_FIELDS' order (named once, in the file's "fields"), not a
# mapping naming them in every entry: 35 MB for 50,000 backups became 22, read in half the time
VERSION = 2
# what list and prune read of a manifest; the rest (counts, inventory, definitions) is only
# ever read by commands that parse the manifest whole
HEAD_FIELDS = ("database", "file", "taken_at", "started_at", "finished_at", "duration_s",
               "size_bytes", "sha256", "pg_dump_version", "server_version", "toc_entries",
               "alembic_revision", "row_counts_mode", "source", "source_id", "clock_skew_s",
               "tool_version", "compression", "roles")


def _validator() -> str:
    """What validated the heads a cache holds: the SHA-256 of the module whose
    `Manifest.from_dict` judged them. A cache written by an atb that validates otherwise
    (another version, the same head fields) is rebuilt, never read; "" (the source cannot
    be read) matches no cache file."""
    try:
        return hashlib.sha256(Path(manifest_module.__file__ or "").read_bytes()).hexdigest()
    except OSError:
        return ""


VALIDATOR = _validator()
# "1": this process only reads the cache, never creates or writes it (a drill's child, where
# the directory is bound read-only and application code runs beside it)
READ_ONLY_ENV = "ATB_CATALOG_CACHE_READ_ONLY"
# where the cache is (`default_dir`): a directory, or `off`
DIR_ENV = "ATB_CATALOG_CACHE"


def default_dir() -> Path | None:
    """`ATB_CATALOG_CACHE` (`off`: no cache), else `$XDG_CACHE_HOME/atb/catalog` or
    `~/.cache/atb/catalog`."""
    given = os.environ.get(DIR_ENV, "")
    if given == "off":
        return None
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "atb" / "catalog"


def head_of(manifest: Manifest) -> list[Any]:
    """What the cache keeps of a validated manifest: its head's values, in HEAD_FIELDS' order."""
    return [getattr(manifest, name) for name in HEAD_FIELDS]


# the rest of a Manifest, as its defaults give it: a head holds none of it
_TAIL = [f for f in fields(Manifest) if f.name not in frozenset(HEAD_FIELDS)]
_TAIL_VALUES = {f.name: f.default for f in _TAIL if f.default is not MISSING}
_TAIL_FACTORIES = [(f.name, f.default_factory) for f in _TAIL
                   if f.default is MISSING and f.default_factory is not MISSING]
_FAST_HEAD = len(_TAIL_VALUES) + len(_TAIL_FACTORIES) == len(_TAIL)


def head_from(entry: object) -> Manifest | None:
    """The Manifest a cache entry's head stands for (the other fields at their defaults), or
    None when the entry is not one value per field of this atb's head. A cache file whose
    "fields" are not this atb's HEAD_FIELDS is not read at all (another version wrote it).

    Not through `Manifest.__init__`, whose per-field frozen assignments cost more than the
    rest of a cached backup's judging: the entry holds what `head_of` took from a manifest that
    had passed `Manifest.from_dict`, under the cache's MAC, and it is taken only for the exact
    bytes it was made from."""
    if not isinstance(entry, list) or len(entry) != len(HEAD_FIELDS):
        return None
    if not _FAST_HEAD:  # a new field without a default: the constructor says what is missing
        try:
            return Manifest(**dict(zip(HEAD_FIELDS, entry, strict=True)))
        except TypeError:
            return None
    head = object.__new__(Manifest)
    values = head.__dict__
    values.update(_TAIL_VALUES)
    for name, factory in _TAIL_FACTORIES:
        values[name] = factory()
    values.update(zip(HEAD_FIELDS, entry, strict=True))
    return head


@dataclass
class Read:
    """One manifest as read by a scan: its bytes' digest and stat key, and either its head
    from the cache (`head`) or nothing yet (the caller parses `raw` and calls `store`)."""

    key: list[int]
    digest: str
    raw: bytes
    head: Manifest | None


@dataclass
class CatalogCache:
    """The cache of one backup tree, loaded on `open`, written back by `save` if changed
    (never when `read_only`)."""

    directory: Path
    root: Path
    read_only: bool = False
    _key: bytes = b""
    _entries: dict[str, list[Any]] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _changed: bool = False
    hits: int = 0
    misses: int = 0

    @property
    def file(self) -> Path:
        name = hashlib.sha256(os.fsencode(os.path.realpath(self.root))).hexdigest()[:24]
        return self.directory / f"{name}.json"

    @classmethod
    def open(cls, directory: Path | None, root: Path) -> CatalogCache | None:
        """The cache for `root` in `directory`, empty when there is none yet or it cannot
        be trusted; None when there is no private directory to keep it in. Read-only
        (`READ_ONLY_ENV`), nothing is made: no directory or key yet is no cache."""
        if directory is None:
            return None
        read_only = os.environ.get(READ_ONLY_ENV) == "1"
        cache = cls(directory=directory, root=root, read_only=read_only)
        try:
            cache._key = _existing_key(directory) if read_only else _private_key(directory)
        except OSError as exc:
            log.debug("no catalog cache in %s: %s", directory, exc)
            return None
        cache._entries = cache._load()
        return cache

    def _load(self) -> dict[str, list[Any]]:
        try:
            data = _read_private(self.file)
        except OSError:
            return {}
        mac, _, payload = data.partition(b"\n")
        expected = hmac.new(self._key, payload, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(mac, expected):
            log.warning("catalog cache %s fails its MAC: ignored and rebuilt", self.file)
            return {}
        try:
            doc = json.loads(payload)
        except ValueError:
            return {}
        if not isinstance(doc, dict) or doc.get("version") != VERSION \
                or doc.get("root") != os.path.realpath(self.root) \
                or doc.get("fields") != list(HEAD_FIELDS) \
                or not VALIDATOR or doc.get("validator") != VALIDATOR \
                or not isinstance(doc.get("entries"), dict):
            return {}
        entries: dict[str, list[Any]] = doc["entries"]
        return entries

    def read(self, path: Path | str) -> Read:
        """The manifest at `path` (never through a link: `OSError` ELOOP), with its head
        from the cache when the entry was made from exactly these bytes."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{path} is not a regular file")
            raw = _read_all(fd, st.st_size)
        finally:
            os.close(fd)
        key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        digest = hashlib.sha256(raw).hexdigest()
        name = str(path)
        self._seen.add(name)
        entry = self._entries.get(name)
        if isinstance(entry, list) and len(entry) == 3 and entry[0] == key \
                and entry[1] == digest:
            head = head_from(entry[2])  # None: written by another atb version, parse afresh
            if head is not None:
                self.hits += 1
                return Read(key, digest, raw, head)
        self.misses += 1
        return Read(key, digest, raw, None)

    def store(self, path: Path | str, read: Read, manifest: Manifest) -> None:
        """Remember the head of a manifest that has just passed full validation."""
        self._entries[str(path)] = [read.key, read.digest, head_of(manifest)]
        self._changed = True

    def save(self, *, complete: bool) -> None:
        """Write the cache back (atomically, 0600) when it changed; a `complete` scan of the
        whole tree also forgets manifests no longer there. Failure to write costs only speed.
        A read-only cache is never written: it is skipped here, not left to fail."""
        if self.read_only:
            return
        if complete:
            gone = set(self._entries) - self._seen
            for name in gone:
                del self._entries[name]
            self._changed |= bool(gone)
        if not self._changed:
            return
        payload = json.dumps({"version": VERSION, "root": os.path.realpath(self.root),
                              "fields": HEAD_FIELDS, "validator": VALIDATOR,
                              "entries": self._entries},
                             separators=(",", ":")).encode()
        mac = hmac.new(self._key, payload, hashlib.sha256).hexdigest().encode()
        tmp: Path | None = None
        try:
            # a unique name (O_EXCL, 0600): a pid is not unique across PID namespaces
            fd, name = tempfile.mkstemp(dir=self.file.parent, prefix=f".{self.file.name}.",
                                        suffix=".tmp")
            tmp = Path(name)
            try:
                os.write(fd, mac + b"\n" + payload)
            finally:
                os.close(fd)
            os.replace(tmp, self.file)
        except OSError as exc:
            log.debug("catalog cache not written: %s", exc)
            if tmp is not None:
                tmp.unlink(missing_ok=True)


def _read_all(fd: int, size: int) -> bytes:
    """The file's bytes (one read when it is the size fstat gave), at most just past the
    largest manifest."""
    first = os.read(fd, min(size, MAX_MANIFEST_BYTES) + 1)
    if len(first) <= size:
        return first
    chunks = [first]
    total = len(first)
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_MANIFEST_BYTES:
            break
    return b"".join(chunks)


def _private_dir(directory: Path) -> None:
    """`directory` made 0700, and refused unless it is ours, not a link, and private."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(directory)


def _check_private(directory: Path) -> None:
    """Refused unless `directory` is ours, not a link, and private."""
    st = directory.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() \
            or st.st_mode & 0o077:
        raise OSError(f"{directory} is not a private directory of this user")


def _read_private(path: Path) -> bytes:
    """A file of ours that nobody else can have written."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise OSError(f"{path} is not a private file of this user")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def prepare(directory: Path | None) -> bool:
    """`directory` made the private cache directory with its key, as a scan would: a drill
    binds it read-only for its child only if it exists (else code in the drill could create
    it, and its key, for the host to trust). False when it cannot be made."""
    if directory is None:
        return False
    try:
        _private_key(directory)
    except OSError as exc:
        log.debug("no catalog cache in %s: %s", directory, exc)
        return False
    return True


def _existing_key(directory: Path) -> bytes:
    """The MAC key of a cache directory that exists already and is ours; nothing is made."""
    _check_private(directory)
    key = _read_private(directory / "key")
    if len(key) != 32:
        raise OSError(f"{directory / 'key'} is not a catalog cache key")
    return key


def _private_key(directory: Path) -> bytes:
    """The MAC key of this cache directory, made on first use (32 random bytes, 0600)."""
    _private_dir(directory)
    path = directory / "key"
    try:
        key = _read_private(path)
    except FileNotFoundError:
        key = os.urandom(32)
        tmp = directory / f".key.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, key)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another run made first
        except FileExistsError:
            key = _read_private(path)
        finally:
            tmp.unlink(missing_ok=True)
    if len(key) != 32:
        raise OSError(f"{path} is not a catalog cache key")
    return key
