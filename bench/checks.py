"""`python -m bench.checks [--size 100MB] [--repeat 3] [--profile]`: what the drill's checks
phase costs against its restore, and what recording costs at backup time against
`--row-counts exact`; with `--profile`, each part of the checks phase alone and all
together on fresh restores, with the CPU seconds each takes.

The drill's checks phase (issue 21: within 25 % of the restore at 100 MB) reads back every
table's row count and content checksum, the inventory and every definition from the
restored copy, then the checks that read the copy again (archive entries, foreign keys,
amcheck): the drill's own "checks" phase against its "restore" phase, from its report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from backup_core.ops.backup import create_backup
from backup_core.ops.restore import RestoreRequest, restore_backup
from backup_core.reading import inventory
from backup_core.store.catalog import Backup, scan
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from bench.__main__ import TICK, build_database, children_cpu, load_average
from drills import beside, sandbox


def machine_cpu() -> float:
    """CPU seconds every process of the machine has used (/proc/stat): a drill's server,
    started by pg_ctl, is no child of ours (on a shared machine, other work counts too)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields) if i not in (3, 4))  # idle, iowait
    return busy / TICK


def drill_phases(dump: Path, work: Path, tree: Path | None = None
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """One `atb drill run` of `dump` (local sandbox), by this tree's code or `tree`'s: its
    RTO phases, with "restore+checks" (their sum: the checks' added time is the goal, a
    restore lengthened by what the checks shrank is no gain) and "cpu" (the machine's CPU
    seconds over the drill) and "our cpu" (the drill's process tree's, the sandbox server
    excepted); and, over 0.05 s, the time of each check, with the checks phase split in two:
    "read-back" (every table's count and checksum not read during the restore, and the
    catalogs, with ANALYZE, the copy's listing and pg_amcheck started beside: the restore
    check's setup after the restore) and "after" (the checks that follow, which wait for the
    listing, pg_amcheck and the copy's facts where they judge them; ANALYZE's wait is its
    own phase, and "checks+analyze" their sum)."""
    reports = work / "reports"
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree is not None else None
    m0, c0 = machine_cpu(), children_cpu()
    subprocess.run([sys.executable, "-m", "drills.cli", "drill", "run", "--backup", str(dump),
                    "--sandbox", "local", "--no-record", "--schedule", "1000d",
                    "--rto-target", "100h", "--report-dir", str(reports)],
                   check=False, capture_output=True, cwd=tree, env=env)
    cpu, ours = machine_cpu() - m0, children_cpu() - c0
    found = sorted(reports.glob("*/*-drill.json"))
    data = json.loads(found[-1].read_text())
    found[-1].unlink()
    checks = {c["name"].removeprefix("test_"): c["duration_s"] for c in data["checks"]
              if c["duration_s"] > 0.05}
    phases = dict(data["rto"]["phases"])
    phases["restore+checks"] = round(phases["restore"] + phases["checks"], 3)
    # ANALYZE's wait is its own phase: a checks phase shortened while ANALYZE, started beside
    # it, is waited for longer shows here
    phases["checks+analyze"] = round(phases["checks"] + phases.get("analyze", 0.0), 3)
    phases["cpu"], phases["our cpu"] = round(cpu, 2), round(ours, 2)
    if "restore_completes_without_errors" in checks:
        back = checks.pop("restore_completes_without_errors") - phases["restore"]
        checks = {"read-back": back, "after": phases["checks"] - back, **checks}
    checks.pop("sandbox_database_is_like_production", None)  # the sandbox's start
    return phases, checks


def _summary(label: str, runs: list[tuple[dict[str, float], dict[str, float]]], size: str,
             db_bytes: int) -> str:
    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"

    def col(key: str) -> list[float]:
        return [p.get(key, 0.0) for p, _ in runs]

    ratio = statistics.median(p["checks"] / p["restore"] for p, _ in runs)
    last = ", ".join(f"{k} {v:.2f}" for k, v in runs[-1][1].items())
    return (f"| {size} ({db_bytes / 2**20:.0f} MiB) drill{label} | checks phase: "
            f"{med(col('checks'))} | restore phase: {med(col('restore'))} | **{ratio:.2f}** | "
            f"<= 0.25 | restore+checks {med(col('restore+checks'))}, analyze "
            f"{med(col('analyze'))}, checks+analyze {med(col('checks+analyze'))}, machine "
            f"CPU s {med(col('cpu'))}, drill's own CPU s "
            f"{med(col('our cpu'))}; last drill's checks over 0.05 s: {last}; load "
            f"{load_average()} |")


def bench(size: str, repeat: int, work: Path, base: Path | None = None) -> list[str]:
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
    runs, based = [], []
    for i in range(repeat):
        if base is not None:  # A and B alternating, the same dump
            based.append(drill_phases(dump, work, base))
            print(f"  drill {i + 1} ({base}): {based[-1]}", file=sys.stderr, flush=True)
        runs.append(drill_phases(dump, work))
        print(f"  drill {i + 1}: {runs[-1]}", file=sys.stderr, flush=True)

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"

    rec = statistics.median(a / b for a, b in zip(backup_times["checksum"],
                                                  backup_times["exact"], strict=True))
    lines = [_summary("", runs, size, db_bytes)]
    if based:
        lines.append(_summary(f" by {base}", based, size, db_bytes))
    return [*lines,
            f"| {size} backup | `--row-counts checksum`: {med(backup_times['checksum'])} | "
            f"`--row-counts exact`: {med(backup_times['exact'])} | **{rec:.2f}** | <= 1.10 | |"]


def _postmaster(url: ConnInfo) -> Path:
    """The sandbox server's postmaster, as /proc/PID: its reaped children's CPU is the
    server's (backends and parallel workers), whatever started it."""
    with db.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        stat = Path(f"/proc/{row[0]}/stat").read_text()
    return Path(f"/proc/{stat.rsplit(')', 1)[1].split()[1]}")


def _server_cpu(pm: Path, settled: set[str]) -> float:
    """CPU seconds of the postmaster's ended children, once only `settled` ones are left."""
    deadline = time.monotonic() + 10
    while not set((pm / f"task/{pm.name}/children").read_text().split()) <= settled \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    fields = (pm / "stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[13:15]) / TICK


def _stable(url: ConnInfo) -> Any:
    conn = db.connect(url, autocommit=True)
    inventory.stabilise_output(conn)
    conn.autocommit = False
    return conn


def profile_parts(backup: Backup, chains: list[toolchain.Toolchain], rounds: int,
                  out: Callable[[str], None]) -> None:
    """Each part of the drill's checks phase alone, then all of them as the drill starts
    them, each on a fresh restore of `backup` into a local sandbox (as the drill restores):
    wall seconds and CPU seconds (the server's, the tools', ours)."""
    methods = {t: inventory.checksum_method(v)
               for t, v in (backup.manifest.row_checksums if backup.manifest else {}).items()}
    kinds = inventory.recorded_kinds(backup.manifest)

    def read_back(url: ConnInfo) -> object:
        return inventory.read_back(lambda: _stable(url), workers=min(4, os.cpu_count() or 2),
                                   checksums=bool(methods), methods=methods, kinds=kinds)

    def facts(info: sandbox.SandboxInfo) -> object:
        return beside.copy_facts(info.url, wanted=set(beside.FACT_CHECKS),
                                 heartbeat_table="system_events",
                                 archive=lambda: beside.archive_toc(backup, chains))

    def everything(info: sandbox.SandboxInfo) -> str:
        t0, ends = time.perf_counter(), {}

        def timed(name: str, fn: Callable[[], object]) -> Callable[[], None]:
            def run() -> None:
                fn()
                ends[name] = time.perf_counter() - t0
            return run

        with ThreadPoolExecutor(max_workers=4) as side:
            for name, fn in (("ANALYZE", lambda: beside.analyze(info.url)),
                             ("listings", lambda: beside.listings(backup, info, chains)),
                             ("pg_amcheck", lambda: beside.amcheck(info, catalogs=False)),
                             ("facts", lambda: facts(info))):
                side.submit(timed(name, fn))
            timed("read-back", lambda: read_back(info.url))()
        return ", ".join(f"{k} ends {v:.2f}" for k, v in sorted(ends.items(),
                                                                  key=lambda kv: kv[1]))

    parts: dict[str, Callable[[sandbox.SandboxInfo], object]] = {
        "read-back (checksums + catalogs)": lambda i: read_back(i.url),
        "ANALYZE (two connections)": lambda i: beside.analyze(i.url),
        "pg_amcheck (restored schemas, large objects)":
            lambda i: beside.amcheck(i, catalogs=False),
        "pg_amcheck (with the system catalogs)": beside.amcheck,
        "listings": lambda i: beside.listings(backup, i, chains),
        "the copy's facts (one connection)": facts,
        "all, as the drill starts them": everything,
    }
    major = backup.manifest.server_major if backup.manifest else 15
    for r in range(rounds):
        for name, part in parts.items():
            with sandbox.open_sandbox("local", source_major=major, chains=chains) as info:
                restore_backup(RestoreRequest(backup.path, info.url, no_owner=True, jobs=2,
                                              scratch=True, split=True), chains=chains)
                pm = _postmaster(info.url)
                time.sleep(0.3)  # the restore's sessions reaped
                settled = set((pm / f"task/{pm.name}/children").read_text().split())
                s0, c0, p0 = _server_cpu(pm, settled), children_cpu(), time.process_time()
                t0 = time.perf_counter()
                got = part(info)
                wall = time.perf_counter() - t0
                server, tools = _server_cpu(pm, settled) - s0, children_cpu() - c0
                out(f"| {r + 1} | {name} | {wall:.3f} | {server:.2f} | {tools:.2f} | "
                    f"{time.process_time() - p0:.2f} | "
                    f"{got if isinstance(got, str) else ''} load {load_average()} |")


def profile(size: str, rounds: int, work: Path, out: Callable[[str], None]) -> None:
    chains = toolchain.discover()
    chain = next((c for c in chains if c.major == 15), toolchain.newest(chains, "postgres"))
    with Cluster(chain) as prod:
        info, _ = build_database(prod, size)
        create_backup(info, work / "dumps", chains=chains)
    backup = scan(work / "dumps")[0]
    out("| round | part | wall s | server CPU s | tools CPU s | our CPU s | notes |")
    out("|---|---|---|---|---|---|---|")
    profile_parts(backup, chains, rounds, out)


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="100MB", help="comma-separated sizes, e.g. 100MB,1GB")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per comparison")
    parser.add_argument("--base", type=Path, default=None,
                        help="another checkout of atb: its drills alternate with this tree's "
                             "on the same dump (A/B)")
    parser.add_argument("--profile", action="store_true",
                        help="each part of the checks phase alone on a fresh restore, then "
                             "all together, with CPU seconds (no drills, no backups timed)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="atb-bench-checks-"))
    try:
        if args.profile:
            profile(args.size.split(",")[0].strip(), args.repeat, work, out)
            return
        out(f"load average before: {load_average()}")
        out("| size | A | B | A/B | goal | notes |")
        out("|---|---|---|---|---|---|")
        for size in args.size.split(","):
            for line in bench(size.strip(), args.repeat, work, args.base):
                out(line)
        out(f"load average after: {load_average()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
