"""Moving backups to and from the repository: push (dump, roles, then the manifest record
last; idempotent and resumable), fetch (both hashes proven, decrypted), and deletion.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from backup_core.store import catalog, sealing, signing
from backup_core.store.manifest import Manifest
from backup_core.store.naming import (
    DRILL_SUFFIX,
    DUMP_SUFFIX,
    MANIFEST_SUFFIX,
    ROLES_SUFFIX,
    backup_path,
    drill_path,
    manifest_path,
    roles_path,
)
from backup_core.store.offsite_catalog import (
    Offsite,
    RemoteBackup,
    StoredObject,
    refresh_index,
)
from backup_core.store.repository import (
    AGE_SUFFIX,
    FULL_MANIFEST,
    PART_SIZE,
    PRIVATE_FIELDS,
    Repository,
    guarded,
    translate,
)
from backup_core.tools import reaper
from backup_core.tools.errors import (
    AtbError,
    ConfigError,
    StorageError,
    VerifyFailed,
)

log = logging.getLogger("atb.repository")

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
                progress: Callable[[int], None] | None = None,
                signer: signing.Signer | None = None) -> Pushed:
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

    def send(src: Path, key: str, expect: str, count: bool) -> StoredObject:
        tag = ",".join(prints)
        old = repo.head(key)
        meta = (old or {}).get("Metadata", {})
        if old is not None and meta.get("atb-plain-sha256") == expect \
                and meta.get("atb-recipients", "") == tag and "atb-sha256" in meta:
            return StoredObject(key, int(old["ContentLength"]), meta["atb-sha256"],
                                expect, int(meta.get("atb-plain-size", "0")))
        if recipients and src.stat().st_size > PART_SIZE:
            hashed = _upload_sealing(repo, src, key, expect, recipients, tag,
                                     progress=progress if count else None)
        elif recipients:  # one part at most: sealed in memory, no ciphertext on disk
            sealed = io.BytesIO()
            try:
                hashed = sealing.seal_to(src, sealed, recipients)
            except OSError as exc:  # reading the file: nothing uploaded
                raise StorageError(f"cannot encrypt {src}: {exc.strerror or exc}") from exc
            if hashed.plain_sha256 != expect:
                raise VerifyFailed(f"{src} changed since its manifest was written: "
                                   "not pushed")
            repo.put_sealed(key, sealed.getvalue(), metadata=_meta(hashed, tag),
                            progress=progress if count else None)
        else:  # plain: the file itself (no copy), hashed while it uploads
            hashed = _upload_hashing(repo, src, key, expect, tag,
                                     progress=progress if count else None)
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
    if signer is not None:
        data[SIGNATURE] = sign_record(data, signer)
    repo.put(stem + MANIFEST_SUFFIX, _canonical(data))
    log.info("pushed %s to %s (%s)", rel, repo, "encrypted" if recipients else "plain")
    return Pushed(rel, manifest.database, _at(manifest), manifest.size_bytes, bool(recipients),
                  uploaded=True)


SIGNATURE = "signature"


def _canonical(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def sign_record(data: dict[str, Any], signer: signing.Signer) -> dict[str, str]:
    """An Ed25519 signature of the manifest record (everything but the signature, in its
    canonical JSON): it covers the offsite hashes, so it vouches for every object."""
    import base64

    body = {k: v for k, v in data.items() if k != SIGNATURE}
    return {"key": signer.public.fingerprint,
            "ed25519": base64.b64encode(signer.sign(_canonical(body))).decode()}


def check_signed(repo: Repository, remote: RemoteBackup, trusted: signing.PublicKey) -> None:
    """Refuse (before anything is downloaded) a backup whose manifest record, read afresh,
    is unsigned, signed by another key, or altered since it was signed, and one whose
    catalog entry differs from the record that was signed (age proves who may read a
    backup, not who wrote it: anyone who may write to the bucket could plant one)."""
    import base64
    import binascii

    where = f"{remote.manifest_key} in {repo.url}"
    try:
        data = json.loads(repo.read_small(remote.manifest_key))
    except ValueError as exc:
        raise VerifyFailed(f"{where} is not JSON: not downloaded") from exc
    sig = data.pop(SIGNATURE, None) if isinstance(data, dict) else None
    if not isinstance(sig, dict):
        raise VerifyFailed(f"{where} is not signed, and a signer is required "
                           "(--repo-signer): not downloaded")
    try:
        raw = base64.b64decode(str(sig.get("ed25519", "")), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if sig.get("key") != trusted.fingerprint or not trusted.verifies(raw, _canonical(data)):
        raise VerifyFailed(f"{where} is not signed by the trusted key {trusted.fingerprint[:16]}"
                           f" (--repo-signer; signed by {str(sig.get('key'))[:16]}): not "
                           "downloaded")
    signed = Offsite.from_dict(data.get("offsite")) if data.get("offsite") else None
    if signed != remote.offsite:
        raise VerifyFailed(f"{where} changed while it was read: not downloaded")


def _meta(hashed: sealing.Hashed, tag: str) -> dict[str, str]:
    return {"atb-plain-sha256": hashed.plain_sha256, "atb-sha256": hashed.stored_sha256,
            "atb-plain-size": str(hashed.plain_size), "atb-recipients": tag}


def _upload_hashing(repo: Repository, src: Path, key: str, expect: str, tag: str, *,
                    progress: Callable[[int], None] | None) -> sealing.Hashed:
    """Upload a plain file while another thread hashes it (hashlib releases the GIL): the
    upload is not held back by a pass of its own. A file whose hash is not its manifest's
    (changed since the backup) has its object deleted again; the manifest record, which
    alone makes a backup visible, is never written for it."""
    from concurrent.futures import ThreadPoolExecutor

    size = src.stat().st_size
    claimed = sealing.Hashed(size, expect, size, expect)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="atb-hash") as pool:
        hashing = pool.submit(sealing.hash_file, src)
        try:
            repo.upload(src, key, metadata=_meta(claimed, tag), progress=progress)
        finally:
            hashed = hashing.result()
    if hashed != claimed:
        repo.delete([key])
        raise VerifyFailed(f"{src} changed since its manifest was written: not pushed")
    return hashed


def _upload_sealing(repo: Repository, src: Path, key: str, expect: str,
                    recipients: tuple[str, ...], tag: str, *,
                    progress: Callable[[int], None] | None) -> sealing.Hashed:
    """Encrypt a large file straight into its upload: a thread seals and hashes the next
    parts while earlier ones upload (OpenSSL and hashlib release the GIL), into part buffers
    given back as each part is stored; no ciphertext copy is written to disk. The
    ciphertext's hash is known only at the end, so the object's metadata lacks it and a
    later push never reuses the object (it is sealed again). An upload whose stream failed
    is aborted (never an object); an object whose plaintext hash is not the manifest's is
    deleted again; its manifest record is never written."""
    size = src.stat().st_size
    with sealing.SealedStream(src, recipients, part=PART_SIZE) as stream:
        try:
            repo.upload_parts(stream, key, progress=progress, sent=stream.recycle, metadata={
                "atb-plain-sha256": expect, "atb-plain-size": str(size),
                "atb-recipients": tag})
        except OSError as exc:  # reading the dump: the upload was abandoned, never completed
            if exc is not stream.failed:
                raise
            # nothing to delete: the multipart upload was aborted, and what the key may
            # already hold is not this push's
            raise StorageError(f"cannot encrypt {src}: {exc.strerror or exc}") from exc
        hashed = stream.hashed()
    if hashed.plain_sha256 != expect:
        repo.delete([key])
        raise VerifyFailed(f"{src} changed since its manifest was written: not pushed")
    return hashed


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
    with guarded(repo.url, "cleaning up interrupted uploads in"):
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
         progress: Callable[[int], None] | None = None,
         signer: signing.Signer | None = None) -> PushReport:
    """Upload every sound local backup the repository lacks, oldest first: idempotent and
    resumable, so cron may run it as often as it likes."""
    local = catalog.scan(catalog.require_tree(backup_dir), database)
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
                                  progress=progress, signer=signer))
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
        # large: ranged GETs in parallel, consumed in order; either way one pass that
        # downloads, decrypts, hashes both sides and writes (hashing and writing in threads
        # beside the decryption)
        if obj.size_bytes > PART_SIZE and ids is None:
            hashed = _get_plain(obj, target, count)
        elif obj.size_bytes > PART_SIZE:
            hashed = _get_decrypting(obj, target, count)
        else:
            hashed = _get_unsealing(obj, target, count)
        if (hashed.stored_size, hashed.stored_sha256) != (obj.size_bytes, obj.sha256):
            raise VerifyFailed(f"{obj.key} in {repo.url}: stored bytes differ from the "
                               "manifest's SHA-256 (altered, replaced or cut short)")
        if (hashed.plain_size, hashed.plain_sha256) != (obj.plain_size_bytes,
                                                        obj.plain_sha256):
            raise VerifyFailed(f"{obj.key} in {repo.url}: plaintext differs from the "
                               "manifest's SHA-256")

    def _get_plain(obj: StoredObject, target: Path, count: bool) -> sealing.Hashed:
        """A large plain object: each part written at its offset by the thread that fetched
        it (as boto3's download_file writes), hashed here in order as the parts arrive."""
        import hashlib

        digest, size = hashlib.sha256(), 0
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
        try:
            with repo.open_ranged(obj.key, obj.size_bytes, write_to=fd) as body:
                while data := body.read():
                    digest.update(data)
                    size += len(data)
                    if count and progress is not None:
                        progress(size)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        return sealing.Hashed(size, digest.hexdigest(), size, digest.hexdigest())

    def _get_decrypting(obj: StoredObject, target: Path, count: bool) -> sealing.Hashed:
        """A large encrypted object: each part decrypted and written at its offset by the
        thread that fetched it, both sides hashed in order as the parts arrive."""
        assert ids is not None
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
        try:
            return sealing.unseal_ranged(repo, obj.key, obj.size_bytes, fd, ids=ids,
                                         what=obj.key,
                                         progress=progress if count else None)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    def _get_unsealing(obj: StoredObject, target: Path, count: bool) -> sealing.Hashed:
        body = repo.open(obj.key)
        try:
            counted = _Counting(body, progress) if count and progress else body
            hashed = sealing.unseal(counted, target, ids=ids, what=obj.key)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
        except Exception as exc:
            if isinstance(exc, AtbError):
                raise
            raise translate(exc, repo.url, f"downloading {obj.key} from") from exc
        finally:
            body.close()
        return hashed

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
            data.pop(SIGNATURE, None)
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
        raise translate(exc, repo.url, f"reading {obj.key} from") from exc
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
        reaper.mark_owner(Path(tmp))  # removed by the next drill or doctor if we are killed
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
