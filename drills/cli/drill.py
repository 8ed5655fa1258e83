"""`atb drill run`: a restore drill of one backup, its verdict and the paths of its reports."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from backup_core.ops.publish import PublishFailed, Wiki
from backup_core.store.signing import signer_from_env
from backup_core.tools import extras, notify
from backup_core.tools.errors import AtbError, ConfigError, ProductionTouched
from drills import console, interrupts, leftovers, render, sandbox
from drills.alerts import drill_notice
from drills.cli import output
from drills.cli.params import (
    DAYS,
    EXIT_CODES,
    F,
    days,
    json_option,
    production,
    signer_needs_repo,
)
from drills.cli.publish import notify_option, published_text, wiki_of, wiki_option
from drills.options import OPTIONS, DrillOptions, Option
from drills.result import DetectionFacts, DrillResult

if TYPE_CHECKING:
    from backup_core.store.catalog import Backup
    from backup_core.store.offsite_transfer import Fetched


def drill_settings(command: F) -> F:
    """`atb drill run`'s options, made from the one declaration of each (`drills.options`),
    as the pytest plugin makes its options and ini keys from the same table."""
    for o in reversed([o for o in OPTIONS if o.cli]):
        command = click.option(f"--{o.flag}", o.flag.replace("-", "_"),
                               **_click_settings(o))(command)
    return command


def _click_settings(o: Option) -> dict[str, Any]:
    kw: dict[str, Any] = {"help": o.help}
    if o.metavar:
        kw["metavar"] = o.metavar
    if o.envvar:
        kw.update(envvar=o.envvar, show_envvar=True)
    if o.kind == "flag":
        return {**kw, "is_flag": True}
    if o.kind in ("list", "paths"):
        kw.update(multiple=True, help=o.help + " (repeatable)")
    # a file or directory as typed: an `s3://` key keeps its slashes
    types: dict[str, Any] = {
        "file": click.Path(dir_okay=False), "dir": click.Path(file_okay=False),
        "paths": click.Path(exists=True, path_type=Path), "int": int,
        "count": click.IntRange(min=1), "days": DAYS, "choice": click.Choice(o.choices)}
    if o.kind in types:
        kw["type"] = types[o.kind]
    if o.kind == "days":
        kw["callback"] = days
    if o.default is not None:
        kw["default"] = float(o.default) if o.kind == "days" else o.default
    return kw


@click.group(epilog=EXIT_CODES)
def drill() -> None:
    """Restore drills: prove that a backup restores, migrates and serves the application."""


@drill.command("run", epilog=EXIT_CODES)
@drill_settings
@click.option("--repo", metavar="s3://BUCKET/PREFIX",
              help="Drill from this off-site repository, on a machine with no backup tree: "
                   "a backup of the window (or --backup KEY, as `db list --repo` shows it) is "
                   "downloaded into a private directory, its hashes proven, decrypted "
                   "(ATB_AGE_IDENTITY_FILE), drilled, and removed.")
@click.option("--repo-signer", envvar="ATB_REPO_SIGNER", show_envvar=True, metavar="PEM",
              type=click.Path(path_type=Path, dir_okay=False),
              help="With --repo: refuse, before downloading it, a backup whose manifest "
                   "record this Ed25519 public key did not sign.")
@click.option("--prove-detection", is_flag=True,
              help="After the drill, run it again over a deliberately damaged copy of the "
                   "same backup (one value changed, one row removed, the manifest resealed) "
                   "and record which check caught it; if none does, the drill FAILs.")
@click.option("--pdf", is_flag=True,
              help="Also write the report as a PDF beside the HTML, as a reader without "
                   "JavaScript sees it (needs Chromium), for wikis that take attachments.")
@click.option("--publish", is_flag=True,
              help="Then publish the reports into the audit wiki (--wiki), as `atb audit "
                   "publish --drill` does; a PASS that cannot be published exits 11.")
@wiki_option
@notify_option
@json_option
def drill_run(repo: str | None, repo_signer: Path | None, prove_detection: bool, pdf: bool,
              publish: bool,
              wiki_url: str | None, notify_urls: tuple[str, ...], as_json: bool,
              **values: Any) -> None:
    """Restore a random backup of the window (or --backup) into a sandbox, migrate it, run
    the checks and the integration command, and write the audit reports. Exits 0 on PASS,
    1 on FAIL, 10 when INCOMPLETE, 8 when production changed, 2 when the configuration
    cannot run (nothing is then recorded). --notify tells on FAIL and INCOMPLETE."""
    from drills import ledger as drill_ledger

    signer_needs_repo(repo, repo_signer)
    extras.require("drill", what="the restore drill")
    if pdf:
        render.require()
    wiki = wiki_of(wiki_url) if publish else None
    urls = notify.check_targets(notify_urls)
    key = str(values["backup"]) if repo and values["backup"] else None
    options = _options({**values, "backup": None} if repo else values)
    if prove_detection and options.source != "dump":
        raise ConfigError("--prove-detection damages a copy of a pg_dump backup: it does not "
                          "apply to --source pgbackrest")
    signer = signer_from_env(os.environ)  # a bad key: exit 2 before anything starts
    # the child writes the ledger's facts into its reports (the key's fingerprint, not the key)
    options = replace(options, ledger_key=drill_ledger.evidence(signer).key_fingerprint)
    with contextlib.ExitStack() as stack:  # a backup fetched from --repo goes at the end
        fetched = None
        if repo:
            chosen_among: list[int] = []
            fetched = stack.enter_context(_fetch(repo, key, options, repo_signer,
                                                 chosen_among))
            # the reports and the ledger name the repository's object, not the private
            # directory it was downloaded into (removed when the drill ends)
            options = replace(options, backup=fetched.path,
                              backup_dir=fetched.path.parents[4], record=False,
                              origin=json.dumps(_origin(repo, key, fetched, options,
                                                        chosen_among)))
        # interrupts handled from here: a Ctrl-C while the sandbox's files are copied, or
        # after the drill, still leaves the copy removed (the block's end waits for it)
        signals = stack.enter_context(interrupts.handling())
        from drills.run import check_drill

        # every refusal first, nothing begun yet; the backup picked here, once, as the plugin
        # would pick it (`child.choose`), so that its sandbox's files are copied while the
        # child starts (`sandbox.prepared_for`)
        options = check_drill(options, production=production(os.environ.get("DATABASE_URL")))
        prepared = stack.enter_context(sandbox.prepared_for(options))
        progress = console.DrillProgress()
        leftovers.reap()  # the temporary directories of killed drills (one line each)
        try:
            result, detection = _drill_and_prove(options, progress, signals,
                                                 prove=prove_detection, prepared=prepared)
            # the child wrote its reports with the ledger's facts; a detection run adds its own
            if detection is not None or result.evidence != drill_ledger.evidence(signer):
                result = drill_ledger.annotate(result, signer=signer, detection=detection)
            if pdf:
                html_path = Path(result.reports["html"])
                render.render(html_path, pdf=html_path.with_suffix(".pdf"))
                result = replace(result, reports={**result.reports,
                                                  "pdf": str(html_path.with_suffix(".pdf"))})
        except interrupts.Abandoned:
            raise interrupts.RecordAbandoned("abandoned: the drill's ledger record was not "
                                             "written") from None
        try:
            drill_ledger.record(result, options, signer=signer)
        except interrupts.Abandoned:
            raise interrupts.RecordAbandoned("abandoned while the drill's ledger record was "
                                             "being written (`atb audit verify` says whether "
                                             "it was)") from None
    if signals.signalled and not result.interrupted:  # asked to stop once it had reported
        raise KeyboardInterrupt
    if fetched is None or not as_json:  # the summary names the repository's object
        output.show(result, as_json=as_json, text=drill_summary)
    else:
        output.print_json({**output.jsonable(result), "offsite": _offsite(repo, fetched)})
    published = wiki is None or _publish(wiki, result)
    notice = drill_notice(result)
    if notice is not None:
        notify.send(urls, notice)  # never raises: the verdict stands
    code = drill_exit_code(result)
    if code:
        raise SystemExit(code)
    if not published:
        raise SystemExit(PublishFailed.exit_code)


INTERRUPTED_EXIT = 130  # as every command ends on Ctrl-C


def _drill_and_prove(options: DrillOptions, progress: console.DrillProgress,
                     signals: interrupts.Interrupts, *, prove: bool,
                     prepared: Path | None
                     ) -> tuple[DrillResult, DetectionFacts | None]:
    """The drill, then (`--prove-detection`) the drill of a damaged copy of its backup. An
    interrupt before or during that second drill drops it, never counted as damage not
    caught: the drill is recorded as it ran, and `atb` exits 130."""
    from drills.run import run_drill

    try:  # sandboxes of killed drills are reaped meanwhile (each logged in one line)
        with sandbox.reaping():
            result = run_drill(options, production=production(
                os.environ.get("DATABASE_URL")), on_event=progress, prepared=prepared,
                checked=True)
    finally:
        progress.close()
    signals.armed = False  # reported: from here until its record is, a Ctrl-C waits
    if not prove or result.interrupted or signals.signalled:
        return result, None
    from drills import detect  # (its restore and backup modules: only then)

    # a damaged copy of the same backup, while it is still here: a --repo backup's download
    # (the result names the repository's object), else the file the drill restored
    here = str(options.target) if options.target else result.backup.path
    local = replace(result, backup=replace(result.backup, path=here))
    signals.armed = True  # a Ctrl-C stops the detection run, not the record of the drill
    try:
        detection: DetectionFacts | None = detect.prove(
            local, options, production=production(os.environ.get("DATABASE_URL")))
    except interrupts.Abandoned:
        raise
    except KeyboardInterrupt:
        detection = None
    finally:
        signals.armed = False
    if signals.signalled:
        click.echo("atb: the drill of the damaged copy was interrupted: the drill is recorded "
                   "without it", err=True)
        return result, None
    return result, detection


def drill_exit_code(result: DrillResult) -> int:
    """0 PASS, 1 FAIL, 10 INCOMPLETE, 130 interrupted; 8 when production changed, as
    `restore --migrate` exits: one code for it across commands."""
    if any(c.name == "test_production_was_not_touched" and c.outcome in ("failed", "error")
           for c in result.checks):
        return ProductionTouched.exit_code
    if result.interrupted:  # recorded and reported; the run itself was stopped
        return INTERRUPTED_EXIT
    if result.passed:
        return 0
    return 10 if result.verdict == "INCOMPLETE" else 1


def _publish(wiki: Wiki, result: DrillResult) -> bool:
    """Publish this drill's reports; a failure is one line, and the verdict stands."""
    from drills.wiki import publish_drills

    log = logging.getLogger("atb.publish")
    try:
        done = publish_drills(wiki, Path(result.reports["json"]).parent.parent,
                              [Path(result.reports["json"])])
    except AtbError as exc:
        log.error("%s", exc)
        return False
    log.info("%s", published_text(done))
    return True


@contextlib.contextmanager
def _fetch(repo: str, key: str | None, options: DrillOptions,
           signer: Path | None = None, among: list[int] | None = None) -> Iterator[Fetched]:
    """The backup to drill, downloaded (with progress on a terminal) and proven; `among`
    gets how many backups the random pick chose among."""

    from backup_core.ops import offsite

    progress = console.Progress("fetch")
    last = ["download"]
    try:
        with offsite.downloaded(
                repo, key, database=options.database, signer=signer,
                progress=lambda n, total: progress(_eta(n, total, progress.t0, last), n),
                pick=lambda found: _pick(found, options, among)) as got:
            progress.close()
            yield got
    finally:
        progress.close()


def _pick(found: list[Backup], options: DrillOptions, among: list[int] | None) -> Backup:
    """The random pick of the repository's sound backups, as the local drill picks."""
    from datetime import UTC, datetime

    from drills.pick import picked

    chosen, count = picked(found, now=datetime.now(UTC), window_days=options.window_days,
                           seed=options.seed, database=options.database)
    if among is not None:
        among[:] = [count]
    return chosen


def _origin(repo: str, key: str | None, got: Fetched, options: DrillOptions,
            among: list[int]) -> dict[str, str]:
    """What the reports and the ledger say of a backup drilled from the repository: its
    object (`url`, in place of the private download path), its hashes (the manifest's
    hashed while it is still here), and how it was selected."""
    from backup_core.store.ledger import file_sha256
    from backup_core.store.naming import manifest_path
    from backup_core.tools.durations import plural

    facts = _offsite(repo, got)
    how = (f"given with --backup {key}" if key else
           f"random among {plural(among[0] if among else 0, 'complete backup')} of the last "
           f"{options.window_days:g} days in {repo} (seed {options.seed})")
    return {"url": f"{str(repo).rstrip('/')}/{got.offsite.dump.key}", "selection": how,
            **facts, "manifest sha256": file_sha256(manifest_path(got.path))}


def _eta(done: int, total: int, t0: float, last: list[str]) -> str:
    """`download 40% of 1.0 GiB, ETA 12s`, renewed in steps of 10% (so a log that prints
    each new phase prints ten lines, not one per chunk)."""
    import time

    if not total or not done:
        return last[0]
    step = min(100, done * 100 // total // 10 * 10)
    if f" {step}% " not in last[0]:
        eta = (time.monotonic() - t0) * (total - done) / done
        last[0] = f"download {step}% of {console.size(total)}, ETA {eta:.0f}s"
    return last[0]


def _offsite(repo: str | None, got: Fetched) -> dict[str, str]:
    """What the report says of the repository object: its key, hashes and the fetch phase."""
    o = got.offsite
    return {"repository": str(repo), "object": o.dump.key, "stored sha256": o.dump.sha256,
            "plain sha256": o.dump.plain_sha256, "encryption": o.encryption,
            "fetch/verify": f"{got.duration_s:.1f}s"}


def _options(values: dict[str, Any]) -> DrillOptions:
    """The drill's options from click's values, through the one declaration of each."""
    text: dict[str, str | None] = {}
    flags: dict[str, bool] = {}
    for o in OPTIONS:
        if not o.cli:
            continue
        value = values[o.flag.replace("-", "_")]
        if o.kind == "flag":
            flags[o.name] = bool(value)
        elif o.kind in ("list", "paths"):
            text[o.name] = ",".join(str(v) for v in value) or None
        else:
            text[o.name] = None if value is None else str(value)
    return DrillOptions.from_values(text.get, flags.get, os.environ)


def drill_summary(r: DrillResult) -> str:
    """The verdict, the summary rows, each check's outcome, and where the reports are."""
    from backup_core.store.naming import printable
    from drills.report import next_steps, summary_rows, title

    # the store's keys, the database's names and the checks' messages: no control character
    # reaches the terminal
    lines = [f"{k + ':':<14} {printable(str(v))}" for k, v in summary_rows(r)]
    lines.append("")
    for c in r.checks:
        lines.append(f"  {c.outcome.upper():<8} {c.title}")
        if c.outcome in ("failed", "error") and c.message:
            lines.append(f"           {printable(c.message.splitlines()[0])}")
    for f in r.findings:
        lines.append(f"  FINDING  {printable(f)}")
    for name, why in r.not_run.items():
        lines.append(f"  NOT RUN  {title(name)}: {why}")
    lines += ["", f"report: {r.reports['html']}", f"json:   {r.reports['json']}",
              f"wiki:   {r.reports['md']}"]
    if "pdf" in r.reports:
        lines.append(f"pdf:    {r.reports['pdf']}")
    steps = next_steps(r) if r.verdict == "INCOMPLETE" else []
    if steps:  # last, where a reader's eye lands: what would make the next drill complete
        lines += ["", "To make the next drill complete:", *(f"  - {st}" for st in steps)]
    return "\n".join(lines)
