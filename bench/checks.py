"""`python -m bench.checks [--size 100MB] [--repeat 3]`: what the drill's checks phase costs
against its restore, and what recording costs at backup time against `--row-counts exact`.

The drill's checks phase (issue 21: within 25 % of the restore at 100 MB) reads back every
table's row count and content checksum, the inventory and every definition from the
restored copy, then the checks that read the copy again (archive entries, foreign keys,
amcheck): the drill's own "checks" phase against its "restore" phase, from its report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from backup_core.ops.backup import create_backup
from backup_core.tools import toolchain
from backup_core.tools.cluster import Cluster
from bench.__main__ import build_database, load_average


def drill_phases(dump: Path, work: Path) -> tuple[dict[str, float], dict[str, float]]:
    """One `atb drill run` of `dump` (local sandbox): its RTO phases and, over 0.05 s, the
    time of each check, and the checks phase split in two: "read-back" (every table's count
    and checksum and the catalogs, with ANALYZE, the copy's listing and pg_amcheck started
    beside: the restore check's setup after the restore) and "after" (the checks that follow,
    which wait for the listing and pg_amcheck where they judge them; ANALYZE's wait is its
    own phase)."""
    reports = work / "reports"
    subprocess.run([sys.executable, "-m", "drills.cli", "drill", "run", "--backup", str(dump),
                    "--sandbox", "local", "--no-record", "--schedule", "1000d",
                    "--rto-target", "100h", "--report-dir", str(reports)],
                   check=False, capture_output=True)
    found = sorted(reports.glob("*/*-drill.json"))
    data = json.loads(found[-1].read_text())
    found[-1].unlink()
    checks = {c["name"].removeprefix("test_"): c["duration_s"] for c in data["checks"]
              if c["duration_s"] > 0.05}
    phases = dict(data["rto"]["phases"])
    if "restore_completes_without_errors" in checks:
        back = checks.pop("restore_completes_without_errors") - phases["restore"]
        checks = {"read-back": back, "after": phases["checks"] - back, **checks}
    checks.pop("sandbox_database_is_like_production", None)  # the sandbox's start
    return phases, checks


def bench(size: str, repeat: int, work: Path) -> list[str]:
    chains = toolchain.discover()
    chain = next((c for c in chains if c.major == 15), toolchain.newest(chains, "postgres"))
    with Cluster(chain) as prod:
        info, db_bytes = build_database(prod, size)
        out = work / "dumps"
        backup_times: dict[str, list[float]] = {"checksum": [], "exact": []}
        for _ in range(repeat):
            for mode in ("checksum", "exact"):
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                create_backup(info, out, chains=chains, row_counts=mode)
                backup_times[mode].append(time.perf_counter() - start)
        shutil.rmtree(out, ignore_errors=True)
        dump = create_backup(info, out, chains=chains).path
    runs = []
    for i in range(repeat):
        runs.append(drill_phases(dump, work))
        print(f"  drill {i + 1}: {runs[-1]}", file=sys.stderr, flush=True)

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"

    restores = [p["restore"] for p, _ in runs]
    checks = [p["checks"] for p, _ in runs]
    ratio = statistics.median(c / r for c, r in zip(checks, restores, strict=True))
    rec = statistics.median(a / b for a, b in zip(backup_times["checksum"],
                                                  backup_times["exact"], strict=True))
    last = ", ".join(f"{k} {v:.2f}" for k, v in runs[-1][1].items())
    return [
        f"| {size} ({db_bytes / 2**20:.0f} MiB) drill | checks phase: {med(checks)} | "
        f"restore phase: {med(restores)} | **{ratio:.2f}** | <= 0.25 | last drill's checks "
        f"over 0.05 s: {last}; load {load_average()} |",
        f"| {size} backup | `--row-counts checksum`: {med(backup_times['checksum'])} | "
        f"`--row-counts exact`: {med(backup_times['exact'])} | **{rec:.2f}** | <= 1.10 | |",
    ]


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="100MB", help="comma-separated sizes, e.g. 100MB,1GB")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per comparison")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="atb-bench-checks-"))
    try:
        out(f"load average before: {load_average()}")
        out("| size | A | B | A/B | goal | notes |")
        out("|---|---|---|---|---|---|")
        for size in args.size.split(","):
            for line in bench(size.strip(), args.repeat, work):
                out(line)
        out(f"load average after: {load_average()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
