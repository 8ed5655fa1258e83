"""The operations on an off-site repository (`--repo`): push, list, verify, prune, restore's
download and the off-site lag, each one call returning a frozen record."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backup_core.ops import verify
from backup_core.store import catalog, repository, retention, sealing
from backup_core.store.naming import DUMP_SUFFIX, MANIFEST_SUFFIX
from backup_core.store.repository import Fetched, PushReport, RemoteBackup, Repository
from backup_core.tools import toolchain
from backup_core.tools.errors import ConfigError, SafetyRefusal, VerifyFailed


def identity_file() -> Path | None:
    value = os.environ.get("ATB_AGE_IDENTITY_FILE")
    return Path(value) if value else None


def push(url: str, backup_dir: Path, *, encrypt_to: str | None = None,
         database: str | None = None,
         progress: Callable[[int], None] | None = None) -> PushReport:
    """Upload every sound local backup the repository lacks (config checked first)."""
    keys = sealing.recipients(encrypt_to or "")
    return repository.push(repository.open_repository(url), backup_dir, recipients=keys,
                           database=database, progress=progress)


def listing(url: str, database: str | None = None) -> tuple[catalog.Listed, ...]:
    return repository.listing(repository.open_repository(url), database)


def _select(repo: Repository, *, key: str | None, latest: bool, all_: bool,
            database: str | None) -> list[RemoteBackup]:
    if sum([key is not None, latest, all_]) != 1:
        raise ConfigError("give exactly one of KEY, --latest or --all")
    if key is not None:
        return [repository.find(repo, key)]
    found = [r for r in repository.scan(repo, database) if r.backup.is_backup]
    if not found:
        raise ConfigError(f"no backups in {repo.url} to verify")
    return found[:1] if latest else found


def verify_remote(url: str, *, key: str | None = None, latest: bool = False,
                  all_: bool = False, database: str | None = None,
                  deep: bool = False) -> verify.VerifyReport:
    """Download each selected backup into a private directory, proving the stored and the
    plaintext SHA-256 of every object, then verify the copy as a local backup (TOC, and with
    `deep` every data block); nothing is recorded in the repository."""
    repo = repository.open_repository(url)
    chains = toolchain.discover()
    ident = identity_file()
    results = []
    for remote in _select(repo, key=key, latest=latest, all_=all_, database=database):
        where = remote.backup.path  # the key, as `list --repo` shows it
        if not remote.backup.complete:
            results.append(verify.VerifyResult(where, deep, (verify.Check(
                "catalog", False, f"{remote.backup.state}: {remote.backup.problem}"),)))
            continue
        try:
            with repository.fetched(repo, remote, identity_file=ident) as got:
                local = verify.verify_backup(got.path, deep=deep, chains=chains, record=False)
            checks = (verify.Check("stored sha256", True, got.offsite.dump.sha256),
                      *local.checks)
        except VerifyFailed as exc:
            checks = (verify.Check("stored sha256", False, str(exc)),)
        results.append(verify.VerifyResult(where, deep, checks))
    return verify.VerifyReport(tuple(results))


def prune_remote(url: str, policy: retention.Policy, *, dry_run: bool = False,
                 now: datetime | None = None) -> retention.PruneReport:
    """The local tree's plan and floor (`retention.plan_prune`) over the repository's
    catalog: only sound backups, each covered by newer ones of its source; never the newest
    drill-verified one. The manifest record of a backup is deleted first."""
    repo = repository.open_repository(url)
    now = now or datetime.now(UTC)
    remote = repository.scan(repo, now=now)
    by_path = {r.backup.path: r for r in remote}
    plan = retention.plan_prune([r.backup for r in remote], now=now, policy=policy)
    if plan.refusal:
        raise SafetyRefusal(plan.refusal)
    if not dry_run:
        for b in plan.delete:
            repository.delete_backup(repo, by_path[b.path])
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
               progress: Callable[[int], None] | None = None) -> Iterator[Fetched]:
    """One backup of the repository (`key`, or the one `pick` chooses among the sound ones)
    downloaded, verified and decrypted into a private directory removed on the way out."""
    repo = repository.open_repository(url)
    if key is not None:
        remote = repository.find(repo, key)
    else:
        found = [r for r in repository.scan(repo, database) if r.backup.complete]
        if not found or pick is None:
            raise ConfigError(f"no sound backups in {repo.url}"
                              + (f" of database {database}" if database else ""))
        chosen = pick([r.backup for r in found])
        remote = next(r for r in found if r.backup.path == chosen.path)
    with repository.fetched(repo, remote, identity_file=identity_file(),
                            progress=progress) as got:
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
        rel = repository.remote_rel(newest.manifest)
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


