"""The typed content checksum's SQL is part of every manifest that recorded it: a drill must
build an expression of the very same values years later, so it is pinned here, character
for character (a cheaper form of equal values is tested equal on real servers, in
tests/integration/test_content_checksum.py)."""

from __future__ import annotations

from backup_core.reading import inventory


def test_the_typed_row_hash_is_built_exactly_as_recorded_backups_expect() -> None:
    columns = [("id", 20, False), ("price", 1700, False), ("code", 1042, True),
               ("at", 1184, False), ("name", 25, False), ("score", 701, False)]
    assert inventory.typed_row_hash(columns).as_string(None) == (
        'hashint8extended(coalesce(hashint8extended(t."id", 1048576), 1)'
        ' # coalesce(hash_numeric_extended(t."price", 2097152 + scale(t."price")),'
        ' hashtextextended(t."price"::text, 2097152), 2)'
        ' # coalesce(hashtextextended(ROW(t."code")::text COLLATE "C", 3145728), 3)'
        " # coalesce(timestamp_hash_extended(t.\"at\" AT TIME ZONE 'UTC', 4194304), 4)"
        ' # coalesce(hashtextextended(t."name"::text COLLATE "C", 5242880), 5)'
        ' # coalesce(hashtextextended(t."score"::text COLLATE "C", 6291456), 6), 0)')
    assert inventory.typed_row_hash([]).as_string(None) == "hashint8extended(0, 0)"


def test_a_recorded_checksum_names_its_method() -> None:
    assert inventory.checksum_method("typed:-6540969537885086131") == "typed"
    assert inventory.checksum_method("-6540969537885086131") == "text"  # an older atb's
    assert inventory.checksum_method("0") == "text"
