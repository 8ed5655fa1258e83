"""How a backup's archive is compressed: parsing `--compress`, what a pg_dump build can write,
what the runbook's pg_restore can read, and the default chosen from both.

`pg_dump -Fc` spends most of its time in gzip at its default level 6; level 1 takes about
40 % of that time for a file a few per cent larger. zstd (PostgreSQL 16+, where the build has
it) is faster still at a similar size. lz4 is the fastest of all, but its files are about
half again as large, so it is never the default.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from backup_core.tools.errors import AtbError, ConfigError
from backup_core.tools.runner import run
from backup_core.tools.toolchain import Toolchain

METHODS = ("gzip", "lz4", "zstd", "none")
LEVELS = {"gzip": (1, 9), "lz4": (1, 12), "zstd": (1, 22)}
DEFAULT_LEVEL = {"gzip": 6, "lz4": 1, "zstd": 1}
# the first pg_dump and pg_restore major that write and read lz4 and zstd archives
NEW_METHODS_MAJOR = 16
# the default, fastest first among methods whose files stay near gzip's default size
PREFERENCE = ("zstd:1", "gzip:1")
_SPEC = re.compile(r"^(gzip|lz4|zstd|none)(?::(\d{1,2}))?$")


@dataclass(frozen=True)
class Compression:
    method: str
    level: int = 0

    @property
    def spec(self) -> str:
        """The canonical text, as recorded in the manifest: `gzip:1`, `zstd:3`, `none`."""
        return "none" if self.method == "none" else f"{self.method}:{self.level}"

    def __str__(self) -> str:
        return self.spec


def parse(text: str) -> Compression:
    """`gzip:N` (1-9), `lz4[:N]`, `zstd[:N]` (1-22) or `none`; anything else is a
    `ConfigError` (exit 2) naming what is accepted."""
    m = _SPEC.match(text.strip().lower())
    if m is None:
        raise ConfigError(f"--compress {text[:40]!r} is not a compression: give gzip:N "
                          "(1-9), lz4, zstd:N (1-22) or none")
    method, level = m.group(1), m.group(2)
    if method == "none":
        if level is not None:
            raise ConfigError("--compress none takes no level")
        return Compression("none")
    low, high = LEVELS[method]
    value = DEFAULT_LEVEL[method] if level is None else int(level)
    if not low <= value <= high:
        raise ConfigError(f"--compress {method} takes a level from {low} to {high}, "
                          f"not {value}")
    return Compression(method, value)


def pg_dump_flag(spec: Compression, major: int) -> str:
    """pg_dump's option for `spec`: before 16 only a gzip level (0 is none) exists."""
    if major < NEW_METHODS_MAJOR:
        if spec.method not in ("gzip", "none"):
            raise ConfigError(f"pg_dump {major} writes only gzip: --compress {spec} needs "
                              f"pg_dump {NEW_METHODS_MAJOR} or newer")
        return f"--compress={spec.level if spec.method == 'gzip' else 0}"
    return f"--compress={spec.spec}"


def probe_argv(chain: Toolchain, spec: Compression) -> list[str]:
    """pg_dump checks its compression before it connects: against a socket that cannot
    exist, a build without the method says so, one with it fails to connect."""
    return [chain.tool("pg_dump"), "--format=custom", pg_dump_flag(spec, chain.major),
            "--schema-only", "--file=/dev/null", "--no-password",
            "--dbname=host=/nonexistent/atb-probe port=1 dbname=probe connect_timeout=1"]


@functools.lru_cache(maxsize=32)
def build_supports(chain: Toolchain, method: str) -> bool:
    """Whether this pg_dump build writes `method` (gzip and none always; lz4 and zstd only
    from 16 and only in builds with the library)."""
    if method in ("gzip", "none"):
        return True
    if chain.major < NEW_METHODS_MAJOR:
        return False
    try:
        done = run(probe_argv(chain, Compression(method, 1)), what=f"pg_dump {method} probe",
                   check=False, timeout=10)
    except (AtbError, OSError):
        return False
    return "compression" not in done.stderr.lower() and "invalid" not in done.stderr.lower()


def readable_by(spec: Compression, runbook_major: int) -> bool:
    """Whether the runbook's pg_restore major can read an archive compressed with `spec`."""
    return spec.method in ("gzip", "none") or runbook_major >= NEW_METHODS_MAJOR


@dataclass(frozen=True)
class Choice:
    """The compression a backup uses and why, in words `doctor` shows."""

    compression: Compression
    why: str


def choose(writable: frozenset[str], *, dump_version: str, runbook_major: int) -> Choice:
    """The default: the first of `PREFERENCE` that this pg_dump writes (`writable`, its
    methods) and the runbook's pg_restore reads. A pure decision."""
    dump_major = int(dump_version.split(".")[0])
    spec = next(s for s in map(parse, PREFERENCE)
                if s.method in writable | {"gzip"} and readable_by(s, runbook_major))
    if spec.method == "zstd":
        return Choice(spec, f"pg_dump {dump_version} writes zstd and the runbook's pg_restore "
                            f"{runbook_major} reads it: the fastest at about gzip's size")
    if dump_major < NEW_METHODS_MAJOR:
        reason = f"pg_dump {dump_version} writes only gzip"
    elif runbook_major < NEW_METHODS_MAJOR:
        reason = f"the runbook's pg_restore {runbook_major} reads only gzip"
    else:
        reason = f"pg_dump {dump_version} is built without zstd"
    return Choice(spec, f"{reason}: gzip at level 1 takes about 40 % of the default level's "
                        "time for a few per cent more bytes")


def default_for(chain: Toolchain, runbook_major: int) -> Choice:
    """The default compression for backups written by `chain` (probing its build)."""
    writable = frozenset(m for m in METHODS if build_supports(chain, m))
    return choose(writable, dump_version=chain.version, runbook_major=runbook_major)


def check_usable(spec: Compression, chain: Toolchain, runbook_major: int) -> None:
    """An explicit `--compress` this pg_dump cannot write, or the runbook cannot read, is a
    `ConfigError` before any work starts."""
    pg_dump_flag(spec, chain.major)
    if not build_supports(chain, spec.method):
        raise ConfigError(f"pg_dump {chain.version} ({chain.bindir}) is built without "
                          f"{spec.method}: use --compress gzip:1, or a pg_dump built with it")
    if not readable_by(spec, runbook_major):
        raise ConfigError(f"--compress {spec}: the runbook's pg_restore {runbook_major} "
                          f"cannot read {spec.method} archives (it needs "
                          f"{NEW_METHODS_MAJOR} or newer): use gzip:N")
