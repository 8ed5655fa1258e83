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
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
               if f.metadata.get("json", True)}
        for name in getattr(type(value), "JSON_PROPERTIES", ()):
            out[name] = jsonable(getattr(value, name))
        return out
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(redact(json.dumps(jsonable(value), indent=2, sort_keys=True)) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, trailing blanks trimmed."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([line, *body])


def records_table(records: Sequence[T], columns: Sequence[Column[T]]) -> str:
    """A table of records, one row each, a column per (header, how to read it)."""
    return table([h for h, _ in columns], [[read(r) for _, read in columns] for r in records])


def show(value: T, *, as_json: bool, text: Callable[[T], str]) -> None:
    """Print `value` as JSON when asked, else as the text `text` makes of it."""
    if as_json:
        print_json(value)
    else:
        click.echo(text(value))
