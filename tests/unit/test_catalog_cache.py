"""The catalog cache: the same verdicts as a full scan, faster, and never a backup counted
that a full scan would not count (a stale or tampered entry is found out)."""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_core.store import catalog, catalog_cache, naming, retention
from backup_core.store.catalog import BAD_MANIFEST, COMPLETE, DAMAGED
from backup_core.store.catalog_cache import HEAD_FIELDS, CatalogCache, head_from, head_of
from backup_core.store.manifest import Manifest
from backup_core.store.naming import backup_path, manifest_path

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
SIZE = HEAD_FIELDS.index("size_bytes")  # where an entry's head holds the dump's size


def tree(root: Path, count: int) -> list[Path]:
    """`count` hourly backups with valid manifests (row counts and all)."""
    dumps = []
    for i in range(count):
        at = NOW - timedelta(hours=i + 1)
        path = backup_path(root, "trading", at)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PGDMP" + bytes(i))
        m = Manifest(database="trading", file=path.name, taken_at=at.isoformat(),
                     started_at=at.isoformat(), finished_at=at.isoformat(), duration_s=1.0,
                     size_bytes=5 + i, sha256="0" * 64, pg_dump_version="18.6",
                     server_version="18.6", toc_entries=40, alembic_revision="0005",
                     row_counts_mode="exact", row_counts={"public.t": i},
                     source_id="system 7", compression="gzip:1")
        manifest_path(path).write_text(m.to_json())
        dumps.append(path)
    return dumps


def states(backups: list[catalog.Backup]) -> dict[str, str]:
    return {b.path.name: b.state for b in backups}


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_a_cached_scan_judges_exactly_as_a_full_one_and_reads_no_manifest_twice(
        tmp_path: Path, cache_dir: Path) -> None:
    root = tmp_path / "b"
    tree(root, 6)
    full = catalog.scan(root, now=NOW)
    first = catalog.scan(root, now=NOW, cache_dir=cache_dir)
    second = catalog.scan(root, now=NOW, cache_dir=cache_dir)
    assert states(full) == states(first) == states(second)
    assert set(states(second).values()) == {COMPLETE}
    assert [b.head_only for b in first] == [False] * 6  # parsed whole, then remembered
    assert [b.head_only for b in second] == [True] * 6
    assert [(b.source, b.alembic_revision, b.manifest and b.manifest.finished_at)
            for b in second] == [(b.source, b.alembic_revision,
                                  b.manifest and b.manifest.finished_at) for b in full]
    cache = CatalogCache.open(cache_dir, root)
    assert cache is not None
    for b in full:
        cache.read(manifest_path(b.path))
    assert (cache.hits, cache.misses) == (6, 0)
    assert (cache_dir.stat().st_mode & 0o777, cache.file.stat().st_mode & 0o777) == (0o700, 0o600)
    policy = retention.Policy(retention_days=0.1, keep_daily=0, keep_weekly=0)
    plan_full = retention.plan_prune(full, now=NOW, policy=policy)
    plan_cached = retention.plan_prune(second, now=NOW, policy=policy)
    assert [b.path for b in plan_cached.delete] == [b.path for b in plan_full.delete]
    assert len(plan_cached.delete) == 3  # keep-last 3


def test_a_stale_entry_never_stands_for_a_manifest_that_changed(
        tmp_path: Path, cache_dir: Path) -> None:
    """The manifest is rewritten in place with the same size and the same mtime but a lie
    about the dump's size: the entry no longer matches its bytes, so it is parsed afresh and
    the backup is damaged, exactly as a full scan says."""
    root = tmp_path / "b"
    dumps = tree(root, 3)
    catalog.scan(root, now=NOW, cache_dir=cache_dir)
    mpath = manifest_path(dumps[0])
    st = mpath.stat()
    text = mpath.read_text()
    forged = text.replace('"size_bytes": 5,', '"size_bytes": 6,')
    assert forged != text and len(forged) == len(text)
    with mpath.open("r+") as fh:  # same inode
        fh.write(forged)
    os.utime(mpath, ns=(st.st_atime_ns, st.st_mtime_ns))
    cached = {b.path: b for b in catalog.scan(root, now=NOW, cache_dir=cache_dir)}
    assert cached[dumps[0]].state == DAMAGED
    assert cached[dumps[0]].problem == "5 bytes, manifest says 6 (truncated or replaced)"
    assert states(list(cached.values())) == states(catalog.scan(root, now=NOW))


def test_a_tampered_cache_is_ignored_whole_and_rebuilt(
        tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Someone without the key edits the cache so a truncated dump's entry matches it: the
    MAC fails, nothing in the file is used, and the dump is damaged."""
    root = tmp_path / "b"
    dumps = tree(root, 3)
    catalog.scan(root, now=NOW, cache_dir=cache_dir)
    cache = CatalogCache.open(cache_dir, root)
    assert cache is not None
    dumps[2].write_bytes(b"PG")  # truncated: 2 bytes where the manifest says 7
    mac, _, payload = cache.file.read_bytes().partition(b"\n")
    doc = json.loads(payload)
    doc["entries"][str(manifest_path(dumps[2]))][2][SIZE] = 2
    cache.file.write_bytes(mac + b"\n" + json.dumps(doc).encode())
    found = {b.path: b for b in catalog.scan(root, now=NOW, cache_dir=cache_dir)}
    assert found[dumps[2]].state == DAMAGED
    assert found[dumps[2]].head_only is False
    assert "fails its MAC: ignored and rebuilt" in caplog.text
    again = CatalogCache.open(cache_dir, root)
    assert again is not None  # rebuilt from the manifests themselves, the lie gone
    assert again._entries[str(manifest_path(dumps[2]))][2][SIZE] == 7


def test_no_cache_is_kept_where_others_could_write_it_and_links_are_not_followed(
        tmp_path: Path) -> None:
    root = tmp_path / "b"
    dumps = tree(root, 2)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert CatalogCache.open(shared, root) is None
    assert states(catalog.scan(root, now=NOW, cache_dir=shared)) == {
        d.name: COMPLETE for d in dumps}
    mpath = manifest_path(dumps[0])
    target = tmp_path / "elsewhere.json"
    mpath.rename(target)
    mpath.symlink_to(target)
    found = {b.path: b for b in catalog.scan(root, now=NOW, cache_dir=tmp_path / "c")}
    assert (found[dumps[0]].state, found[dumps[0]].problem) == (
        BAD_MANIFEST, "manifest is a symbolic link")


def test_a_cached_head_is_the_manifest_head_with_fresh_defaults_and_only_this_atbs_head(
        tmp_path: Path) -> None:
    """`head_from` skips `Manifest.__init__` for speed: what it builds must equal what the
    constructor builds from the same head, share no mutable default between two heads, and
    refuse an entry with a field more or less than this atb's head (another version's)."""
    dump = tree(tmp_path / "b", 1)[0]
    whole = Manifest.from_dict(json.loads(manifest_path(dump).read_text()))
    head = head_of(whole)
    one, two = head_from(head), head_from(json.loads(json.dumps(head)))
    assert one == two == Manifest(**dict(zip(HEAD_FIELDS, head, strict=True)))
    assert one is not None and two is not None
    assert (one.row_counts, one.inventory, one.definition_kinds, one.schema) == (
        {}, {}, [], "atb.backup-manifest")
    assert one.row_counts is not two.row_counts and one.inventory is not two.inventory
    assert (one.size_bytes, one.source_id, one.compression) == (whole.size_bytes, "system 7",
                                                                "gzip:1")
    assert head_from([*head, 1]) is None
    assert head_from(head[:-1]) is None
    assert head_from(dict(zip(HEAD_FIELDS, head, strict=True))) is None  # the old form
    assert head_from([head]) is None


def test_an_entry_another_atb_wrote_is_parsed_afresh_not_trusted(
        tmp_path: Path, cache_dir: Path) -> None:
    """A cache (under a valid MAC) whose heads have a field this atb does not know, or an
    entry of another shape, is not used: the manifest is validated whole again and the
    backup judged on that."""
    root = tmp_path / "b"
    tree(root, 2)
    catalog.scan(root, now=NOW, cache_dir=cache_dir)
    cache = CatalogCache.open(cache_dir, root)
    assert cache is not None
    payload = cache.file.read_bytes().partition(b"\n")[2]
    doc = json.loads(payload)
    doc["fields"].append("newer_field")
    for entry in doc["entries"].values():
        entry[2].append("x")
    cache._entries = doc["entries"]
    cache._changed = True
    cache.save(complete=False)  # written with this atb's "fields": rewrite them under the MAC
    data = json.loads(cache.file.read_bytes().partition(b"\n")[2])
    assert data["fields"] == list(HEAD_FIELDS)
    again = catalog.scan(root, now=NOW, cache_dir=cache_dir)  # entries one value too long
    assert [(b.state, b.head_only) for b in again] == [(COMPLETE, False)] * 2
    assert [(b.state, b.head_only) for b in catalog.scan(root, now=NOW, cache_dir=cache_dir)
            ] == [(COMPLETE, True)] * 2
    key = (cache_dir / "key").read_bytes()
    data["fields"] = [*HEAD_FIELDS[1:], HEAD_FIELDS[0]]  # the same fields, another order
    body = json.dumps(data).encode()
    cache.file.write_bytes(hmac.new(key, body, hashlib.sha256).hexdigest().encode() + b"\n"
                           + body)
    assert [(b.state, b.head_only) for b in catalog.scan(root, now=NOW, cache_dir=cache_dir)
            ] == [(COMPLETE, False)] * 2


def signed(cache_dir: Path, file: Path, doc: object) -> None:
    """`doc` written as the cache file under the real key (as another atb would write it)."""
    body = json.dumps(doc).encode()
    key = (cache_dir / "key").read_bytes()
    file.write_bytes(hmac.new(key, body, hashlib.sha256).hexdigest().encode() + b"\n" + body)


def test_a_cache_another_validator_or_format_wrote_is_rebuilt_not_read(
        tmp_path: Path, cache_dir: Path) -> None:
    """Under a valid MAC: a version 1 file (heads as mappings, what earlier atb wrote), and a
    version 2 file whose heads another `manifest.py` validated, are rebuilt; entries of
    another shape are parsed afresh, never an error."""
    root = tmp_path / "b"
    dumps = tree(root, 2)
    catalog.scan(root, now=NOW, cache_dir=cache_dir)
    cache = CatalogCache.open(cache_dir, root)
    assert cache is not None
    doc = json.loads(cache.file.read_bytes().partition(b"\n")[2])
    assert doc["version"] == 2 and doc["validator"] == catalog_cache.VALIDATOR
    assert len(doc["validator"]) == 64
    v1 = {"version": 1, "root": doc["root"], "entries": {
        name: [e[0], e[1], dict(zip(HEAD_FIELDS, e[2], strict=True))]
        for name, e in doc["entries"].items()}}
    for other in (v1, {**doc, "validator": "0" * 64}, {k: v for k, v in doc.items()
                                                        if k != "validator"}):
        signed(cache_dir, cache.file, other)
        assert [(b.state, b.head_only) for b in catalog.scan(root, now=NOW,
                                                             cache_dir=cache_dir)
                ] == [(COMPLETE, False)] * 2
        rewritten = json.loads(cache.file.read_bytes().partition(b"\n")[2])
        assert (rewritten["version"], rewritten["validator"]) == (2, catalog_cache.VALIDATOR)
    short = {**doc, "entries": {name: e[:2] for name, e in doc["entries"].items()}}
    short["entries"][str(manifest_path(dumps[0]))] = "not a list"
    signed(cache_dir, cache.file, short)
    assert [(b.state, b.head_only) for b in catalog.scan(root, now=NOW, cache_dir=cache_dir)
            ] == [(COMPLETE, False)] * 2


def test_a_record_given_a_field_twice_is_refused_as_the_constructor_refuses(
        tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"fields given twice: \['size'\]"):
        catalog._record(tmp_path / "x.dump", "trading", COMPLETE, NOW, size=999)


def test_a_scan_leaves_the_garbage_collector_as_it_found_it(
        tmp_path: Path, cache_dir: Path) -> None:
    root = tmp_path / "b"
    tree(root, 2)
    assert gc.isenabled()
    assert len(catalog.scan(root, now=NOW, cache_dir=cache_dir)) == 2
    assert gc.isenabled()
    gc.disable()
    try:
        assert len(catalog.scan(root, now=NOW, cache_dir=cache_dir)) == 2
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("name", [
    "backup-20261129T110000Z.dump", "backup-20261399T110000Z.dump", "backup-20261129T110000Z.json",
    ".backup-20261129T110000Z.dump.pruning", ".backup-2026.dump.pruning", ".pruning",
    ".backup-20261129T110000Z.dump.partial-ab12", "notes.txt", ".lock"])
def test_the_name_helpers_a_scan_uses_answer_as_the_path_helpers_do(name: str) -> None:
    path = Path("/b/trading/2026/11/29") / name
    pruned = naming.pruned_dump(path)
    assert naming.name_taken_at(name) == naming.taken_at(path)
    assert naming.is_partial_name(name) == naming.is_partial(path)
    assert naming.pruned_name(name) == (pruned.name if pruned else None)


def test_the_name_helpers_on_the_names_that_matter() -> None:
    assert naming.name_taken_at("backup-20261129T110000Z.dump") == datetime(
        2026, 11, 29, 11, tzinfo=UTC)
    assert naming.name_taken_at("backup-20261399T110000Z.dump") is None  # no month 13
    assert naming.pruned_name(".backup-20261129T110000Z.dump.pruning") == (
        "backup-20261129T110000Z.dump")
    assert naming.pruned_name(".pruning") is None
    assert naming.is_partial_name(".backup-20261129T110000Z.dump.partial-ab12")


def test_a_read_only_cache_is_read_but_never_made_or_written(
        tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drill's child (`READ_ONLY_ENV`): no directory or key is made where there is none,
    a warm cache is used, and a scan that parsed new manifests leaves the file's bytes as
    they were (skipped, not left to fail: the directory is writable here)."""
    root = tmp_path / "b"
    dumps = tree(root, 3)
    monkeypatch.setenv(catalog_cache.READ_ONLY_ENV, "1")
    assert CatalogCache.open(cache_dir, root) is None
    assert not cache_dir.exists()
    assert states(catalog.scan(root, now=NOW, cache_dir=cache_dir)) == {
        d.name: COMPLETE for d in dumps}
    assert not cache_dir.exists()
    monkeypatch.delenv(catalog_cache.READ_ONLY_ENV)
    catalog.scan(root, now=NOW, cache_dir=cache_dir)  # warm, written by a writable scan
    monkeypatch.setenv(catalog_cache.READ_ONLY_ENV, "1")
    cache = CatalogCache.open(cache_dir, root)
    assert cache is not None and cache.read_only
    before = cache.file.read_bytes()
    extra = tree(tmp_path / "c", 1)[0]  # a fourth backup, in the scanned tree
    target = backup_path(root, "trading", NOW - timedelta(minutes=5))
    extra.rename(target)
    manifest_path(extra).rename(manifest_path(target))
    scanned = catalog.scan(root, now=NOW, cache_dir=cache_dir)
    assert [b.head_only for b in scanned] == [False, True, True, True]
    assert cache.file.read_bytes() == before
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(["key", cache.file.name])


def test_prepare_makes_the_private_directory_and_key_once(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    assert catalog_cache.prepare(directory) is True
    key = (directory / "key").read_bytes()
    assert len(key) == 32 and (directory.stat().st_mode & 0o777) == 0o700
    assert catalog_cache.prepare(directory) is True
    assert (directory / "key").read_bytes() == key  # never replaced
    assert catalog_cache.prepare(None) is False
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert catalog_cache.prepare(shared) is False


def test_a_save_writes_through_a_unique_temporary_file(
        tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers that share a pid (two PID namespaces) never open the same temporary file:
    a leftover named as a pid-named save would have made is left alone, the save lands."""
    root = tmp_path / "b"
    tree(root, 2)
    catalog.scan(root, now=NOW, cache_dir=cache_dir)
    cache = CatalogCache.open(cache_dir, root)
    assert cache is not None
    squatter = cache.file.with_name(f".{cache.file.name}.{os.getpid()}.tmp")
    squatter.write_bytes(b"another writer's")
    cache.file.unlink()
    again = CatalogCache.open(cache_dir, root)
    assert again is not None
    for path in root.rglob("*.json"):
        read = again.read(path)
        again.store(path, read, Manifest.from_dict(json.loads(read.raw)))
    again.save(complete=True)
    assert len(json.loads(cache.file.read_bytes().partition(b"\n")[2])["entries"]) == 2
    assert squatter.read_bytes() == b"another writer's"
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        ["key", cache.file.name, squatter.name])
