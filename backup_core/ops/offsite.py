"""The operations on an off-site repository (`--repo`): push, list, verify, prune, restore's
download and the off-site lag, each one call returning a frozen record."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_core.ops import verify
from backup_core.store import (
    catalog,
    offsite_catalog,
    offsite_transfer,
    repository,
    retention,
    sealing,
    signing,
)
from backup_core.store.naming import DUMP_SUFFIX, MANIFEST_SUFFIX
from backup_core.store.offsite_catalog import RemoteBackup
from backup_core.store.offsite_transfer import Fetched, PushReport
from backup_core.store.repository import Repository
from backup_core.tools import toolchain
from backup_core.tools.commands import pg_restore_stream_argv
from backup_core.tools.errors import CommandFailed, ConfigError, SafetyRefusal, VerifyFailed
from backup_core.tools.runner import first_error_line, spawn


def identity_file() -> Path | None:
    value = os.environ.get("ATB_AGE_IDENTITY_FILE")
    return Path(value) if value else None


def push(url: str, backup_dir: Path, *, encrypt_to: str | None = None,
         database: str | None = None,
         progress: Callable[[int], None] | None = None) -> PushReport:
    """Upload every sound local backup the repository lacks (config checked first)."""
    keys = sealing.recipients(encrypt_to or "")
    signer = signing.signer_from_env(os.environ)  # ATB_SIGNING_KEY_FILE: records are signed
    catalog.require_tree(backup_dir)
    return offsite_transfer.push(repository.open_repository(url), backup_dir, recipients=keys,
                                 database=database, progress=progress, signer=signer)


def trusted_signer(path: Path | None) -> signing.PublicKey | None:
    """The public key a backup read from the repository must be signed with
    (`--repo-signer` / `ATB_REPO_SIGNER`, a PEM file), checked before any work starts."""
    if path is None:
        return None
    try:
        return signing.PublicKey.read(path)
    except ConfigError as exc:
        raise ConfigError(f"--repo-signer: {exc}") from exc


def listing(url: str, database: str | None = None) -> tuple[catalog.Listed, ...]:
    return offsite_catalog.listing(repository.open_repository(url), database)


def _select(repo: Repository, *, key: str | None, latest: bool, all_: bool,
            database: str | None) -> list[RemoteBackup]:
    if sum([key is not None, latest, all_]) != 1:
        raise ConfigError("give exactly one of KEY, --latest or --all")
    if key is not None:
        return [offsite_catalog.find(repo, key)]
    found = [r for r in offsite_catalog.scan(repo, database) if r.backup.is_backup]
    if not found:
        raise ConfigError(f"no backups in {repo.url} to verify")
    return found[:1] if latest else found


def verify_remote(url: str, *, key: str | None = None, latest: bool = False,
                  all_: bool = False, database: str | None = None,
                  deep: bool = False) -> verify.VerifyReport:
    """Stream each selected backup from the store through pg_restore's reader (the TOC, or
    with `deep` every data block), decrypting on the way and proving the stored and the
    plaintext SHA-256 in the same pass: nothing is written to disk, nothing is recorded in
    the repository. As for a local backup, once the hashes match a failing pg_restore
    --list is the tool's failure (raised), a failing deep read the backup's."""
    repo = repository.open_repository(url)
    chains = toolchain.discover()
    ident = identity_file()
    results = []
    for remote in _select(repo, key=key, latest=latest, all_=all_, database=database):
        where = remote.backup.path  # the key, as `list --repo` shows it
        if not remote.backup.complete or remote.offsite is None:
            results.append(verify.VerifyResult(where, deep, (verify.Check(
                "catalog", False, f"{remote.backup.state}: {remote.backup.problem}"),)))
            continue
        results.append(_verify_streaming(repo, remote, deep=deep, chains=chains,
                                         ids=offsite_transfer.identities_for(remote, ident)))
    return verify.VerifyReport(tuple(results))


class _Tee:
    """A writer into pg_restore's standard input that keeps accepting (for the hashes) once
    pg_restore has stopped reading (`--list` stops after the TOC). It never closes the
    descriptor: its owner (the Popen's stdin) does, once."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while self.fd is not None and view:
            try:
                n = os.write(self.fd, view)
            except BrokenPipeError:
                self.fd = None  # the reader is done: the rest only feeds the hashes
                break
            view = view[n:]
        return size


def _verify_streaming(repo: Repository, remote: RemoteBackup, *, deep: bool,
                      chains: list[toolchain.Toolchain], ids: list[Any] | None,
                      ) -> verify.VerifyResult:
    b, o = remote.backup, remote.offsite
    assert b.manifest is not None and o is not None
    where, m = b.path, b.manifest
    chain = toolchain.for_restore(m.pg_dump_major, chains)  # ToolchainError: exit 3
    checks: list[verify.Check] = []
    proc = spawn(pg_restore_stream_argv(chain, deep=deep), what="pg_restore",
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out: dict[str, bytes] = {}
    drains = [threading.Thread(target=lambda n=name, f=f: out.__setitem__(n, f.read()),
                               daemon=True)
              for name, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for t in drains:
        t.start()
    tee = _Tee(proc.stdin.fileno())
    try:
        offsite_transfer.read_through(repo, o.dump, tee, ids=ids)
    except VerifyFailed as exc:
        proc.kill()
        return verify.VerifyResult(where, deep, (verify.Check("stored sha256", False,
                                                              str(exc)),))
    except BaseException:
        proc.kill()
        raise
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        for t in drains:
            t.join()
        proc.stdout.close()
        proc.stderr.close()
        proc.wait()
    checks += [verify.Check("stored sha256", True, o.dump.sha256),
               verify.Check("size", True, f"{o.dump.plain_size_bytes} bytes"),
               verify.Check("sha256", True, o.dump.plain_sha256)]
    if o.roles is not None:
        try:
            with open(os.devnull, "wb") as null:
                offsite_transfer.read_through(repo, o.roles, null, ids=ids)
            checks.append(verify.Check("roles", True, o.roles.key))
        except VerifyFailed as exc:
            checks.append(verify.Check("roles", False, str(exc)))
            return verify.VerifyResult(where, deep, tuple(checks))
    stderr = out.get("stderr", b"").decode(errors="replace")
    if deep:
        if proc.returncode != 0:  # the bytes are the ones written: their blocks are not
            checks.append(verify.Check("data", False, first_error_line(stderr)))
        else:
            checks.append(verify.Check("data", True, "every data block read, streamed"))
        return verify.VerifyResult(where, deep, tuple(checks))
    entries = sum(1 for ln in out.get("stdout", b"").decode(errors="replace").splitlines()
                  if ln.strip() and not ln.startswith(";"))
    if proc.returncode != 0 or entries != m.toc_entries:
        raise CommandFailed(f"pg_restore {chain.version} --list read {entries} TOC entries "
                            f"of {where} (exit {proc.returncode}), whose bytes match the "
                            f"manifest's {m.toc_entries}: the tool failed, not the backup; "
                            "nothing was recorded", detail=stderr)
    checks.append(verify.Check("toc", True, f"{entries} entries (pg_restore {chain.version})"))
    return verify.VerifyResult(where, deep, tuple(checks))


def prune_remote(url: str, policy: retention.Policy, *, dry_run: bool = False,
                 now: datetime | None = None) -> retention.PruneReport:
    """The local tree's plan and floor (`retention.plan_prune`) over the repository's
    catalog: only sound backups, each covered by newer ones of its source; never the newest
    drill-verified one. The manifest record of a backup is deleted first."""
    repo = repository.open_repository(url)
    now = now or datetime.now(UTC)
    remote = offsite_catalog.scan(repo, now=now)
    by_path = {r.backup.path: r for r in remote}
    plan = retention.plan_prune([r.backup for r in remote], now=now, policy=policy)
    if plan.refusal:
        raise SafetyRefusal(plan.refusal)
    if not dry_run:
        for b in plan.delete:
            offsite_transfer.delete_backup(repo, by_path[b.path])
    return retention.PruneReport(
        dry_run=dry_run, policy=policy, delete=tuple(b.path for b in plan.delete),
        delete_reasons=tuple(retention.Deleted(d.backup.path, d.backup.source, d.reasons)
                             for d in plan.decisions if not d.keep),
        keep=tuple(retention.Kept(d.backup.path, d.backup.state, d.backup.source, d.reasons)
                   for d in plan.decisions if d.keep),
        removed_dirs=(), decisions=plan.decisions)


@contextlib.contextmanager
def downloaded(url: str, key: str | None, *, database: str | None = None,
               pick: Callable[[list[catalog.Backup]], catalog.Backup] | None = None,
               progress: Callable[[int, int], None] | None = None,
               signer: Path | None = None) -> Iterator[Fetched]:
    """One backup of the repository (`key`, or the one `pick` chooses among the sound ones)
    downloaded, verified and decrypted into a private directory removed on the way out;
    `progress` hears (bytes so far, bytes in all). With `signer` (a PEM public key), a
    backup whose manifest record that key did not sign is refused before the download."""
    trusted = trusted_signer(signer)
    repo = repository.open_repository(url)
    if key is not None:
        remote = offsite_catalog.find(repo, key)
    else:
        found = [r for r in offsite_catalog.scan(repo, database) if r.backup.complete]
        if not found or pick is None:
            raise ConfigError(f"no sound backups in {repo.url}"
                              + (f" of database {database}" if database else ""))
        chosen = pick([r.backup for r in found])
        remote = next(r for r in found if r.backup.path == chosen.path)
    if trusted is not None:
        offsite_transfer.check_signed(repo, remote, trusted)
    total = remote.offsite.dump.size_bytes if remote.offsite else 0
    with offsite_transfer.fetched(repo, remote, identity_file=identity_file(),
                            progress=(lambda n: progress(n, total)) if progress else None,
                            ) as got:
        yield got


@dataclass(frozen=True)
class OffsiteStatus:
    """Whether the newest sound local backup of a database is in the repository."""

    repository: str
    database: str
    newest_local: str | None
    offsite: bool
    lag_s: float  # how long the newest sound local backup has waited to be off-site
    max_lag_s: float

    @property
    def ok(self) -> bool:
        return self.offsite or self.lag_s <= self.max_lag_s


def offsite_status(url: str, backup_dir: Path, *, max_lag_s: float,
                   database: str | None = None,
                   now: datetime | None = None) -> tuple[OffsiteStatus, ...]:
    """Per database: is the newest sound local backup off-site, and if not, for how long
    (by this host's clock and the backup's name: the store's clock never enters)."""
    now = now or datetime.now(UTC)
    repo = repository.open_repository(url)
    present = {r for r in repo.objects() if r.endswith(MANIFEST_SUFFIX)}
    out = []
    local = catalog.complete_backups(catalog.scan(backup_dir, database))
    for name in sorted({b.database for b in local}):
        newest = next(b for b in local if b.database == name)
        assert newest.manifest is not None and newest.taken_at is not None
        rel = offsite_transfer.remote_rel(newest.manifest)
        there = rel[: -len(DUMP_SUFFIX)] + MANIFEST_SUFFIX in present
        lag = 0.0 if there else max(0.0, (now - newest.taken_at).total_seconds())
        out.append(OffsiteStatus(str(repo.url), name, newest.taken_at.isoformat(), there, lag,
                                 max_lag_s))
    return tuple(out)


def prometheus_text(statuses: tuple[OffsiteStatus, ...]) -> str:
    from backup_core.ops.status import _label

    lines = ["# HELP atb_offsite_lag_seconds How long the newest sound local backup has "
             "waited to be off-site (0: it is).", "# TYPE atb_offsite_lag_seconds gauge"]
    lines += [f'atb_offsite_lag_seconds{{database="{_label(s.database)}"}} {s.lag_s:.0f}'
              for s in statuses]
    lines += ["# HELP atb_offsite_ok 1 when the newest backup is off-site within the bound.",
              "# TYPE atb_offsite_ok gauge"]
    lines += [f'atb_offsite_ok{{database="{_label(s.database)}"}} {int(s.ok)}'
              for s in statuses]
    return "\n".join(lines) + "\n"


