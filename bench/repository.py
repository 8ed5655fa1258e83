"""`python -m bench.repository [--size 256MB] [--repeat 3] [--listing 10000]`: the off-site
repository against plain boto3, on a local SeaweedFS (`weed server -s3`, as the tests run it).

- upload: `offsite_transfer.push_backup` of one backup (hash, multipart with CRC32-checksummed
  parts, manifest record last) vs boto3 `upload_file` of the same bytes (defaults);
- download: `offsite_transfer.fetch` (stream, both hashes, write) vs boto3 `download_file`;
- encryption: push with an age recipient (sealed by a thread into reused part buffers a few
  parts ahead of their upload, `sealing.SealedStream` and `Repository.upload_parts`) vs the
  same push in plain (goal <= 1.15), and the same for fetch (each part decrypted by the
  thread that fetched it, `sealing.unseal_ranged`; no goal: the issue sets encryption's cost
  against the upload);
- listing: `atb db list --repo` over a repository of N backups (one listing, manifests read
  concurrently).

Writes its section of bench/RESULTS.md (between the repository markers; the rest is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backup_core.store import offsite_catalog, offsite_transfer, repository  # noqa: E402
from backup_core.store.manifest import Manifest  # noqa: E402
from backup_core.store.naming import backup_path, manifest_path  # noqa: E402
from bench.harness import Comparison, replace_section  # noqa: E402
from tests.object_store import seaweedfs  # noqa: E402

BEGIN, END = "<!-- BEGIN REPOSITORY BENCH -->", "<!-- END REPOSITORY BENCH -->"


def _size(text: str) -> int:
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    for unit, mult in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * mult)
    return int(text)


def _backup(tree: Path, size: int) -> tuple[Path, Manifest]:
    """A sound backup of `size` random (incompressible) bytes, as atb files one."""
    import hashlib

    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    dump = backup_path(tree, "bench", at)
    dump.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    with dump.open("wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 << 20))
            fh.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    manifest = _manifest(dump.name, at, size, digest.hexdigest())
    manifest_path(dump).write_text(manifest.to_json())
    return dump, manifest


def _manifest(name: str, at: datetime, size: int, sha: str, db: str = "bench") -> Manifest:
    return Manifest(database=db, file=name, taken_at=at.isoformat(),
                    started_at=at.isoformat(), finished_at=at.isoformat(), duration_s=1.0,
                    size_bytes=size, sha256=sha, pg_dump_version="18.1",
                    server_version="18.1", toc_entries=1, alembic_revision=None,
                    row_counts_mode="off")


def _client() -> float:
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                 resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Cpu:
    """CPU seconds of each timed run, of the client (this process and any child it waited
    for) and of the store."""

    def __init__(self, store_pid: int) -> None:
        self.pid = store_pid
        self.runs: dict[int, list[tuple[float, float]]] = {}

    def _store(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wrap(self, sink: list[float], fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            client_0, store_0 = _client(), self._store()
            fn()
            self.runs.setdefault(id(sink), []).append((_client() - client_0,
                                                       self._store() - store_0))
        return run

    def note(self, comp: Comparison) -> str:
        def med(sink: list[float]) -> str:
            runs = self.runs.get(id(sink), [])
            if not runs:
                return "-"
            return (f"{statistics.median(r[0] for r in runs):.2f} + store "
                    f"{statistics.median(r[1] for r in runs):.2f}")
        return f"CPU s, client + store, median: A {med(comp.a)}, B {med(comp.b)}"


def alternate(comp: Comparison, a: Callable[[], object], b: Callable[[], object],
              repeat: int, cpu: Cpu) -> None:
    """harness.alternate, with each run's CPU seconds and the load average noted."""
    from bench import harness

    load = os.getloadavg()[0]
    harness.alternate(comp, cpu.wrap(comp.a, a), cpu.wrap(comp.b, b), repeat)
    comp.notes.append(cpu.note(comp))
    comp.notes.append(f"load {load:.1f} -> {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="256MB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--listing", type=int, default=10000)
    args = parser.parse_args()
    size = _size(args.size)
    work = Path(tempfile.mkdtemp(prefix="atb-bench-repo-"))
    rows: list[Comparison] = []
    try:
        with seaweedfs(work / "store", volume_mb=1024, volumes=64) as store:
            os.environ.update(store.env())
            repo = repository.open_repository(store.url)
            cpu = Cpu(store.pid)
            client = repo.client
            dump, manifest = _backup(work / "tree", size)
            from backup_core.store.age_format import Identity

            ident = Identity.generate()
            (work / "id.txt").write_text(f"{ident}\n")
            recipient = str(ident.to_public())

            def fresh() -> repository.Repository:
                return repository.Repository(repository.RepoUrl(store.bucket,
                                                                f"b-{uuid.uuid4().hex[:8]}"),
                                             client)

            up = Comparison(f"upload ({args.size})", "atb push", "boto3 upload_file", "<= 1.1")
            alternate(up, lambda: offsite_transfer.push_backup(fresh(), dump, manifest),
                      lambda: client.upload_file(str(dump), store.bucket,
                                                 f"plain/{uuid.uuid4().hex}"), args.repeat, cpu)
            rows.append(up)
            enc = Comparison(f"encrypted upload ({args.size})", "atb push, age", "atb push, plain",
                             "<= 1.15")
            alternate(enc, lambda: offsite_transfer.push_backup(fresh(), dump, manifest,
                                                          recipients=(recipient,)),
                      lambda: offsite_transfer.push_backup(fresh(), dump, manifest), args.repeat,
                      cpu)
            rows.append(enc)
            plain, sealed = fresh(), fresh()
            offsite_transfer.push_backup(plain, dump, manifest)
            offsite_transfer.push_backup(sealed, dump, manifest, recipients=(recipient,))
            key = f"{plain.url.prefix}/{offsite_transfer.remote_rel(manifest)}"
            down = Comparison(f"download ({args.size})", "atb fetch (both hashes)",
                              "boto3 download_file", "<= 1.1")

            def fetch(r: repository.Repository, ident_file: Path | None = None) -> None:
                with tempfile.TemporaryDirectory(dir=work) as tmp:
                    offsite_transfer.fetch(r, offsite_catalog.scan(r)[0], Path(tmp),
                                     identity_file=ident_file)

            alternate(down, lambda: fetch(plain),
                      lambda: client.download_file(store.bucket, key, str(work / "dl")),
                      args.repeat, cpu)
            rows.append(down)
            dec = Comparison(f"encrypted download ({args.size})", "atb fetch, age",
                             "atb fetch, plain", "no goal (reported)")
            alternate(dec, lambda: fetch(sealed, work / "id.txt"), lambda: fetch(plain),
                      args.repeat, cpu)
            rows.append(dec)
            if args.listing:
                rows.append(_listing(store.bucket, client, args.listing, args.repeat))
    finally:  # a failed run leaves no store of a few GB behind
        shutil.rmtree(work, ignore_errors=True)
    text = _render(rows, args)
    replace_section(text, BEGIN, END)
    print(text)


def _listing(bucket: str, client: object, n: int, repeat: int) -> Comparison:
    """A repository of `n` backups (tiny dumps, real manifest records), listed whole."""
    repo = repository.Repository(repository.RepoUrl(bucket, f"list-{uuid.uuid4().hex[:6]}"),
                                 client)
    start = datetime(2025, 1, 1, tzinfo=UTC)

    def put(i: int) -> None:
        at = start + timedelta(hours=i)
        m = _manifest(f"backup-{at:%Y%m%dT%H%M%SZ}.dump", at, 4, "0" * 64)
        rel = offsite_transfer.remote_rel(m)
        stored = offsite_catalog.StoredObject(rel, 4, "0" * 64, "0" * 64, 4)
        data = json.loads(m.to_json())
        data["offsite"] = offsite_catalog.Offsite("none", (), stored, None, None,
                                             at.isoformat()).to_dict()
        client.put_object(Bucket=bucket, Key=repo.url.key(rel), Body=b"PGDM")  # type: ignore[attr-defined]
        client.put_object(Bucket=bucket,  # type: ignore[attr-defined]
                          Key=repo.url.key(rel[: -len(".dump")] + ".json"),
                          Body=json.dumps(data).encode())

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(put, range(n)))
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = offsite_catalog.scan(repo)
    cold = time.perf_counter() - t0
    assert len(found) == n and all(f.backup.complete for f in found), len(found)
    t0 = time.perf_counter()
    offsite_catalog.refresh_index(repo)  # what every push that uploads does
    indexed = time.perf_counter() - t0
    comp = Comparison(f"list {n} backups", "scan with the index", "scan without (cold)",
                      "a few seconds")
    for _ in range(repeat):
        t = time.perf_counter()
        found = offsite_catalog.scan(repo)
        comp.a.append(time.perf_counter() - t)
        assert len(found) == n and all(f.backup.complete for f in found), len(found)
    comp.b.append(cold)
    comp.notes.append(f"{2 * n} objects written in {made:.0f}s with 32 threads; the index "
                      f"folded in {indexed:.1f}s")
    return comp


def _render(rows: list[Comparison], args: argparse.Namespace) -> str:
    head = (f"{BEGIN}\n## Off-site repository (SeaweedFS on this machine)\n\n"
            f"Run {datetime.now(UTC):%Y-%m-%d %H:%MZ} on {os.cpu_count()} cores, "
            f"{platform.platform()}, Python {platform.python_version()}; store and client on "
            f"the same host (loopback), {args.repeat} rounds, A and B alternating; times in "
            "seconds, median (min-max). Random (incompressible) bytes.\n"
            f"Command: `python -m bench.repository --size {args.size} --repeat {args.repeat} "
            f"--listing {args.listing}`.\n\n"
            "| comparison | A | B | A/B | goal | notes |\n|---|---|---|---|---|---|\n")
    body = "\n".join("| " + " | ".join(r.row()) + " |" for r in rows)
    return head + body + f"\n{END}\n"


if __name__ == "__main__":
    main()
