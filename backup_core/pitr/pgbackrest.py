"""pgBackRest as atb uses it: read a stanza's backups and archive, restore a backup into a
directory of ours, fetch one WAL segment. pgBackRest does the physical work; atb never
writes to its repository, never passes `--delta`, and always names the data directory itself.

Every call names the stanza and, when given, the config file; `PGBACKREST_*` variables (the
repository's credentials among them) reach pgBackRest and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backup_core.tools.conninfo import redact, register_secret
from backup_core.tools.errors import CommandFailed, ConfigError, ToolchainError
from backup_core.tools.runner import Completed, run

# The PostgreSQL majors each pgBackRest release supports (from its release notes).
SUPPORTED_MAJORS = {(2, 45): (9, 15), (2, 46): (9, 15), (2, 47): (9, 16), (2, 48): (9, 16),
                    (2, 49): (9, 16), (2, 50): (9, 16), (2, 51): (9, 16), (2, 52): (9, 16),
                    (2, 53): (9, 17), (2, 54): (9, 17), (2, 55): (10, 17), (2, 56): (10, 18)}
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
HISTORY_RE = re.compile(r"^[0-9A-F]{8}\.history$")  # a timeline's history file
SEGMENT_BYTES = 16 * 1024 * 1024  # PostgreSQL's default; other sizes are not supported
# The only recovery target atb asks for: a time. The restore's `--type` and the WAL
# prefetch's stop rule (the first commit after the target) both follow from it.
TARGET_TYPE = "time"


@dataclass(frozen=True)
class Stanza:
    name: str
    config: Path | None = None

    def argv(self, *command: str) -> list[str]:
        return stanza_argv(executable(), self, *command)


def executable() -> str:
    exe = shutil.which("pgbackrest")
    if exe is None:
        raise ToolchainError("pgbackrest is not installed: the point-in-time drill and "
                             "`status --stanza` need it (Debian: apt-get install pgbackrest)")
    return exe


def stanza_argv(exe: str, stanza: Stanza | None, *command: str) -> list[str]:
    """pgBackRest on one stanza, never writing a log file of its own; with no stanza, the
    bare command (`version`)."""
    if stanza is None:
        return [exe, *command]
    config = [f"--config={stanza.config}"] if stanza.config else []
    return [exe, *config, f"--stanza={stanza.name}", "--log-level-file=off", *command]


def restore_argv(exe: str, stanza: Stanza, datadir: Path, *, target: datetime, backup: str,
                 lock_dir: Path, restore_command: str,
                 target_type: str = TARGET_TYPE) -> list[str]:
    """`pgbackrest restore` of `backup` into `datadir` for recovery to `target`, then promote;
    the copy's restore_command (run by the server's shell, hence quoted) is `restore_command`
    (`spool_restore_command`: the copy never reads the repository itself)."""
    return stanza_argv(exe, stanza, f"--pg1-path={datadir}", f"--lock-path={lock_dir}",
                       "restore", f"--set={backup}", f"--type={target_type}",
                       f"--target={target.isoformat()}", "--target-timeline=latest",
                       "--target-action=promote",
                       "--archive-mode=off", f"--recovery-option=restore_command={restore_command}")


@dataclass(frozen=True)
class BackupSet:
    label: str
    type: str  # full, diff, incr
    stopped: datetime
    wal_stop: str  # the last segment the backup needs
    wal_start: str = ""  # the first


@dataclass(frozen=True)
class StanzaInfo:
    name: str
    status: str  # pgBackRest's own message: "ok", "no valid backups", ...
    pg_version: str
    backups: tuple[BackupSet, ...]
    wal_min: str | None
    wal_max: str | None

    @property
    def pg_major(self) -> int:
        return int(self.pg_version.split(".")[0]) if self.pg_version else 0


def version() -> tuple[str, tuple[int, int] | None] | None:
    """(path, supported majors) of the pgbackrest found, or None."""
    exe = shutil.which("pgbackrest")
    if exe is None:
        return None
    done = run(stanza_argv(exe, None, "version"), what="pgbackrest version", check=False,
               timeout=30)
    found = re.search(r"(\d+)\.(\d+)", done.stdout)
    if not found:
        return f"{exe} (version unknown)", None
    key = (int(found.group(1)), int(found.group(2)))
    return f"{exe} {found.group(0)}", SUPPORTED_MAJORS.get(key)


DEFAULT_CONFIGS = (Path("/etc/pgbackrest/pgbackrest.conf"), Path("/etc/pgbackrest.conf"))
_REPO_KEY = re.compile(r"^repo(\d*)-(type|host)$")


def remote_repository(stanza: Stanza, *, environ: dict[str, str] | None = None) -> str | None:
    """Where the stanza's repository is reached over the network (an object store's
    `repoN-type`, or a `repoN-host`), the setting that says so; None for a local directory.
    Read from pgBackRest's variables and its config file's global and stanza sections."""
    import configparser

    found: dict[str, str] = {}
    path = stanza.config or next((p for p in DEFAULT_CONFIGS if p.is_file()), None)
    if path is not None and path.is_file():
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            parser.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            parser.clear()  # pgBackRest itself names a file it cannot read
        for section in parser.sections():
            if section.split(":")[0] in ("global", stanza.name):
                found.update(dict(parser.items(section)))
    env = os.environ if environ is None else environ
    found.update({k[len("PGBACKREST_"):].lower().replace("_", "-"): v for k, v in env.items()
                  if k.startswith("PGBACKREST_REPO")})
    for key, value in sorted(found.items()):
        m = _REPO_KEY.match(key)
        if m and value.strip() and (m.group(2) == "host" or value.strip() != "posix"):
            return f"{key}={value.strip()}"
    return None


def tool_env() -> dict[str, str]:
    """pgBackRest's own variables (the repository's credentials among them), for pgBackRest
    alone. Its secrets are registered with the run's masking as they are handed out, so no
    failure of a pgBackRest command (its `CommandFailed`, a log line, a report) shows them."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PGBACKREST_")}
    for value in _secrets(env):
        register_secret(value)
    return env


def _secrets(env: dict[str, str]) -> list[str]:
    """The secret values among pgBackRest's variables (a pass, key, secret or token), the
    longest first: one secret inside another is masked whole."""
    return sorted((value for name, value in env.items() if value and _SECRET_NAME.search(name)),
                  key=len, reverse=True)


def call(stanza: Stanza, *command: str, what: str, run_as: str | None = None,
         check: bool = True, timeout: float | None = 3600) -> Completed:
    return run(stanza.argv(*command), what=what, env=tool_env(), run_as=run_as, check=check,
               timeout=timeout)


def info(stanza: Stanza, *, run_as: str | None = None) -> StanzaInfo:
    """`pgbackrest info --output=json` for one stanza, checked and typed."""
    done = call(stanza, "info", "--output=json", what="pgbackrest info", run_as=run_as,
                timeout=300)
    try:
        [raw] = json.loads(done.stdout)
    except (ValueError, TypeError) as exc:
        raise CommandFailed(f"pgbackrest info printed no stanza {stanza.name}") from exc
    message = str(raw.get("status", {}).get("message", "unknown"))
    if raw.get("status", {}).get("code") == 1:  # missing stanza path
        raise ConfigError(f"pgBackRest has no stanza {stanza.name!r}"
                          + (f" in {stanza.config}" if stanza.config else "")
                          + f": {message}")
    dbs = raw.get("db") or [{}]
    archives = [a for a in raw.get("archive", []) if a.get("max")]
    backups = tuple(
        BackupSet(label=b["label"], type=b["type"],
                  stopped=datetime.fromtimestamp(b["timestamp"]["stop"], UTC),
                  wal_stop=b["archive"]["stop"], wal_start=b["archive"]["start"])
        for b in raw.get("backup", []) if not b.get("error"))
    return StanzaInfo(name=stanza.name, status=message, pg_version=str(dbs[-1].get("version", "")),
                      backups=backups, wal_min=archives[-1]["min"] if archives else None,
                      wal_max=archives[-1]["max"] if archives else None)


def restore(stanza: Stanza, datadir: Path, *, target: datetime, backup: str, lock_dir: Path,
            run_as: str | None, restore_command: str) -> Completed:
    """Restore `backup` into `datadir` (ours, empty) for recovery to `target`, then promote.

    With our own lock directory and no log file, archiving off in the copy, and its
    `restore_command` copying from atb's spool (`spool_restore_command`): nothing the copy
    does writes to the stanza's repository, its spool or its logs."""
    return run(restore_argv(executable(), stanza, datadir, target=target, backup=backup,
                            lock_dir=lock_dir, restore_command=restore_command),
               what="pgbackrest restore", env=tool_env(), run_as=run_as, timeout=None)


ARCHIVE_GET_NOT_FOUND = 1  # archive-get's exit code for a file the archive does not have


def fetch_argv(exe: str, stanza: Stanza, segment: str, dest: Path, *, datadir: Path | None,
               lock_dir: Path) -> list[str]:
    """`archive-get` of one file to `dest`, synchronous, with our own lock directory, and
    pg_control read from `datadir` (the restored copy's), as the copy's own restore_command
    would: pgBackRest picks the archive matching that cluster's system and version. None
    leaves pg1-path to the config (the stanza's own cluster, for the window's end)."""
    if not (SEGMENT_RE.match(segment) or HISTORY_RE.match(segment)):
        raise ValueError(f"not a WAL segment name: {segment!r}")
    pg = [f"--pg1-path={datadir}"] if datadir is not None else []
    return stanza_argv(exe, stanza, *pg, f"--lock-path={lock_dir}", "--no-archive-async",
                       "archive-get", segment, str(dest))


def fetch_segment(stanza: Stanza, segment: str, dest: Path, *, datadir: Path | None,
                  lock_dir: Path, run_as: str | None) -> bool:
    """Copy one archived WAL segment (or a timeline's history file) to `dest`; False only
    when the archive does not have it (archive-get's exit 1). Any other failure (the store
    unreachable, a wrong cipher pass, a corrupt file) raises, naming the file and what
    pgBackRest said: it must not pass for the end of the archive."""
    done = run(fetch_argv(executable(), stanza, segment, dest, datadir=datadir,
                          lock_dir=lock_dir),
               what="pgbackrest archive-get", env=tool_env(), run_as=run_as, check=False,
               timeout=600)
    if done.returncode == 0 and dest.is_file():
        return True
    if done.returncode == ARCHIVE_GET_NOT_FOUND:
        return False
    raise CommandFailed(f"pgbackrest archive-get {segment} failed (exit {done.returncode}): "
                        f"{tool_message(done.stderr or done.stdout)}")


def tool_message(text: str) -> str:
    """pgBackRest's error (its first ERROR line and the causes under it) on one line, with
    every connection password, secret the run knows and secret `PGBACKREST_*` value (a pass,
    key, secret or token, whatever its length) masked; the stanza, paths and levels are
    left as they are, so the message still says where."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((i for i, ln in enumerate(lines) if "ERROR" in ln), max(len(lines) - 1, 0))
    message = redact(" ".join(lines[first:first + 6])) or "no message"
    for value in _secrets(tool_env()):  # also those shorter than the run's masking masks
        message = message.replace(value, "***")
    return message


_SECRET_NAME = re.compile(r"PASS|KEY|SECRET|TOKEN")


def spool_restore_command(spool: Path) -> str:
    """A restore_command that copies from `spool`, a directory the server's account reads,
    where atb put the WAL beforehand (`pitr.prefetch_wal`): the server needs neither the
    repository nor pgBackRest's credentials. A file not there fails it, as archive-get does
    for one the archive lacks."""
    return f'cp {shlex.quote(str(spool))}/%f "%p"'


def next_segment(segment: str) -> str:
    """The segment after `segment` on the same timeline (16 MB segments)."""
    return _shift(segment, 1)


def previous_segment(segment: str) -> str:
    return _shift(segment, -1)


def _shift(segment: str, by: int) -> str:
    per_log = 0x100000000 // SEGMENT_BYTES
    number = int(segment[8:16], 16) * per_log + int(segment[16:], 16) + by
    return f"{segment[:8]}{number // per_log:08X}{number % per_log:08X}"
