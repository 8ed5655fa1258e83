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
from itertools import repeat
from pathlib import Path
from typing import Any, TypeVar

import click

from backup_core.store.catalog import collector_paused
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
    with collector_paused():  # a dict per record, no cycles: 50,000 set off full collections
        text = indented(jsonable(value))
    sys.stdout.write(redact(text) + "\n")


def indented(value: Any) -> str:
    """`json.dumps(value, indent=2, sort_keys=True)`, character for character, faster: an
    indent sends json to its pure-Python encoder (0.5 s of `atb db list --json` over 50,000
    backups), so each list or mapping of plain values at a depth is written by json's C
    encoder with that depth's separators, and only the nesting around them here. Anything
    but JSON's own types goes to json.dumps whole (its error included)."""
    out: list[str] = []
    try:
        _write(value, out, "\n")
    except _NotPlain:
        return json.dumps(value, indent=2, sort_keys=True)
    return "".join(out)


class _NotPlain(Exception):
    """A value `_write` leaves to json."""


_SCALARS = (str, int, float, type(None))  # bool is an int
_flat_encoders: dict[str, Callable[[Any], str]] = {}


def _flat(inner: str) -> Callable[[Any], str]:
    """json's C encoder for a container of plain values whose items start at `inner` (a
    newline and its indent): `{"a": 1,<inner>"b": 2}`, the brackets' own lines left out.
    Made once per depth (json.JSONEncoder makes one per call)."""
    if inner not in _flat_encoders:
        encoder = json.JSONEncoder(sort_keys=True, separators=("," + inner, ": "))
        make: Any = getattr(json.encoder, "c_make_encoder", None)
        if make is None:  # an interpreter without json's C part
            _flat_encoders[inner] = encoder.encode
        else:
            chunks = make(None, encoder.default, json.encoder.encode_basestring_ascii, None,
                          ": ", "," + inner, True, False, True)
            _flat_encoders[inner] = lambda value: "".join(chunks(value, 0))
    return _flat_encoders[inner]


def _write(value: Any, out: list[str], newline: str) -> None:
    """`value` at the depth `newline` (a newline and its indent) opens, as json writes it."""
    if isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = newline + "  "
        if not all(map(isinstance, value, repeat(str))):
            raise _NotPlain  # json's own rules for other keys
        if all(map(isinstance, value.values(), repeat(_SCALARS))):
            out.append("{" + inner + _flat(inner)(value)[1:-1] + newline + "}")
            return
        out.append("{" + inner)
        for i, (key, item) in enumerate(sorted(value.items())):
            out.append(("," + inner if i else "") + _flat(inner)(key) + ": ")
            _write(item, out, inner)
        out.append(newline + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        inner = newline + "  "
        if all(map(isinstance, value, repeat(_SCALARS))):
            out.append("[" + inner + _flat(inner)(value)[1:-1] + newline + "]")
            return
        out.append("[" + inner)
        for i, item in enumerate(value):
            if i:
                out.append("," + inner)
            _write(item, out, inner)
        out.append(newline + "]")
    elif isinstance(value, _SCALARS):
        out.append(_flat(newline)(value))
    else:
        raise _NotPlain


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
