"""The sidecar manifest: what a backup holds, recorded in the same snapshot as the dump."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from backup_core.tools.errors import AtbError
from backup_core.tools.fsutil import atomic_write_text

SCHEMA_VERSION = 1
SCHEMA_ID = "atb.backup-manifest"

# schema -> kind -> sorted names; kinds: tables, views, indexes, sequences, functions,
# constraints, extensions.
Inventory = dict[str, dict[str, list[str]]]


@dataclass(frozen=True)
class Manifest:
    database: str
    file: str
    taken_at: str
    started_at: str
    finished_at: str
    duration_s: float
    size_bytes: int
    sha256: str
    pg_dump_version: str
    server_version: str
    toc_entries: int
    alembic_revision: str | None
    row_counts_mode: str
    row_counts: dict[str, int] = field(default_factory=dict)
    # table -> sum of a 64-bit hash of each row's text form (mode `checksum`)
    row_checksums: dict[str, str] = field(default_factory=dict)
    inventory: Inventory = field(default_factory=dict)
    # "<kind> <object>" -> definition (types, defaults, constraints, grants; bodies as md5)
    definitions: dict[str, str] = field(default_factory=dict)
    # every kind of definition the backup's atb read, those with no object too: a drill
    # compares these kinds both ways (an object the copy has and production had not is a
    # difference). Empty in manifests written before it was recorded: a drill then compares
    # only the kinds `definitions` holds. Optional, so an older atb reads newer manifests.
    definition_kinds: list[str] = field(default_factory=list)
    # what was already wrong in production at backup time (see `probes.conditions`)
    conditions: dict[str, list[str]] = field(default_factory=dict)
    # the roles sidecar: {"file": ..., "sha256": ..., "size_bytes": ...}; None before roles
    roles: dict[str, Any] | None = None
    source: str = ""
    # which server the dump came from (`db.source_id`); empty in manifests written before it
    # was recorded: prune and status then group by database name alone
    source_id: str = ""
    # the backup host's clock minus the server's at the snapshot, in seconds: the name and
    # `taken_at` come from the server's clock
    clock_skew_s: float | None = None
    schema: str = SCHEMA_ID
    schema_version: int = SCHEMA_VERSION
    tool_version: str = ""
    # the `--compress` spec the dump was written with (`gzip:1`, `zstd:1`, `none`); empty in
    # manifests written before it was recorded (pg_dump's default, gzip at level 6)
    compression: str = ""

    @property
    def pg_dump_major(self) -> int:
        return int(self.pg_dump_version.split(".")[0])

    @property
    def server_major(self) -> int:
        return int(self.server_version.split(".")[0])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        """Validate `data` against the schema: every field of the right type and shape.

        Raises `ValueError` naming the first field that is wrong; nothing a manifest holds
        can make a command crash further on."""
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object but {type(data).__name__}")
        if data.get("schema") != SCHEMA_ID:
            raise ValueError("not an atb backup manifest")
        version = data.get("schema_version", 0)
        if not _is_int(version) or version < 1:
            raise ValueError("schema_version is not a positive integer")
        if version > SCHEMA_VERSION:
            raise ValueError(f"manifest schema {version} is newer than this atb")
        for name, (kinds, required) in _SCHEMA.items():
            value = data.get(name, _MISSING)
            if value is _MISSING:
                if required:
                    raise ValueError(f"field {name!r} is missing")
            elif type(value) not in kinds:  # exact: JSON gives no subclasses, and bool != int
                raise ValueError(f"field {name!r} is {type(value).__name__}, expected "
                                 + " or ".join(k.__name__ for k in kinds))
        _check_values(data)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_MISSING = object()
# field -> (accepted JSON types, required)
_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "database": ((str,), True), "file": ((str,), True), "taken_at": ((str,), True),
    "started_at": ((str,), True), "finished_at": ((str,), True),
    "duration_s": ((int, float), True), "size_bytes": ((int,), True),
    "sha256": ((str,), True), "pg_dump_version": ((str,), True),
    "server_version": ((str,), True), "toc_entries": ((int,), True),
    "alembic_revision": ((str, type(None)), True), "row_counts_mode": ((str,), True),
    "row_counts": ((dict,), False), "row_checksums": ((dict,), False),
    "inventory": ((dict,), False), "definitions": ((dict,), False),
    "definition_kinds": ((list,), False),
    "roles": ((dict, type(None)), False), "conditions": ((dict,), False),
    "source": ((str,), False), "source_id": ((str,), False),
    "clock_skew_s": ((int, float, type(None)), False),
    "tool_version": ((str,), False), "compression": ((str,), False),
}
_VERSION = re.compile(r"^\d+(\.\d+)*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KIND = re.compile(r"[a-z_]{1,64}")
_COMPRESSION = re.compile(r"^((gzip|lz4|zstd):\d{1,2}|none)?$")


def _check_values(data: dict[str, Any]) -> None:
    if not data["database"] or "\0" in data["database"]:
        raise ValueError("field 'database' is not a database name")
    if not data["file"].endswith(".dump") or "/" in data["file"]:
        raise ValueError("field 'file' is not a dump file name")
    if data["size_bytes"] < 0 or data["toc_entries"] < 0:
        raise ValueError("size_bytes and toc_entries must not be negative")
    if not _SHA256.match(data["sha256"]):
        raise ValueError("field 'sha256' is not 64 hexadecimal digits")
    for name in ("pg_dump_version", "server_version"):
        if not _VERSION.match(data[name]):
            raise ValueError(f"field {name!r} is not a version number")
    for name in ("taken_at", "started_at", "finished_at"):
        try:
            datetime.fromisoformat(data[name])
        except ValueError:
            raise ValueError(f"field {name!r} is not an ISO 8601 time") from None
    counts = data.get("row_counts", {})
    if any(type(v) is not int or v < 0 for v in counts.values()):
        raise ValueError("field 'row_counts' is not a map of table names to counts")
    if any(type(v) is not list or any(type(x) is not str for x in v)
           for v in data.get("conditions", {}).values()):
        raise ValueError("field 'conditions' is not a map of kinds to descriptions")
    roles = data.get("roles")
    if roles is not None and not (
            type(roles.get("file")) is str and roles["file"].endswith(".roles.sql")
            and "/" not in roles["file"] and type(roles.get("sha256")) is str
            and _SHA256.match(roles["sha256"]) and type(roles.get("size_bytes")) is int):
        raise ValueError("field 'roles' does not describe a roles file")
    if not _COMPRESSION.fullmatch(data.get("compression", "")):
        raise ValueError("field 'compression' is not a compression spec")
    if any(type(v) is not str for v in data.get("definitions", {}).values()):
        raise ValueError("field 'definitions' is not a map of objects to definitions")
    if any(type(k) is not str or not _KIND.fullmatch(k)
           for k in data.get("definition_kinds", [])):
        raise ValueError("field 'definition_kinds' is not a list of kinds of definitions")
    if any(type(v) is not str for v in data.get("row_checksums", {}).values()):
        raise ValueError("field 'row_checksums' is not a map of table names to checksums")
    for schema, kinds in data.get("inventory", {}).items():
        # the shapes are what a consumer iterates; a name of another type only compares unequal
        if type(kinds) is not dict or any(type(n) is not list for n in kinds.values()):
            raise ValueError(f"field 'inventory' has a malformed entry for schema {schema!r}")


class ManifestError(AtbError):
    """A manifest that cannot be read."""


MAX_MANIFEST_BYTES = 256 << 20  # a manifest of tens of thousands of tables is a few MB


def read_manifest(path: Path) -> Manifest:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise ManifestError(f"no manifest at {path}") from exc
    except OSError as exc:
        raise ManifestError(f"unreadable manifest {path}: {exc}") from exc
    return parse_manifest(raw, path)


def parse_manifest(raw: bytes, path: Path) -> Manifest:
    """The manifest in `raw` (read from `path`), validated whole."""
    try:
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        return Manifest.from_dict(json.loads(raw))
    except RecursionError as exc:
        raise ManifestError(f"unreadable manifest {path}: nested too deeply") from exc
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"unreadable manifest {path}: {exc}") from exc


def write_manifest(path: Path, manifest: Manifest) -> None:
    atomic_write_text(path, manifest.to_json())
