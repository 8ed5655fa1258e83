"""The one way a command shows a record: as JSON on stdout, or as text for a person.

A record is a frozen dataclass, a list or tuple of them, or a mapping. Its JSON is its
fields (a field declared with `metadata={"json": False}` is for people only) plus the derived
values its class names in `JSON_PROPERTIES`; paths become strings, times ISO 8601 in UTC.
JSON leaves through `redact`, so a secret a tool echoed never reaches a script's input.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from backup_core.tools.conninfo import redact

T = TypeVar("T")
Column = tuple[str, Callable[[T], object]]


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types, recursively."""
    kind = type(value)
    if kind in _PLAIN:  # most values of a record: returned as they are, as below
        return value
    names = _json_names(kind)
    if names is not None:
        return {name: jsonable(getattr(value, name)) for name in names}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


_PLAIN = frozenset({str, int, float, bool, type(None)})


_NAMES: dict[type, tuple[str, ...] | None] = {}


def _json_names(kind: type) -> tuple[str, ...] | None:
    """A dataclass's JSON keys, in order: its fields but those declared for people only,
    then its `JSON_PROPERTIES`; None for any other type. Found once per class, not once per
    record (`atb db list --json` renders 50,000 records)."""
    if kind not in _NAMES:
        _NAMES[kind] = (*(f.name for f in dataclasses.fields(kind)
                          if f.metadata.get("json", True)),
                        *getattr(kind, "JSON_PROPERTIES", ())) \
            if dataclasses.is_dataclass(kind) else None
    return _NAMES[kind]


def print_json(value: Any) -> None:
    sys.stdout.write(redact(json.dumps(jsonable(value), indent=2, sort_keys=True)) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, trailing blanks trimmed."""
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"a row of {len(r)} cells under {len(headers)} headers")
    columns = [[str(c) for c in column] for column in zip(*rows, strict=True)] if rows \
        else [[] for _ in headers]
    return aligned(headers, columns)


def records_table(records: Sequence[T], columns: Sequence[Column[T]]) -> str:
    """A table of records, one row each, a column per (header, how to read it)."""
    return aligned([h for h, _ in columns],
                   [[str(read(r)) for r in records] for _, read in columns])


def aligned(headers: Sequence[str], columns: Sequence[Sequence[str]]) -> str:
    """The table's text from its columns' cells, in one pass over the rows: each width is
    found once per column, and each row is one format of its cells (a list of 50,000 backups
    spent a third of its rendering in per-cell padding calls)."""
    if not headers:
        return ""
    widths = [max(len(h), max(map(len, cells), default=0))
              for h, cells in zip(headers, columns, strict=True)]
    # every column but the last padded: the last one's padding is trimmed anyway
    row = "  ".join([f"{{:<{w}}}" for w in widths[:-1]] + ["{}"])
    lines = [row.format(*headers).rstrip()]
    lines += [row.format(*cells).rstrip() for cells in zip(*columns, strict=True)]
    return "\n".join(lines)


def show(value: T, *, as_json: bool, text: Callable[[T], str]) -> None:
    """Print `value` as JSON when asked, else as the text `text` makes of it."""
    if as_json:
        print_json(value)
    else:
        click.echo(text(value))
