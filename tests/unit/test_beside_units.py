"""ANALYZE beside the read-back is dealt over two connections by pages (pure)."""

from __future__ import annotations

from drills import beside


def test_analyze_deals_relations_into_two_lists_of_about_equal_pages() -> None:
    found = [("public", "orders", 100), ("public", "trades", 60), ("public", "positions", 50),
             ("pg_catalog", "pg_class", 0)]
    assert beside.halves(found) == [[("public", "orders"), ("pg_catalog", "pg_class")],
                                    [("public", "trades"), ("public", "positions")]]
    assert beside.halves([("public", "only", 5)]) == [[("public", "only")]]
    assert beside.halves([]) == []
