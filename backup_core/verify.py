"""`atb db verify`: is this file still the backup we wrote, and can pg_restore read it?"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backup_core import toolchain
from backup_core.errors import AtbError
from backup_core.manifest import ManifestError, read_manifest
from backup_core.naming import manifest_path, roles_path
from backup_core.runner import first_error_line, run
from backup_core.verdicts import VerifyRecord, record_verify

CHUNK = 1 << 20


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class VerifyResult:
    path: Path
    deep: bool
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if not c.ok]
        return f"{failed[0].name}: {failed[0].detail}" if failed else "ok"


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, sha256) in one streaming pass."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb", buffering=0) as fh:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            size += n
    return size, digest.hexdigest()


def roles_problem(dump: Path, recorded: dict[str, object]) -> str:
    """Why the roles sidecar is not the one the manifest describes; empty when it is."""
    path = roles_path(dump)
    if path.is_symlink() or not path.is_file():
        return f"{path.name} is missing"
    size, digest = sha256_file(path)
    if size != recorded["size_bytes"] or digest != recorded["sha256"]:
        return f"{path.name} differs from the manifest's record (altered or truncated)"
    return ""


def verify_backup(
    path: Path,
    *,
    deep: bool = False,
    chains: list[toolchain.Toolchain] | None = None,
    record: bool = True,
) -> VerifyResult:
    """Check size and sha256 against the manifest, then the TOC, then (deep) every data block.

    Stops at the first failed check: later ones would only repeat the news.
    """
    checks: list[Check] = []
    result = _run_checks(path, deep, chains, checks)
    if record and path.exists():
        # a read-only backup directory can still be verified
        with contextlib.suppress(AtbError):
            record_verify(path, VerifyRecord(ok=result.ok, at=datetime.now(UTC).isoformat(
                timespec="seconds"), deep=deep, reason=result.reason))
    return result


def _run_checks(
    path: Path, deep: bool, chains: list[toolchain.Toolchain] | None, checks: list[Check]
) -> VerifyResult:
    def done() -> VerifyResult:
        return VerifyResult(path=path, deep=deep, checks=tuple(checks))

    if not path.is_file():
        checks.append(Check("exists", False, "no such file"))
        return done()
    try:
        manifest = read_manifest(manifest_path(path))
    except ManifestError as exc:
        checks.append(Check("manifest", False, str(exc)))
        return done()
    size, digest = sha256_file(path)
    if size != manifest.size_bytes:
        checks.append(Check("size", False, f"{size} bytes, manifest says {manifest.size_bytes} "
                            "(truncated or appended to)"))
        return done()
    checks.append(Check("size", True, f"{size} bytes"))
    if digest != manifest.sha256:
        checks.append(Check("sha256", False, f"{digest[:16]}… differs from the manifest's "
                            f"{manifest.sha256[:16]}… (the file was altered)"))
        return done()
    checks.append(Check("sha256", True, digest))
    if manifest.roles is not None:
        problem = roles_problem(path, manifest.roles)
        checks.append(Check("roles", not problem, problem or manifest.roles["file"]))
        if problem:
            return done()
    chains = toolchain.discover() if chains is None else chains
    try:
        chain = toolchain.for_restore(manifest.pg_dump_major, chains)
    except AtbError as exc:
        checks.append(Check("toolchain", False, str(exc)))
        return done()
    listing = run([chain.tool("pg_restore"), "--list", str(path)], what="pg_restore --list",
                  check=False)
    if listing.returncode != 0:
        checks.append(Check("toc", False, first_error_line(listing.stderr)))
        return done()
    entries = sum(1 for ln in listing.stdout.splitlines() if ln.strip() and not ln.startswith(";"))
    if entries != manifest.toc_entries:
        checks.append(Check("toc", False, f"{entries} TOC entries, manifest says "
                            f"{manifest.toc_entries}"))
        return done()
    checks.append(Check("toc", True, f"{entries} entries (pg_restore {chain.version})"))
    if deep:
        full = run([chain.tool("pg_restore"), "--file=/dev/null", str(path)],
                   what="pg_restore (deep read)", check=False)
        if full.returncode != 0:
            checks.append(Check("data", False, first_error_line(full.stderr)))
            return done()
        checks.append(Check("data", True, "every data block read"))
    return done()
