"""The audit wiki's pages: each drill's Markdown report as its own page, with the HTML, PDF and
JSON reports beside it as attachments, the ledger, and an index of every drill the wiki holds.

Layout in the wiki (a git repository; `backup_core.ops.publish` commits and pushes it):

    Restore-drills.md                        the index: date, database, verdict, RTO, data loss
    restore-drills/<db>/<time>-drill.md      the drill's page: the report's Markdown, unchanged
    restore-drills/<db>/<time>-drill.html    attachments (the PDF when `--pdf` made one)
    restore-drills/<db>/<time>-drill.json    the facts the index is built from
    restore-drills/ledger-<id>.ndjson        the ledger (`<id>`: its first record's hash)

The report files are published byte for byte, so their SHA-256 still matches the ledger's.
The index is rebuilt from every JSON report in the wiki at each attempt, so drills published
from other hosts stay listed. Every string in it from a report is made inert (`drills.inert`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backup_core.ops.publish import PublishResult, Wiki, page_link, publish
from backup_core.tools.durations import human
from backup_core.tools.errors import ConfigError
from drills.inert import md_cell
from drills.result import SCHEMA_ID, DrillResult

INDEX = "Restore-drills.md"
FOLDER = "restore-drills"
LEDGER = "ledger.ndjson"
ATTACHMENTS = (".md", ".html", ".pdf", ".json")
MAX_JSON = 4 << 20  # a drill's JSON report is tens of KiB; more is not one


@dataclass(frozen=True)
class Drill:
    """One drill's report files in the report directory, by the report's stem."""

    folder: str  # the database's directory name (`naming.dir_name`)
    stem: str  # <time>-drill
    files: tuple[Path, ...]

    @property
    def page(self) -> str:
        return f"{FOLDER}/{self.folder}/{self.stem}"


def drills_in(report_dir: Path, only: Sequence[Path] = ()) -> list[Drill]:
    """The drills of `report_dir` (every `<db>/<time>-drill.json`), or those of `only` (any of
    a drill's report files names it)."""
    if only:
        jsons = []
        for given in only:
            path = given.with_suffix(".json")
            if not path.name.endswith("-drill.json") or not path.is_file():
                raise ConfigError(f"{given} is not a drill report (<db>/<time>-drill.json, "
                                  ".md, .html or .pdf beside its JSON)")
            jsons.append(path)
    else:
        jsons = sorted(report_dir.glob("*/*-drill.json"))
    found = {}
    for path in jsons:
        files = tuple(f for f in (path.with_suffix(s) for s in ATTACHMENTS)
                      if f.is_file() and not f.is_symlink())
        found[path.resolve()] = Drill(path.parent.name, path.stem, files)
    return list(found.values())


def ledger_name(data: bytes) -> str:
    """A ledger's name in the wiki, from its first record: the same ledger (and every longer
    copy of it) always lands on the same page; another host's never replaces it."""
    first = data.split(b"\n", 1)[0]
    return f"{FOLDER}/ledger-{hashlib.sha256(first).hexdigest()[:12]}.ndjson"


def files_to_publish(drills: Sequence[Drill], ledger: Path | None) -> dict[str, bytes]:
    files = {f"{d.page}{f.suffix}": f.read_bytes() for d in drills for f in d.files}
    if ledger is not None and ledger.is_file() and not ledger.is_symlink():
        data = ledger.read_bytes()
        if data.strip():
            files[ledger_name(data)] = data
    return files


def wiki_results(clone: Path) -> list[tuple[DrillResult, str]]:
    """Every drill report the wiki holds (regular files only: a link in a wiki is never
    followed), newest first, with its page's wiki path."""
    found = []
    for path in (clone / FOLDER).glob("*/*-drill.json"):
        try:
            if path.is_symlink() or path.parent.is_symlink() or path.stat().st_size > MAX_JSON:
                continue
            data = json.loads(path.read_bytes())
            if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID:
                continue
            result = DrillResult.from_dict(data)
        except (OSError, ValueError, TypeError, RecursionError):
            continue
        found.append((result, f"{FOLDER}/{path.parent.name}/{path.stem}"))
    return sorted(found, key=lambda pair: (pair[0].started_at, pair[1]), reverse=True)


def data_loss(r: DrillResult) -> str:
    """Measured for a point-in-time drill; for a dump, the worst case: the largest gap
    between backups."""
    if r.pitr is not None and r.pitr.data_loss_s is not None:
        return human(r.pitr.data_loss_s)
    if r.rpo.largest_gap_s is not None:
        return f"up to {human(r.rpo.largest_gap_s)}"
    return "-"


def when(started_at: str) -> str:
    """A drill's start as a reader scans a column of them: `2026-11-29 06:00`, in UTC."""
    try:
        return f"{datetime.fromisoformat(started_at).astimezone(UTC):%Y-%m-%d %H:%M}"
    except (ValueError, TypeError):
        return started_at


def rto_cell(r: DrillResult) -> str:
    if r.rto.failed_at == "interrupted":
        return "not measured: interrupted"
    if r.rto.failed_at or r.rto.measured_s is None:
        return f"failed at {r.rto.failed_at or 'an early phase'}"
    return f"{human(r.rto.measured_s)} ({'met' if r.rto.met else 'NOT MET'})"


def index_markdown(results: Sequence[tuple[DrillResult, str]], ledgers: Sequence[str],
                   existing: set[str]) -> str:
    """The index page: one row per drill, newest first. `existing`: the wiki's files, so only
    attachments that are there are linked."""
    lines = ["# Restore drills", "",
             f"{len(results)} drills, newest first. Each page is the drill's own report, "
             "published by `atb audit publish`; the HTML and JSON reports are attached to it.",
             ""]
    if ledgers:
        lines += ["Ledger: " + ", ".join(f"[{md_cell(n.rsplit('/', 1)[-1])}]"
                                         f"({page_link(n)})" for n in ledgers), ""]
    lines += ["| Drill (UTC) | Database | Verdict | RTO | Data loss | Report |",
              "|---|---|---|---|---|---|"]
    for r, page in results:
        links = [f"[page]({page_link(page)})"]
        links += [f"[{kind}]({page_link(page + suffix)})"
                  for kind, suffix in (("HTML", ".html"), ("PDF", ".pdf"))
                  if page + suffix in existing]
        verdict = f"**{md_cell(r.verdict)}**"
        lines.append(f"| {md_cell(when(r.started_at))} | {md_cell(r.database)} | {verdict} | "
                     f"{md_cell(rto_cell(r))} | {md_cell(data_loss(r))} | {' · '.join(links)} |")
    return "\n".join(lines) + "\n"


def _wiki_files(clone: Path) -> set[str]:
    folder = clone / FOLDER
    if not folder.is_dir() or folder.is_symlink():
        return set()
    return {str(p.relative_to(clone)) for p in folder.rglob("*") if p.is_file()}


def builder(files: Mapping[str, bytes]) -> Callable[[Path], dict[str, bytes]]:
    """What to write into a clone of the wiki: `files`, then the index over every drill in
    the clone as it will be (its own drills and everyone else's)."""

    def build(clone: Path) -> dict[str, bytes]:
        existing = _wiki_files(clone) | set(files)
        staged = {**files}
        # the index reads the clone: put this publish's JSON reports where it will look
        results = {page: r for r, page in wiki_results(clone)}
        for rel, data in files.items():
            if rel.endswith("-drill.json"):
                try:
                    parsed = json.loads(data)
                    if isinstance(parsed, dict) and parsed.get("schema") == SCHEMA_ID:
                        results[rel.removesuffix(".json")] = DrillResult.from_dict(parsed)
                except (ValueError, TypeError, RecursionError):
                    continue
        ordered = sorted(((r, p) for p, r in results.items()),
                         key=lambda pair: (pair[0].started_at, pair[1]), reverse=True)
        ledgers = sorted(n for n in existing if n.startswith(f"{FOLDER}/ledger-"))
        staged[INDEX] = index_markdown(ordered, ledgers, existing).encode()
        return staged

    return build


def publish_drills(wiki: Wiki, report_dir: Path, only: Sequence[Path] = ()) -> PublishResult:
    """Publish the drills of `report_dir` (or `only`) and its ledger into the wiki."""
    drills = drills_in(report_dir, only)
    if not drills:
        raise ConfigError(f"no drill reports under {report_dir}: run `atb drill run` first")
    files = files_to_publish(drills, report_dir / LEDGER)
    names = ", ".join(f"{d.folder}/{d.stem}" for d in drills[:3])
    more = f" and {len(drills) - 3} more" if len(drills) > 3 else ""
    return publish(wiki, builder(files), message=f"Restore drills: {names}{more}")
