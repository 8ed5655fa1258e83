"""The sidecar manifest: what a backup holds, recorded in the same snapshot as the dump."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backup_core.errors import AtbError
from backup_core.fsutil import atomic_write_text

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
    inventory: Inventory = field(default_factory=dict)
    source: str = ""
    schema: str = SCHEMA_ID
    schema_version: int = SCHEMA_VERSION
    tool_version: str = ""

    @property
    def pg_dump_major(self) -> int:
        return int(self.pg_dump_version.split(".")[0])

    @property
    def server_major(self) -> int:
        return int(self.server_version.split(".")[0])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("schema") != SCHEMA_ID:
            raise ValueError("not an atb backup manifest")
        if int(data.get("schema_version", 0)) > SCHEMA_VERSION:
            raise ValueError(f"manifest schema {data['schema_version']} is newer than this atb")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class ManifestError(AtbError):
    """A manifest that cannot be read."""


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.from_dict(json.loads(path.read_bytes()))
    except FileNotFoundError as exc:
        raise ManifestError(f"no manifest at {path}") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise ManifestError(f"unreadable manifest {path}: {exc}") from exc


def write_manifest(path: Path, manifest: Manifest) -> None:
    atomic_write_text(path, manifest.to_json())
