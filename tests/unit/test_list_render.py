"""`atb db list`'s rendering, rebuilt for 50,000 rows: the same text and the same `--json`
as the renderers it replaced (kept here verbatim as the reference), for the names that are
hard to show (control characters, bytes that are not UTF-8, wide and combining characters),
and the whole-tree scan a drill picks from answering as a scan of one database would."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from backup_core.store import catalog
from backup_core.store.catalog import COMPLETE, DAMAGED, STRAY, Backup, Listed
from backup_core.store.manifest import Manifest
from backup_core.store.naming import (
    backup_path,
    dir_name,
    legacy_dir_name,
    manifest_path,
    printable,
)
from backup_core.store.verdicts import DrillVerdict, VerifyRecord
from backup_core.tools.conninfo import redact
from backup_core.tools.durations import human
from drills import console
from drills.cli import db, output
from drills.cli.params import rel

T = TypeVar("T")
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


# -- the renderers as they were (the reference) ------------------------------------------------

def old_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([line, *body])


def old_records_table(records: Sequence[T], columns: Sequence[tuple[str, Callable[[T], object]]],
                      ) -> str:
    return old_table([h for h, _ in columns], [[read(r) for _, read in columns] for r in records])


def old_list_text(items: tuple[Listed, ...], backup_dir: Path, *, where: str) -> str:
    if not items:
        return f"no backups {where}"
    columns: list[tuple[str, Callable[[Listed], object]]] = [
        ("taken (UTC)", lambda b: b.taken_at.strftime("%Y-%m-%d %H:%M:%SZ") if b.taken_at
         else "-"),
        ("age", lambda b: human(b.age_s) if b.age_s is not None else "-"),
        ("size", lambda b: console.size(b.size_bytes)),
        ("alembic", lambda b: printable(b.alembic_revision or "-")),
        ("state", lambda b: b.state if not b.backup.complete else b.checked)]
    if len({b.backup.manifest.source_id for b in items if b.backup.manifest is not None}) > 1:
        columns.append(("source", lambda b: printable(b.backup.manifest.source_id or "unknown")
                        if b.backup.manifest else "-"))
    if len({b.database for b in items}) > 1:
        columns.append(("database", lambda b: printable(b.database)))
    columns.append(("path", lambda b: rel(b.path, backup_dir)
                    + (f"  ({printable(b.problem)})" if b.problem else "")))
    return old_records_table(items, columns)


def old_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: old_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
               if f.metadata.get("json", True)}
        for name in getattr(type(value), "JSON_PROPERTIES", ()):
            out[name] = old_jsonable(getattr(value, name))
        return out
    if isinstance(value, dict):
        return {str(k): old_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [old_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


# -- records with names that are hard to show ----------------------------------------------

ODD = ["trading", "ta\tb\x1b[31mle", "caf\u00e9", "e\u0301t\u00e9", "\u5099\u4efd\u5eab",
       "\U0001f4be", "bad\udcffbyte", "new\nline", "x" * 40]


def manifest(database: str, file: str, *, alembic: str | None, source_id: str) -> Manifest:
    return Manifest(database=database, file=file, taken_at=NOW.isoformat(),
                    started_at=NOW.isoformat(), finished_at=NOW.isoformat(), duration_s=1.0,
                    size_bytes=5, sha256="0" * 64, pg_dump_version="18.6",
                    server_version="18.6", toc_entries=40, alembic_revision=alembic,
                    row_counts_mode="exact", source_id=source_id)


def records(root: Path, *, sources: int = 1, databases: int = len(ODD)) -> tuple[Listed, ...]:
    """One record per odd name, in every state the table shows differently."""
    out = []
    for i, name in enumerate(ODD[:databases]):
        at = None if i == 3 else NOW - timedelta(hours=i * 7, seconds=i)
        if i == 5:
            at = datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)  # strftime pads no year below 1000
        if i == 6:
            at = NOW + timedelta(hours=1)  # a clock that was ahead: a negative age
        file = f"backup-2026113{i % 10}T000000Z.dump"
        inside = i != 7
        path = (root / dir_name(name) / "2026" / "11" / "30" / file) if inside \
            else Path("/elsewhere") / name / file
        alembic = [None, "0005", "ab\x07c", "\u5099"][i % 4]
        m = None if i == 2 else manifest(name, file, alembic=alembic,
                                         source_id=f"system {i % sources}\x1b")
        state = [COMPLETE, DAMAGED, STRAY][i % 3]
        drills = (DrillVerdict(passed=i % 2 == 0, at=NOW.isoformat(), report="r\x1b.html",
                               rto_s=12.5, failed_checks=("test_x",), verdict="FAIL"),) \
            if i % 4 == 1 else ()
        verified = VerifyRecord(ok=False, at=NOW.isoformat(), deep=True, reason="bad\ttoc") \
            if i % 4 == 3 else None
        b = Backup(path=path, database=name, state=state, taken_at=at, size=5 * 1024 ** i,
                   mtime=0.0, manifest=m, alembic_revision=alembic, drills=drills,
                   verified=verified, problem="" if i % 2 else f"why\x00 {name}")
        out.append(Listed(path=b.path, database=b.database, state=b.state, taken_at=at,
                          age_s=(NOW - at).total_seconds() if at else None,
                          size_bytes=b.size, alembic_revision=alembic, checked=b.checked,
                          drill=b.drill, drills=len(b.drills), verified=b.verified,
                          source=b.source, problem=b.problem, backup=b))
    return tuple(out)


@pytest.mark.parametrize("root", [Path("/srv/backups"), Path("backups"), Path("."), Path("/"),
                                  Path("/srv/b\u00e4ckups/"), Path("/srv/\u5099\u4efd")])
@pytest.mark.parametrize(("sources", "databases"), [(1, 1), (1, len(ODD)), (3, len(ODD))])
def test_the_list_table_is_the_old_renderers_text_for_every_odd_name(
        root: Path, sources: int, databases: int) -> None:
    items = records(root, sources=sources, databases=databases)
    new = db._list_text(items, root, where="under x")
    assert new == old_list_text(items, root, where="under x")
    assert "\x1b" not in new and "\x00" not in new and "\x07" not in new  # still escaped
    assert db._list_text((), root, where="under x") == "no backups under x"


def test_the_list_table_pinned_for_a_wide_a_combining_and_a_non_utf8_name() -> None:
    """Columns align by characters, as before (a wide character is one of them)."""
    items = records(Path("/b"), databases=7)
    text = db._list_text((items[4], items[3], items[6]), Path("/b"), where="")
    wide, combining = "\u5099\u4efd\u5eab", "e\u0301t\u00e9"
    assert text.splitlines() == [
        "taken (UTC)           age         size           alembic  state                     "
        "database     path",
        "2026-11-29 07:59:56Z  1d 04h 00m  5.0 TiB        -        damaged                   "
        f"{wide}          %E5%82%99%E4%BB%BD%E5%BA%AB/2026/11/30/backup-20261134T000000Z.dump"
        f"  (why\\x00 {wide})",
        "-                     -           5.0 GiB        \u5099        unverified (tool failed)  "
        f"{combining}         e%CC%81t%C3%A9/2026/11/30/backup-20261133T000000Z.dump",
        "2026-11-30 13:00:00Z  -1h 00m     5242880.0 TiB  ab\\x07c  unverified                "
        "bad\\xffbyte  bad%FFbyte/2026/11/30/backup-20261136T000000Z.dump  (why\\x00 "
        "bad\\xffbyte)"]


def test_a_table_is_the_old_tables_text_and_refuses_a_ragged_column() -> None:
    rows: list[list[object]] = [["a ", None, 3, Path("p/q")], ["", "\u5099", -1.5, "trail  "],
                                ["x" * 30, "", 0, ""]]
    headers = ["one", "two", "three", "four"]

    def columns(rows: list[list[object]]) -> list[list[str]]:
        return [[str(c) for c in column] for column in zip(*rows, strict=True)]

    assert output.aligned(headers, columns(rows)) == old_table(headers, rows)
    assert output.aligned(headers, [[]] * 4) == old_table(headers, []) == \
        "one  two  three  four"
    assert output.aligned(["only"], [["a  ", ""]]) == old_table(["only"], [["a  "], [""]])
    with pytest.raises(ValueError, match="zip"):
        output.aligned(headers, [["a"], ["b"], ["c", "d"], ["e"]])


@pytest.mark.parametrize("root", [Path("/srv/backups"), Path(".")])
def test_list_json_is_exactly_the_old_json(root: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    items = records(root, sources=3)
    output.show(items, as_json=True, text=lambda _: "unused")
    expected = redact(json.dumps(old_jsonable(items), indent=2, sort_keys=True)) + "\n"
    assert capsys.readouterr().out == expected
    assert json.loads(expected)[1]["drill"]["failed_checks"] == ["test_x"]
    assert json.loads(expected)[3]["verified"]["reason"] == "bad\ttoc"
    assert "backup" not in json.loads(expected)[0]  # for people only, as before


def test_a_listed_record_made_without_its_constructor_is_the_constructors() -> None:
    item = records(Path("/b"), databases=2)[1]
    values = {f.name: getattr(item, f.name) for f in dataclasses.fields(Listed)}
    made = catalog._listed(**values)
    assert made == item and type(made) is Listed
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.state = "x"  # type: ignore[misc]
    with pytest.raises(TypeError, match="Listed fields: \\['problem'\\]"):
        catalog._listed(**{k: v for k, v in values.items() if k != "problem"})
    with pytest.raises(TypeError, match="Listed fields: \\['extra'\\]"):
        catalog._listed(**values, extra=1)


# -- the whole tree's scan, narrowed to one database ---------------------------------------

def filed(root: Path, folder: str, database: str, at: datetime, *, manifest_of: str = "") -> Path:
    path = root / folder / f"{at:%Y/%m/%d}" / backup_path(root, database, at).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PGDMP")
    m = manifest(manifest_of or database, path.name, alembic="1", source_id="s")
    manifest_path(path).write_text(dataclasses.replace(m, taken_at=at.isoformat()).to_json())
    return path


@pytest.mark.parametrize("spelt", ["absolute", "relative", "dot"])
def test_the_whole_trees_scan_narrowed_to_a_database_is_that_databases_scan(
        tmp_path: Path, spelt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`of_database` stands for a second scan in a direct `pytest --drill`: the same records,
    in the same order, for names filed plainly, filed by the first layout (lossy: two
    databases share `a_b`), misfiled under another's directory, or not backups at all."""
    root = tmp_path / "tree"
    t = NOW - timedelta(hours=1)
    filed(root, dir_name("a b"), "a b", t)
    filed(root, legacy_dir_name("a b"), "a b", t - timedelta(hours=1))  # a_b: both share it
    filed(root, legacy_dir_name("a b"), "a_b", t - timedelta(hours=2))
    filed(root, dir_name("a_b"), "a_b", t - timedelta(hours=3))
    filed(root, dir_name("other"), "other", t - timedelta(hours=4), manifest_of="a b")
    filed(root, dir_name("caf\u00e9"), "caf\u00e9", t - timedelta(hours=5))
    (root / dir_name("a b") / "notes.txt").write_text("x")
    (root / "a b").symlink_to(root / dir_name("a b"))  # a link at the top: never scanned
    (root / ".hidden").mkdir()
    if spelt == "relative":
        monkeypatch.chdir(tmp_path)
        root = Path("tree")
    elif spelt == "dot":
        monkeypatch.chdir(root)
        root = Path(".")
    whole = catalog.scan(root, now=NOW)
    for name in ["a b", "a_b", "other", "caf\u00e9", "none", "tree"]:
        one = catalog.scan(root, name, now=NOW)
        assert catalog.of_database(whole, root, name) == one, name
    assert len(catalog.scan(root, "a b", now=NOW)) == 3  # two backups and notes.txt
    assert {b.state for b in catalog.of_database(whole, root, "a b")} == {COMPLETE, STRAY}
    assert os.path.islink(root / "a b")


class _Level(enum.IntEnum):
    HIGH = 3


class _Word(enum.StrEnum):
    YES = "y\u00e9s"


class _Text(str):
    pass


@pytest.mark.parametrize("value", [
    [], {}, "", None, True, 0, -0.0, 1.5, [[]], [{}], {"a": {}}, {"a": []},
    [float("nan"), float("inf"), -float("inf"), 1e300, 2**70, -(2**70), False],
    {"z": 1, "a": [1, "x", None, {"k": (True, 2.5)}], "\u00e9": "\u5099\udcff\x00\n\"\\"},
    {"b": {"c": {"d": [[], [1, [2, [3, {}]]], {"e": None}]}}, "a": (1, 2)},
    [_Level.HIGH, _Word.YES, _Text("t"), {"k": _Level.HIGH, "w": _Word.YES}],
    {1: "int key", "2": "str key"}, {None: 1}, {(1, 2): "tuple key"},
])
def test_indented_json_is_json_dumps_character_for_character(value: Any) -> None:
    try:
        expected = json.dumps(value, indent=2, sort_keys=True)
    except TypeError as exc:
        with pytest.raises(TypeError, match=str(exc)[:20]):
            output.indented(value)
        return
    assert output.indented(value) == expected


def test_indented_json_refuses_what_json_refuses() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        output.indented({"a": [object()]})
    with pytest.raises(TypeError, match="not supported between"):
        output.indented({1: 1, "a": 2})


def test_a_scanned_record_made_without_its_constructor_is_the_constructors(tmp_path: Path
                                                                           ) -> None:
    dump = tmp_path / "backup-20261130T110000Z.dump"
    dump.write_bytes(b"PGDMP")
    at = datetime(2026, 11, 30, 11, tzinfo=UTC)
    made = catalog._record(dump, "d", COMPLETE, at, alembic_revision="1", head_only=True)
    st = dump.lstat()
    assert made == Backup(path=dump, database="d", state=COMPLETE, taken_at=at,
                          size=st.st_size, mtime=st.st_mtime, alembic_revision="1",
                          head_only=True)
    assert type(made) is Backup and (made.drills, made.manifest, made.problem) == ((), None, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.state = "x"  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected keyword argument 'extra'"):
        catalog._record(dump, "d", COMPLETE, at, extra=1)
    gone = catalog._record(tmp_path / "gone.dump", "d", STRAY, None, problem="p")
    assert (gone.size, gone.mtime, gone.problem) == (0, 0.0, "p")
