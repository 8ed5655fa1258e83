"""Realistic, poorly compressible trading data for any revision of the example schema.

Prices are random walks with 8 decimals, ids and client order ids random, notes free text
with random tokens: what a real trading database looks like to pg_dump's compressor.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import string
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

REVISIONS = ["0001_initial", "0002_trade_fee", "0003_order_index_status",
             "0004_split_owner_name", "0005_rename_balance_equity"]
SYMBOLS = ["BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT", "NVDA", "EUR-USD", "GBP-USD",
           "XAU-USD", "TSLA", "AMZN", "ADA-USD"]
FIRST = ["Ada", "Grace", "Alan", "Barbara", "Edsger", "Donald", "Frances", "John", "Radia",
         "Ken", "Margaret", "Leslie"]
LAST = ["Lovelace", "Hopper", "Turing", "Liskov", "Dijkstra", "Knuth", "Allen", "Backus",
        "Perlman", "Thompson", "Hamilton", "Lamport"]
WORDS = ["rebalance", "hedge", "scalp", "momentum", "breakout", "stop-loss", "take-profit",
         "vwap", "twap", "iceberg", "arbitrage", "spread", "basis", "funding", "rollover", "limit",
         "market"]
BYTES_PER_ORDER = 330  # measured: orders + trades + indexes per filled order, on disk


def rows_for_scale(scale: str) -> int:
    """`5000` orders, or a size such as `100MB` / `1GB` turned into a number of orders."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(kb|mb|gb)?\s*", scale.lower())
    if not m:
        raise ValueError(f"cannot read scale {scale!r}: use a row count or e.g. 100MB, 1GB")
    value = float(m.group(1))
    unit = {None: 0, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}[m.group(2)]
    return int(value) if not unit else max(1, int(value * unit / BYTES_PER_ORDER))


def rev_index(revision: str | None) -> int:
    return REVISIONS.index(revision) if revision in REVISIONS else -1


def _token(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_uppercase + string.digits, k=n))


def fill(conn: psycopg.Connection[Any], *, orders: int, accounts: int = 50,
         start: datetime, end: datetime, seed: int = 1) -> None:
    """Add `orders` orders (about 80 % filled, each fill a trade) between `start` and `end`,
    keep positions equal to the sum of trades, and snapshot balances. Works at any revision."""
    rng = random.Random(seed)
    rev = rev_index(_revision(conn))
    have = _scalar(conn, "SELECT count(*) FROM accounts")
    if have < accounts:
        cols = "name, first_name, last_name" if rev >= 3 else "name, owner_name"
        with conn.cursor().copy(f"COPY accounts ({cols}, created_at) FROM STDIN") as cp:
            for i in range(have, accounts):
                first, last = rng.choice(FIRST), rng.choice(LAST)
                names = (first, last) if rev >= 3 else (f"{first} {last}",)
                cp.write_row((f"acct-{i:05d}-{_token(rng, 6)}", *names, start))
    account_ids = [r[0] for r in conn.execute("SELECT id FROM accounts ORDER BY id")]
    next_order = _scalar(conn, "SELECT coalesce(max(id), 0) FROM orders") + 1
    prices = {s: Decimal(rng.uniform(1, 60000)).quantize(Decimal("1e-8")) for s in SYMBOLS}
    span = max((end - start).total_seconds(), 1.0)
    trade_rows: list[tuple[Any, ...]] = []
    with conn.cursor().copy(
        "COPY orders (id, account_id, client_order_id, symbol, side, quantity, limit_price, "
        "status, note, created_at) FROM STDIN"
    ) as cp:
        for i in range(orders):
            oid = next_order + i
            symbol = rng.choice(SYMBOLS)
            prices[symbol] = (prices[symbol] * Decimal(1 + rng.gauss(0, 0.002))).quantize(
                Decimal("1e-8"))
            side = rng.choice(("BUY", "SELL"))
            qty = Decimal(rng.uniform(0.001, 50)).quantize(Decimal("1e-8"))
            at = start + timedelta(seconds=span * i / max(orders, 1))
            acct = rng.choice(account_ids)
            filled = rng.random() < 0.8
            status = "FILLED" if filled else rng.choice(("NEW", "CANCELLED"))
            note = f"{rng.choice(WORDS)} {rng.choice(WORDS)} ref {_token(rng, 24)}"
            cp.write_row((oid, acct, _token(rng, 32), symbol, side, qty, prices[symbol],
                          status, note, at))
            if filled:
                signed = qty if side == "BUY" else -qty
                trade_rows.append((oid, acct, symbol, signed, prices[symbol],
                                   at + timedelta(milliseconds=rng.randint(1, 900))))
    fee_col = ", fee" if rev >= 1 else ""
    with conn.cursor().copy(
        f"COPY trades (order_id, account_id, symbol, quantity, price, executed_at{fee_col}) "
        "FROM STDIN"
    ) as cp:
        for row in trade_rows:
            fee = (abs(row[3] * row[4]) * Decimal("0.001")).quantize(Decimal("1e-8"))
            cp.write_row(row + ((fee,) if rev >= 1 else ()))
    conn.execute("SELECT setval(pg_get_serial_sequence('orders', 'id'), "
                 "(SELECT max(id) FROM orders))")
    conn.execute("""
        INSERT INTO positions (account_id, symbol, quantity)
        SELECT account_id, symbol, sum(quantity) FROM trades GROUP BY 1, 2
        ON CONFLICT (account_id, symbol) DO UPDATE SET quantity = EXCLUDED.quantity
    """)
    equity = "equity" if rev >= 4 else "balance"
    conn.execute(f"""
        INSERT INTO balance_snapshots (account_id, {equity}, taken_at)
        SELECT a.id, coalesce(sum(t.quantity * t.price), 0), %s
        FROM accounts a LEFT JOIN trades t ON t.account_id = a.id GROUP BY a.id
    """, (end,))
    conn.commit()


def heartbeats(conn: psycopg.Connection[Any], times: list[datetime]) -> None:
    """Insert heartbeats (type TEST, message Heartbeat) at the given times."""
    with conn.cursor().copy("COPY system_events (type, message, created_at) FROM STDIN") as cp:
        for at in times:
            cp.write_row(("TEST", "Heartbeat", at))
    conn.commit()


def _revision(conn: psycopg.Connection[Any]) -> str | None:
    if conn.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,):
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def _scalar(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()  # type: ignore[arg-type]
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description="Fill the example trading database "
                                     "(DATABASE_URL, migrated) with realistic data.")
    parser.add_argument("--scale", default="5000",
                        help="orders to add, or a size such as 100MB or 1GB (default 5000)")
    parser.add_argument("--accounts", type=int, default=50, help="accounts (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args()
    end = datetime.now(UTC)
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        fill(conn, orders=rows_for_scale(args.scale), accounts=args.accounts,
             start=end - timedelta(days=30), end=end, seed=args.seed)


if __name__ == "__main__":
    main()
