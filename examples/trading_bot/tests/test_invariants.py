"""What must hold in any copy of the trading database, restored or live."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from trading_bot.models import EventType, Order, Position, SystemEvent, Trade


def test_positions_equal_the_sum_of_trades(engine: Engine) -> None:
    with Session(engine) as s:
        rows = s.execute(select(Trade.account_id, Trade.symbol, func.sum(Trade.quantity))
                         .group_by(Trade.account_id, Trade.symbol))
        sums = {f"{account}:{symbol}": total for account, symbol, total in rows}
        held = {f"{p.account_id}:{p.symbol}": p.quantity for p in s.scalars(select(Position))}
    assert sums, "the restored database has no trades"
    assert held == sums


def test_no_orphan_orders_or_trades(engine: Engine) -> None:
    with engine.connect() as c:
        orphans = c.execute(text(
            "SELECT count(*) FROM orders o LEFT JOIN accounts a ON a.id = o.account_id "
            "WHERE a.id IS NULL")).scalar_one()
        mismatched = c.execute(text(
            "SELECT count(*) FROM trades t JOIN orders o ON o.id = t.order_id "
            "WHERE o.account_id <> t.account_id OR o.status <> 'FILLED'")).scalar_one()
    assert (orphans, mismatched) == (0, 0)


def test_every_trade_has_a_non_negative_fee(engine: Engine) -> None:
    with Session(engine) as s:
        bad = s.scalar(select(func.count()).select_from(Trade).where(Trade.fee < 0))
    assert bad == 0


def test_new_orders_can_use_the_status_added_by_migration(engine: Engine) -> None:
    with Session(engine) as s:
        order = s.scalars(select(Order).limit(1)).one()
        assert order.account.first_name
        s.rollback()


def test_heartbeat_round_trip_through_the_orm(engine: Engine) -> None:
    with Session(engine) as s:
        beat = SystemEvent(type=EventType.TEST, message="Heartbeat",
                           created_at=datetime.now(UTC))
        s.add(beat)
        s.commit()
        again = s.get(SystemEvent, beat.id)
        assert again is not None and again.message == "Heartbeat"
        assert again.type is EventType.TEST
