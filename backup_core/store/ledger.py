"""The drill ledger: one NDJSON record per drill, appended beside the reports, hash-chained
from a fixed genesis and, with a signing key, signed (Ed25519).

An auditor asks for every restore test and proof that none was altered or left out. Each
record names the SHA-256 of every report file of its drill and the hash of the record before
it, so an edited report, an edited, reordered or deleted record, or a forged signature is
found by walking the file once (`verify`). Appending takes an exclusive `flock` on the ledger
and writes one line with one `write`, fsynced; a write that fails part-way is cut back, and a
torn last line (power lost mid-write) is reported, never built upon.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_core.store.signing import PublicKey, Signer
from backup_core.tools.errors import AtbError, ConfigError, StorageError
from backup_core.tools.fsutil import fsync_dir, make_dirs, storage_error

LEDGER_NAME = "ledger.ndjson"
KEYS_DIR = "ledger-keys"  # <fingerprint>.pem: the public key of each signing key used
SCHEMA_ID = "atb.drill-ledger"
SCHEMA_VERSION = 1
GENESIS = "0" * 64  # the `prev` of the first record
LOCK_TIMEOUT_S = 120.0
MAX_LINE = 4 << 20  # a record is a few KB; a longer line is not ours
# The controls the evidence serves, one plain line each (reports, bundle README).
CONTROLS = (
    "SOC 2 A1.3: recovery plan procedures supporting system recovery are tested.",
    "ISO/IEC 27001:2022 A.8.13: backup copies are tested regularly, with a tamper-evident "
    "record of each test.",
    "PCI DSS v4.0 12.10.2: the incident response plan (including data recovery) is tested, "
    "with the result retained as evidence.",
)


# a report's recorded path -> the SHA-256 of the file there, None when it is missing
ReportHash = Callable[[str], str | None]


class LedgerError(AtbError):
    """The ledger cannot be appended to (a torn last line, a line that is not a record)."""

    exit_code = 1


# -- canonical form and hashes -------------------------------------------------------------

def canonical(record: Mapping[str, Any]) -> bytes:
    """The one byte form of a record: sorted keys, no spaces, UTF-8. A ledger line is exactly
    this, and hashes and signatures are taken over it."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode()


def body(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record without what is computed over it (`hash`, `sig`)."""
    return {k: v for k, v in record.items() if k not in ("hash", "sig")}


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(body(record))).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- appending -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Appended:
    """What an append wrote: the ledger, the record's number and hash, and the key."""

    ledger: Path
    seq: int
    hash: str
    key_fingerprint: str | None


def ledger_path(report_dir: Path) -> Path:
    return report_dir / LEDGER_NAME


def report_entry(report_dir: Path, path: Path) -> dict[str, str]:
    """A report as a record names it: its path relative to the report directory (so the
    directory can move, and a bundle can carry it), and its SHA-256."""
    try:
        shown = path.resolve().relative_to(report_dir.resolve()).as_posix()
    except ValueError:
        shown = str(path.resolve())
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise StorageError(f"cannot read the report {path}: {exc.strerror}") from exc
    return {"path": shown, "sha256": digest}


def make_record(fields: Mapping[str, Any], *, seq: int, prev: str, at: datetime,
                signer: Signer | None) -> dict[str, Any]:
    """A record from the drill's `fields`: numbered, chained, hashed and signed (pure)."""
    record: dict[str, Any] = {**fields, "schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION,
                              "seq": seq, "time": at.astimezone(UTC).isoformat(),
                              "prev": prev}
    if signer is not None:
        record["key"] = signer.public.fingerprint
    record["hash"] = record_hash(record)
    if signer is not None:
        record["sig"] = base64.b64encode(signer.sign(canonical(body(record)))).decode()
    return record


def append(report_dir: Path, fields: Mapping[str, Any], *, reports: Mapping[str, Path],
           signer: Signer | None = None, now: datetime | None = None) -> Appended:
    """Append one drill's record to `<report_dir>/ledger.ndjson`, under an exclusive lock, as
    one fsynced line; the record's `reports` carry each report file's SHA-256."""
    make_dirs(report_dir)
    named = {kind: report_entry(report_dir, p) for kind, p in sorted(reports.items())}
    path = ledger_path(report_dir)
    if signer is not None:
        _keep_public_key(report_dir, signer.public)
    with _locked(path) as fd:
        size = os.fstat(fd.fileno()).st_size
        last = _last_record(fd, size, path)
        seq = int(last["seq"]) + 1 if last else 1
        prev = str(last["hash"]) if last else GENESIS
        record = make_record({**fields, "reports": named}, seq=seq, prev=prev,
                             at=now or datetime.now(UTC), signer=signer)
        line = canonical(record) + b"\n"
        try:
            written = os.write(fd.fileno(), line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd.fileno())
        except OSError as exc:
            os.ftruncate(fd.fileno(), size)  # never leave a torn record behind
            raise storage_error(exc, path) from exc
    if size == 0:
        fsync_dir(path.parent)
    return Appended(path, seq, record["hash"], record.get("key"))


@contextmanager
def _locked(path: Path) -> Iterator[Any]:
    """The ledger open for append, exclusively locked (two drills finishing at once take
    turns); released by the kernel if we are killed."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise storage_error(exc, path) from exc
    with os.fdopen(fd, "r+b", buffering=0) as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageError(f"the ledger {path} stayed locked for "
                                       f"{LOCK_TIMEOUT_S:g} s: is a drill stuck?") from None
                time.sleep(0.05)
        try:
            yield fh
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _last_record(fh: Any, size: int, path: Path) -> dict[str, Any] | None:
    """The last record, read from the file's tail; a torn or foreign last line stops the
    append (it is evidence, to be looked at with `atb audit verify`, never built upon)."""
    if size == 0:
        return None
    start = max(0, size - MAX_LINE - 1)
    data = os.pread(fh.fileno(), size - start, start)
    if not data.endswith(b"\n"):
        raise LedgerError(f"the ledger {path} ends in a torn record (an append was cut short):"
                          " run `atb audit verify`; no record was added")
    line = data[:-1].rsplit(b"\n", 1)[-1]
    try:
        record = json.loads(line)
        if not isinstance(record, dict) or record.get("schema") != SCHEMA_ID:
            raise ValueError("not a ledger record")
        int(record["seq"])
        str(record["hash"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise LedgerError(f"the last line of the ledger {path} is not a ledger record: run "
                          "`atb audit verify`; no record was added") from exc
    return record


def _keep_public_key(report_dir: Path, key: PublicKey) -> None:
    """The signing key's public half beside the ledger, named by its fingerprint (verify
    reads it unless given the key to trust with --public-key)."""
    folder = report_dir / KEYS_DIR
    target = folder / f"{key.fingerprint}.pem"
    if target.exists():
        return
    make_dirs(folder)
    tmp = folder / f".{target.name}.{os.getpid()}"
    try:
        tmp.write_bytes(key.pem)
        os.replace(tmp, target)
    except OSError as exc:
        raise storage_error(exc, target) from exc


# -- reading and verifying -----------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    """The first record that fails, and why, in words an auditor can act on."""

    line: int  # 1-based line of the ledger (0: the ledger itself)
    seq: int | None
    database: str
    time: str
    reason: str

    def __str__(self) -> str:
        what = f"record {self.line}" if self.line else "the ledger"
        about = ", ".join(x for x in (self.time, self.database) if x)
        return f"{what}{f' ({about})' if about else ''}: {self.reason}"


@dataclass(frozen=True)
class Verification:
    ledger: str
    records: int  # records that passed, in order, before any failure
    head: str  # the hash of the last record that passed (GENESIS for none)
    keys: tuple[str, ...]  # fingerprints of the keys that signed them
    signed: int
    failure: Failure | None
    JSON_PROPERTIES = ("ok",)

    @property
    def ok(self) -> bool:
        return self.failure is None


def split_lines(data: bytes) -> tuple[list[bytes], bool]:
    """The ledger's lines, and whether the last one is torn (no final newline)."""
    if not data:
        return [], False
    parts = data.split(b"\n")
    torn = parts[-1] != b""
    return (parts if torn else parts[:-1]), torn


def check_record(raw: bytes, *, line: int, prev: str, keys: Mapping[str, PublicKey],
                 require_signed: bool) -> tuple[dict[str, Any] | None, str | None]:
    """One line against the chain: (its record, None) when sound, else (record or None, why).
    Pure: the reports it names are checked by the caller."""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return None, "not a JSON record (edited, or written by something else)"
    if not isinstance(record, dict) or record.get("schema") != SCHEMA_ID:
        return None, "not a ledger record"
    if record.get("hash") != record_hash(record) or raw != canonical(record):
        return record, "edited: its content no longer matches its recorded hash"
    if record.get("seq") != line:
        return record, (f"numbered {record.get('seq')!r} at position {line}: a record before "
                        "it was deleted or inserted, or records were reordered")
    if record.get("prev") != prev:
        return record, ("does not follow the record before it (previous-record hash "
                        "differs): a record was edited, deleted or reordered")
    sig, fp = record.get("sig"), record.get("key")
    if sig is None:
        return (record, "is not signed, but the ledger is (a signature was removed, or "
                        "the signing key was dropped)") if require_signed else (record, None)
    key = keys.get(str(fp))
    if key is None:
        return record, f"signed by key {fp}, which is not a key to trust here"
    try:
        signature = base64.b64decode(str(sig), validate=True)
    except ValueError:
        return record, "its signature is not base64"
    if not key.verifies(signature, canonical(body(record))):
        return record, f"its signature does not verify with key {fp}"
    return record, None


def walk(lines: list[bytes], torn: bool, *, keys: Mapping[str, PublicKey],
         pinned: bool, prev: str = GENESIS, first_line: int = 1,
         report_hash: ReportHash | None = None, ledger: str = "") -> Verification:
    """Walk `lines` from `prev`: the chain, the signatures, and (through `report_hash`, a
    function from a recorded path to the file's SHA-256 or None when missing) the reports.
    With `pinned`, every record must be signed by one of `keys`."""
    count, head, used, signed = 0, prev, set[str](), 0
    require = pinned
    for i, raw in enumerate(lines, start=first_line):
        is_torn = torn and i == first_line + len(lines) - 1
        record, why = (None, "torn: the last append was cut short (no end of line)") \
            if is_torn else check_record(raw, line=i, prev=head, keys=keys,
                                         require_signed=require)
        if why is None and record is not None and report_hash is not None:
            why = _reports_differ(record, report_hash)
        if why is not None:
            r = record or {}
            seq = r.get("seq")
            return Verification(ledger, count, head, tuple(sorted(used)), signed,
                                Failure(i, seq if isinstance(seq, int) else None,
                                        str(r.get("database", "")), str(r.get("time", "")),
                                        why))
        assert record is not None
        count, head = count + 1, str(record["hash"])
        if "sig" in record:
            signed += 1
            used.add(str(record["key"]))
            require = True  # once signed, a later unsigned record is a stripped signature
    return Verification(ledger, count, head, tuple(sorted(used)), signed, None)


def _reports_differ(record: Mapping[str, Any], report_hash: ReportHash) -> str | None:
    reports = record.get("reports")
    if not isinstance(reports, dict):
        return "names no reports"
    for kind, entry in sorted(reports.items()):
        if not isinstance(entry, dict):
            return f"its {kind} report entry is malformed"
        found = report_hash(str(entry.get("path", "")))
        if found is None:
            return f"its {kind} report {entry.get('path')} is missing"
        if found != entry.get("sha256"):
            return (f"its {kind} report {entry.get('path')} was changed (SHA-256 {found}, "
                    f"recorded {entry.get('sha256')})")
    return None


def known_keys(report_dir: Path, pinned: tuple[PublicKey, ...]) -> dict[str, PublicKey]:
    """The keys to trust: those given (--public-key), else those kept beside the ledger."""
    if pinned:
        return {k.fingerprint: k for k in pinned}
    found: dict[str, PublicKey] = {}
    folder = report_dir / KEYS_DIR
    for path in sorted(folder.glob("*.pem")) if folder.is_dir() else []:
        try:
            key = PublicKey(path.read_bytes())
            if key.fingerprint == path.stem:
                found[key.fingerprint] = key
        except (OSError, ConfigError):
            continue
    return found


def verify(report_dir: Path, *, public_keys: tuple[PublicKey, ...] = ()) -> Verification:
    """Walk the ledger of `report_dir`: each record's hash, its place in the chain, its
    signature, and the SHA-256 of every report it names, stopping at the first failure."""
    if not report_dir.is_dir():
        raise ConfigError(f"--report-dir {report_dir} is not a directory")
    path = ledger_path(report_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Verification(str(path), 0, GENESIS, (), 0,
                            Failure(0, None, "", "", f"no ledger at {path}"))
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    lines, torn = split_lines(data)
    root = report_dir.resolve()

    def report_hash(rel: str) -> str | None:
        target = (root / rel).resolve()
        if not target.is_relative_to(root) and not Path(rel).is_absolute():
            return None
        try:
            return file_sha256(target) if target.is_file() else None
        except OSError:
            return None

    result = walk(lines, torn, keys=known_keys(report_dir, public_keys),
                  pinned=bool(public_keys), report_hash=report_hash, ledger=str(path))
    if result.failure is None:
        missing = unrecorded(report_dir, lines)
        if missing is not None:
            result = replace(result, failure=replace(missing, line=result.records + 1))
    return result


def unrecorded(report_dir: Path, lines: list[bytes]) -> Failure | None:
    """A drill report written by `atb drill run` (it carries the ledger's `evidence`) that no
    record names: its record was deleted (the newest records leave no other trace)."""
    named: set[str] = set()
    for raw in lines:
        record = json.loads(raw)
        named.update(str(e.get("path")) for e in record.get("reports", {}).values()
                     if isinstance(e, dict))
    for path in sorted(report_dir.glob("*/*-drill.json")):
        rel = path.relative_to(report_dir).as_posix()
        if rel in named:
            continue
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError):
            continue  # claimed, not yet written: a drill still running
        if isinstance(data, dict) and data.get("evidence") is not None:
            return Failure(0, None, str(data.get("database", "")),
                           str(data.get("finished_at", "")),
                           f"missing: the report {rel} is in no record (a record was deleted, "
                           "or its drill is still finishing)")
    return None


def read_records(report_dir: Path) -> list[tuple[bytes, dict[str, Any]]]:
    """Every whole record of the ledger with its exact line (for a bundle), unchecked."""
    try:
        data = ledger_path(report_dir).read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read {ledger_path(report_dir)}: {exc.strerror}") from exc
    lines, torn = split_lines(data)
    out = []
    for raw in lines[:-1] if torn else lines:
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append((raw, record))
    return out
