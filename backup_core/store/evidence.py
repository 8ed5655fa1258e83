"""The evidence bundle: one tar.gz an auditor can check without atb.

It holds a segment of the ledger (the records of a time range, exactly as written), every
report those records name, each record's signed bytes and signature, the public keys, a
`SHA256SUMS` over every file and an Ed25519 signature over `SHA256SUMS`, and a README with
the steps to check it all by hand with `openssl` and `sha256sum`. The bundle is built only
from a ledger that verifies, and written under a temporary name then renamed: never half.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from backup_core.store import ledger
from backup_core.store.ledger import CONTROLS, LedgerError
from backup_core.store.signing import PublicKey, Signer
from backup_core.tools.errors import ConfigError, StorageError
from backup_core.tools.fsutil import storage_error

SUMS = "SHA256SUMS"
SUMS_SIG = "SHA256SUMS.sig"
BUNDLE_KEY = "ledger-key.pem"
SEGMENT = "ledger.ndjson"
MAX_MEMBER = 256 << 20
MAX_TOTAL = 2 << 30


@dataclass(frozen=True)
class Exported:
    path: str
    records: int
    reports: int
    key_fingerprint: str
    first_prev: str
    head: str
    controls: tuple[str, ...] = CONTROLS


@dataclass(frozen=True)
class BundleCheck:
    path: str
    records: int
    reports: int
    key_fingerprint: str
    failure: str | None
    controls: tuple[str, ...] = CONTROLS
    JSON_PROPERTIES = ("ok",)

    @property
    def ok(self) -> bool:
        return self.failure is None


def in_range(record: Mapping[str, Any], since: datetime | None, until: datetime | None) -> bool:
    try:
        at = datetime.fromisoformat(str(record.get("time")))
    except ValueError:
        return False
    return (since is None or at >= since) and (until is None or at <= until)


def sums_text(files: Mapping[str, bytes]) -> bytes:
    """`sha256sum` format, sorted by name: `sha256sum -c SHA256SUMS` checks it."""
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                   for name, data in sorted(files.items())).encode()


def readme(*, records: int, first: int, last: int, first_prev: str, head: str,
           fingerprint: str, since: str, until: str) -> str:
    """The hand-verification steps, with the numbers this bundle's checks must give."""
    controls = "\n".join(f"  - {c}" for c in CONTROLS)
    return f"""atb restore-drill evidence bundle
===================================

Drill records {first} to {last} ({records} records) of the ledger, recorded from {since} to
{until}, with every report they name.

Controls this evidence serves:
{controls}

Contents
  {SEGMENT}            the ledger records, exactly as appended (one JSON record a line)
  reports/             every report file the records name, under the path each names
  records/N.json       record N's signed bytes (the record without "hash" and "sig")
  records/N.sig        record N's Ed25519 signature over records/N.json (when signed)
  keys/FP.pem          the public key of fingerprint FP that signed the records
  {BUNDLE_KEY}       the public key that signed this bundle (SHA256SUMS.sig)
  {SUMS}           the SHA-256 of every other file
  {SUMS_SIG}       the Ed25519 signature over {SUMS}

Verify by hand (OpenSSL 3 and coreutils), from the unpacked directory:

1. The key is the one you expect: its fingerprint must be {fingerprint}
   (the fingerprint published with the drill reports):
     openssl pkey -pubin -in {BUNDLE_KEY} -outform DER | sha256sum

2. The bundle is the one that was signed ("Signature Verified Successfully"):
     openssl pkeyutl -verify -pubin -inkey {BUNDLE_KEY} -rawin -in {SUMS} -sigfile {SUMS_SIG}

3. No file was changed, and none added:
     sha256sum -c {SUMS}

4. Each record's signed bytes hash to the "hash" that the next record names as "prev"
   (the first record follows {first_prev}; the last record's hash is {head}):
     for n in $(seq {first} {last}); do sha256sum records/$n.json; done
     jq -r '[.seq, .prev, .hash] | @tsv' {SEGMENT}

5. Each record's signature (signed ledgers), with the key its "key" field names:
     openssl pkeyutl -verify -pubin -inkey keys/FP.pem -rawin -in records/N.json \\
       -sigfile records/N.sig

6. Each report is the one the record names:
     jq -r '.reports[] | "\\(.sha256)  reports/\\(.path)"' {SEGMENT} | sha256sum -c

`atb audit verify-bundle FILE` does all of the above.
"""


def export(report_dir: Path, out: Path, *, since: datetime | None, until: datetime | None,
           signer: Signer, public_keys: tuple[PublicKey, ...] = ()) -> Exported:
    """Write the bundle of the records appended in [since, until] to `out`, from a ledger
    that verifies (exit 1 naming its first failing record otherwise)."""
    check = ledger.verify(report_dir, public_keys=public_keys)
    if check.failure is not None:
        raise LedgerError(f"the ledger does not verify, so no evidence is exported from it: "
                          f"{check.failure}")
    chosen = [(raw, r) for raw, r in ledger.read_records(report_dir) if in_range(r, since, until)]
    if not chosen:
        raise ConfigError("no drill was recorded in that time range: nothing to export")
    files: dict[str, bytes] = {SEGMENT: b"".join(raw + b"\n" for raw, _ in chosen),
                               BUNDLE_KEY: signer.public.pem}
    keys = ledger.known_keys(report_dir, public_keys)
    root = report_dir.resolve()
    for _, record in chosen:
        seq = record["seq"]
        files[f"records/{seq}.json"] = ledger.canonical(ledger.body(record))
        if "sig" in record:
            files[f"records/{seq}.sig"] = base64.b64decode(record["sig"])
            files[f"keys/{record['key']}.pem"] = keys[record["key"]].pem
        for entry in record["reports"].values():
            rel = entry["path"]
            try:
                files[f"reports/{rel}"] = (root / rel).read_bytes()
            except OSError as exc:
                raise StorageError(f"cannot read the report {rel}: {exc.strerror}") from exc
    sums = sums_text(files)
    files[SUMS] = sums
    files[SUMS_SIG] = signer.sign(sums)
    first, last = chosen[0][1], chosen[-1][1]
    files["README.txt"] = readme(
        records=len(chosen), first=first["seq"], last=last["seq"], first_prev=first["prev"],
        head=last["hash"], fingerprint=signer.public.fingerprint,
        since=first["time"], until=last["time"]).encode()
    # README is covered too: the sums are re-made with it, then signed
    del files[SUMS], files[SUMS_SIG]
    sums = sums_text(files)
    files[SUMS], files[SUMS_SIG] = sums, signer.sign(sums)
    _write_tar(out, files, mtime=int(datetime.fromisoformat(last["time"]).timestamp()))
    return Exported(str(out), len(chosen), sum(len(r["reports"]) for _, r in chosen),
                    signer.public.fingerprint, first["prev"], last["hash"])


def _write_tar(out: Path, files: Mapping[str, bytes], *, mtime: int) -> None:
    top = out.name.removesuffix(".tar.gz").removesuffix(".tgz") or "evidence"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for name, data in sorted(files.items()):
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mtime, info.mode = len(data), mtime, 0o644
                tar.addfile(info, io.BytesIO(data))
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(exc, out) from exc


def read_bundle(path: Path) -> dict[str, bytes]:
    """A bundle's regular files by name (its top directory dropped), read in memory: nothing
    is extracted, so no name in it can write anywhere. Raises ValueError for what is not a
    bundle."""
    files: dict[str, bytes] = {}
    total = 0
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.isdir():
                continue
            if not member.isfile():
                raise ValueError(f"{member.name} is not a regular file")
            parts = member.name.split("/", 1)
            if len(parts) != 2 or ".." in member.name.split("/") or member.name.startswith("/"):
                raise ValueError(f"unexpected name {member.name!r}")
            total += member.size
            if member.size > MAX_MEMBER or total > MAX_TOTAL:
                raise ValueError(f"{member.name} is larger than any report")
            fh = tar.extractfile(member)
            assert fh is not None
            files[parts[1]] = fh.read()
    return files


def verify_bundle(path: Path, *, public_keys: tuple[PublicKey, ...] = ()) -> BundleCheck:
    """Check a bundle as its README says a person would: the signature over SHA256SUMS,
    every file's hash, the chain of its records, their signatures, and their reports."""
    if not path.is_file():
        raise ConfigError(f"{path} is not a file")
    try:
        files = read_bundle(path)
    except (OSError, tarfile.TarError, ValueError, EOFError) as exc:
        return BundleCheck(str(path), 0, 0, "", f"not a readable evidence bundle: {exc}")
    fail = _bundle_failure(files, public_keys)
    key = ""
    if BUNDLE_KEY in files:
        try:
            key = PublicKey(files[BUNDLE_KEY]).fingerprint
        except ConfigError:
            key = ""
    records = files.get(SEGMENT, b"").count(b"\n")
    reports = sum(1 for n in files if n.startswith("reports/"))
    return BundleCheck(str(path), records, reports, key, fail)


def _bundle_failure(files: Mapping[str, bytes], pinned: tuple[PublicKey, ...]) -> str | None:
    for name in (SUMS, SUMS_SIG, BUNDLE_KEY, SEGMENT):
        if name not in files:
            return f"{name} is missing from the bundle"
    try:
        bundle_key = PublicKey(files[BUNDLE_KEY])
        fingerprint = bundle_key.fingerprint
    except ConfigError as exc:
        return f"{BUNDLE_KEY}: {exc}"
    trusted = {k.fingerprint: k for k in pinned}
    if pinned and fingerprint not in trusted:
        return f"the bundle is signed by key {fingerprint}, not by a key given to trust"
    if not bundle_key.verifies(files[SUMS_SIG], files[SUMS]):
        return f"{SUMS_SIG} does not verify with {BUNDLE_KEY}: the bundle was altered"
    listed: dict[str, str] = {}
    for line in files[SUMS].decode(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for name, data in sorted(files.items()):
        if name in (SUMS, SUMS_SIG):
            continue
        if name not in listed:
            return f"{name} is in the bundle but not in {SUMS}: it was added"
        if hashlib.sha256(data).hexdigest() != listed[name]:
            return f"{name} does not match its SHA-256 in {SUMS}: it was changed"
    for name in listed:
        if name not in files:
            return f"{name} is listed in {SUMS} but missing from the bundle"
    lines, torn = ledger.split_lines(files[SEGMENT])
    if not lines:
        return "the ledger segment holds no record"
    try:
        first = json.loads(lines[0])
        start, prev = int(first["seq"]), str(first["prev"])
    except (ValueError, KeyError, TypeError):
        return "the first record of the segment cannot be read"
    keys = trusted or {n.removeprefix("keys/").removesuffix(".pem"): PublicKey(d)
                       for n, d in files.items() if n.startswith("keys/")}
    check = ledger.walk(lines, torn, keys=keys, pinned=bool(pinned), prev=prev,
                        first_line=start, report_hash=lambda rel: _bundle_hash(files, rel))
    if check.failure is not None:
        return str(check.failure)
    for raw in lines:
        record = json.loads(raw)
        signed = files.get(f"records/{record['seq']}.json")
        if signed != ledger.canonical(ledger.body(record)):
            return f"records/{record['seq']}.json is not record {record['seq']}'s signed bytes"
        if "sig" in record and files.get(f"records/{record['seq']}.sig") != base64.b64decode(
                record["sig"]):
            return f"records/{record['seq']}.sig is not record {record['seq']}'s signature"
    return None


def _bundle_hash(files: Mapping[str, bytes], rel: str) -> str | None:
    data = files.get(f"reports/{rel}")
    return None if data is None else hashlib.sha256(data).hexdigest()
