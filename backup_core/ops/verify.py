"""`atb db verify`: is this file still the backup we wrote, and can pg_restore read it?

Only evidence about the file condemns it: its size or sha256 differs from the manifest, the
manifest is unreadable, or (--deep) its data blocks do not read with a pg_restore that has
just listed the same archive. Once the bytes are proven to be the ones written (and listed by
pg_restore at backup time), a failing `pg_restore --list`, a missing binary or an unreadable
file is the tool's or the environment's failure: raised (exit 5, 3 or 7), never recorded as
the backup's. A verdict is written only beside a dump named like a backup inside the tree.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from backup_core.store import catalog
from backup_core.store.manifest import ManifestError, read_manifest
from backup_core.store.naming import DUMP_SUFFIX, manifest_path, roles_path, taken_at
from backup_core.store.verdicts import VerifyRecord, record_verify
from backup_core.tools import child_reads, toolchain
from backup_core.tools.commands import pg_restore_list_argv, pg_restore_read_argv
from backup_core.tools.errors import AtbError, CommandFailed, ConfigError, StorageError
from backup_core.tools.runner import first_error_line, run

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
    # why the verdict could not be recorded beside the dump (a read-only BACKUP_DIR): `list`
    # still shows it unverified, so the command says so
    not_recorded: str = ""
    # derived values that belong to the published record (`--json`)
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("ok", "reason")

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
    backup_dir: Path | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> VerifyResult:
    """Check size and sha256 against the manifest, then the TOC, then (deep) every data block.

    Stops at the first failed check: later ones would only repeat the news. The verdict is
    recorded beside the dump only when it lies inside `backup_dir` (never beside a file
    elsewhere, such as /etc/passwd). Raises `AtbError` for a failure that is not the file's.
    """
    checks: list[Check] = []
    try:
        result = _run_checks(path, deep, chains, checks, progress)
    except OSError as exc:  # the file could not be read: say so, condemn nothing
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}; nothing was "
                           "recorded") from exc
    if record and backup_dir is not None and _in_tree(path, backup_dir):
        # a read-only backup directory can still be verified: the verdict stands, unrecorded
        try:
            record_verify(path, VerifyRecord(ok=result.ok, at=datetime.now(UTC).isoformat(
                timespec="seconds"), deep=deep, reason=result.reason))
        except AtbError as exc:
            return replace(result, not_recorded=str(exc))
    return result


def _in_tree(path: Path, backup_dir: Path) -> bool:
    """A dump named like a backup, in a real directory under `backup_dir`."""
    if taken_at(path) is None or path.is_symlink() or not path.is_file():
        return False
    try:
        return path.parent.resolve().is_relative_to(backup_dir.resolve()) \
            and path.parent.resolve() != backup_dir.resolve()
    except OSError:
        return False


def _run_checks(
    path: Path, deep: bool, chains: list[toolchain.Toolchain] | None, checks: list[Check],
    progress: Callable[[str, int], None] | None = None,
) -> VerifyResult:
    def done() -> VerifyResult:
        return VerifyResult(path=path, deep=deep, checks=tuple(checks))

    if not path.is_file():  # a FIFO, a device, a directory: never opened (a FIFO would hang)
        checks.append(Check("exists", False, "not a regular file" if os.path.lexists(path)
                            else "no such file"))
        return done()
    if not path.name.endswith(DUMP_SUFFIX):
        checks.append(Check("name", False, "not a backup (backup-<time>.dump with its "
                            "manifest)"))
        return done()
    try:
        manifest = read_manifest(manifest_path(path))
    except ManifestError as exc:
        if isinstance(exc.__cause__, PermissionError):  # our access, not the file's content
            raise StorageError(f"cannot read {manifest_path(path)}: permission denied; "
                               "nothing was recorded") from exc
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
    # From here the bytes are the ones written, whose TOC pg_restore listed at backup time:
    # what fails now is the tool or the environment (raised, never recorded as the file's).
    chains = toolchain.discover() if chains is None else chains
    chain = toolchain.for_restore(manifest.pg_dump_major, chains)  # ToolchainError: exit 3
    listing = run(pg_restore_list_argv(chain, path), what="pg_restore --list", check=False)
    if listing.returncode != 0:
        raise _tool_failed(chain, "--list", path, listing.stderr)
    entries = sum(1 for ln in listing.stdout.splitlines() if ln.strip() and not ln.startswith(";"))
    if entries != manifest.toc_entries:
        raise CommandFailed(f"pg_restore {chain.version} lists {entries} TOC entries in "
                            f"{path}, whose bytes match the manifest's {manifest.toc_entries}: "
                            "this pg_restore misreads the archive; nothing was recorded")
    checks.append(Check("toc", True, f"{entries} entries (pg_restore {chain.version})"))
    if deep:
        with child_reads.reads_reported(
                None if progress is None else lambda n: progress("read every block", n)):
            full = run(pg_restore_read_argv(chain, path), what="pg_restore (deep read)",
                       check=False)
        if full.returncode != 0:
            # the same pg_restore has just listed this archive: the tool works, the data
            # blocks do not (damaged before they were hashed): evidence about the file
            checks.append(Check("data", False, first_error_line(full.stderr)))
            return done()
        checks.append(Check("data", True, "every data block read"))
    return done()


def _tool_failed(chain: toolchain.Toolchain, how: str, path: Path, stderr: str) -> AtbError:
    return CommandFailed(f"pg_restore {chain.version} ({chain.bindir}) {how} failed on {path}, "
                         f"whose size and sha256 match its manifest (pg_restore listed it when "
                         f"it was written): {first_error_line(stderr)}; the tool failed, not "
                         "the backup (check PG_BINDIR); nothing was recorded", detail=stderr)


@dataclass(frozen=True)
class VerifyReport:
    results: tuple[VerifyResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def verify_selected(
    backup_dir: Path, *, path: Path | None = None, latest: bool = False, all_: bool = False,
    database: str | None = None, deep: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> VerifyReport:
    """Verify exactly one selection (a file, the newest backup, or every backup), each against
    its manifest; the report fails when any file does."""
    if sum([path is not None, latest, all_]) != 1:
        raise ConfigError("give exactly one of PATH, --latest or --all")
    if path is not None:
        paths = [path]
    else:
        found = [b for b in catalog.scan(catalog.require_tree(backup_dir), database)
                 if b.is_backup]
        if not found:
            of = f" of database {database}" if database else ""
            raise ConfigError(f"no backups{of} under {backup_dir} to verify")
        paths = [found[0].path] if latest else [b.path for b in found]
    chains = toolchain.discover()
    return VerifyReport(tuple(verify_backup(p, deep=deep, chains=chains, backup_dir=backup_dir,
                                            progress=progress) for p in paths))
