"""A drill's mishaps a new user met: a typo in where the backups are, a check file that cannot
be collected, a drill from the repository naming what it drilled, Ctrl-C and `kill -9`
in the middle, each kept as the test that reproduced it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from backup_core.store.naming import manifest_path
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from tests.conftest import make_database
from tests.helpers import (
    atb,
    atb_inproc,
    checks,
    copy_backup,
    drill,
    interrupt_drill,
    oldest,
)
from tests.object_store import ObjectStore


@pytest.mark.parametrize("case", ["no-tree", "passwd", "manifest", "missing", "outside",
                                  "outside-bad", "nosuch-db"])
def test_a_typo_in_where_the_backups_are_is_exit_2_and_records_nothing(
        tmp_path: Path, case: str) -> None:
    """Item 6: a BACKUP_DIR that does not exist, a --backup that is not a backup of ours or
    is its manifest: exit 2, one line, no report, no ledger record, no verdict. N3: a dump
    outside the tree with no readable manifest beside it (its database unknown). N6: a
    --database the tree holds nothing of, never drilled (no record of it in the ledger)."""
    tree = tmp_path / "backups"
    day = tree / "shop" / "2026" / "11" / "30"
    day.mkdir(parents=True)
    manifest = day / "backup-20261130T010203Z.json"
    manifest.write_text("{}")
    (day / "backup-20261130T010203Z.dump").write_bytes(b"PGDMP")
    elsewhere = tmp_path / "x" / "backup-20261130T010203Z.dump"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"PGDMP")
    if case == "outside-bad":
        manifest_path(elsewhere).write_text("not json")
    args = {"no-tree": [], "passwd": ["--backup", "/etc/passwd"],
            "manifest": ["--backup", str(manifest)],
            "missing": ["--backup", str(day / "backup-20261130T010204Z.dump")],
            "outside": ["--backup", str(elsewhere)], "outside-bad": ["--backup", str(elsewhere)],
            "nosuch-db": ["--database", "nosuch"]}[case]
    reports = tmp_path / "reports"
    done, _ = drill(*args, backup_dir=tmp_path / "nonexistent" if case == "no-tree" else tree,
                    report_dir=reports)
    expected = {
        "no-tree": f"atb: error: BACKUP_DIR (--backup-dir) {tmp_path / 'nonexistent'}: no "
                   "such directory\n",
        "passwd": "atb: error: --backup /etc/passwd is not an atb backup (a "
                  "backup-YYYYMMDDTHHMMSSZ.dump beside its manifest)\n",
        "manifest": f"atb: error: --backup {manifest} is a backup's manifest: give its dump, "
                    f"{day / 'backup-20261130T010203Z.dump'}\n",
        "missing": f"atb: error: --backup {day / 'backup-20261130T010204Z.dump'}: no such "
                   "backup file (`atb db list` shows them)\n",
        "outside": f"atb: error: --backup {elsewhere}: no manifest at "
                   f"{manifest_path(elsewhere)}: the drill cannot tell which database it "
                   "holds; give a dump beside the manifest `atb db backup` wrote with it\n",
        "outside-bad": f"atb: error: --backup {elsewhere}: unreadable manifest "
                       f"{manifest_path(elsewhere)}: Expecting value: line 1 column 1 (char 0): "
                       "the drill cannot tell which database it holds; give a dump beside the "
                       "manifest `atb db backup` wrote with it\n",
        "nosuch-db": "atb: error: --database nosuch: no backup of database nosuch: the tree has "
                     "no directory nosuch/ for it (the tree holds backups of shop), and no "
                     "drill of it is in the ledger\n"}[case]
    assert (done.returncode, done.stderr, done.stdout) == (2, expected, "")
    assert not reports.exists()
    assert sorted(p.name for p in day.iterdir()) == ["backup-20261130T010203Z.dump",
                                                     "backup-20261130T010203Z.json"]
    assert sorted(p.name for p in elsewhere.parent.iterdir()) == sorted(
        [elsewhere.name, *([manifest_path(elsewhere).name] if case == "outside-bad" else [])])


def test_a_dump_in_the_tree_reached_through_a_symlink_is_judged_as_filed_there(
        tmp_path: Path) -> None:
    """Review item 6: `--backup` through a symbolic link to the tree is a dump filed in it
    (its directory names its database): without its manifest the drill runs and FAILs its
    integrity check, recorded, instead of exit 2 as for a dump from elsewhere."""
    tree = tmp_path / "backups"
    day = tree / "shop" / "2026" / "11" / "30"
    day.mkdir(parents=True)
    (day / "backup-20261130T010203Z.dump").write_bytes(b"PGDMP")
    (tmp_path / "link").symlink_to(tree)
    given = tmp_path / "link" / "shop" / "2026" / "11" / "30" / "backup-20261130T010203Z.dump"
    done, result = drill("--backup", str(given), backup_dir=tree, report_dir=tmp_path / "r")
    assert (done.returncode, result["verdict"]) == (1, "FAIL"), done.stderr
    assert checks(result)["test_backup_integrity_matches_manifest"] == "failed"
    assert len((tmp_path / "r" / "ledger.ndjson").read_text().splitlines()) == 1


@pytest.mark.parametrize("off", ["inside", "above"])
def test_a_backup_dir_a_level_off_the_tree_is_exit_2_in_the_words_of_list(
        history: tuple[ConnInfo, Path], tmp_path: Path, off: str) -> None:
    """N6 and its review: BACKUP_DIR one database's directory, or the directory above the
    tree: exit 2 before anything starts, with the line `atb db list` warns with for the same
    mistake (`catalog.real_tree`, one heuristic and one wording)."""
    tree, reports = tmp_path / "backups", tmp_path / "r"
    copy_backup(oldest(history[1]), tree)
    given = tree / "trading" if off == "inside" else tmp_path
    done, _ = drill(backup_dir=given, report_dir=reports)
    listed = atb_inproc("db", "list", env={"BACKUP_DIR": str(given)})
    [warned] = listed.stderr.splitlines()
    how = "BACKUP_DIR points inside it" if off == "inside" else \
        "backups are filed one level below BACKUP_DIR"
    hint = f"{tree} looks like the real backup tree ({how}): point BACKUP_DIR there"
    assert warned.endswith(f"WARNING {hint}"), warned
    assert (done.returncode, done.stderr, done.stdout) == (2, f"atb: error: {hint}\n", "")
    assert not reports.exists()


def test_a_database_drilled_before_whose_directory_is_gone_fails_recorded(
        tmp_path: Path) -> None:
    """Review item 3: `--database X` where the tree has no X/ but the ledger holds a drill of
    X is the loss the drill exists to catch: a FAIL, reported and recorded, saying what is
    true (no directory; what the tree does hold). X/ there but empty says that instead."""
    from backup_core.store import ledger

    tree, reports = tmp_path / "backups", tmp_path / "r"
    (tree / "shop" / "2026" / "11" / "30").mkdir(parents=True)
    (tree / "shop" / "2026" / "11" / "30" / "backup-20261130T010203Z.dump").write_bytes(b"x")
    ledger.append(reports, {"database": "gone", "verdict": "PASS"}, reports={})
    done, result = drill("--database", "gone", backup_dir=tree, report_dir=reports)
    assert (done.returncode, result["verdict"]) == (1, "FAIL"), done.stderr
    assert result["backup"]["selection_error"] == (
        "no backup of database gone: the tree has no directory gone/ for it (the tree holds "
        f"backups of shop) (looked in {tree})")
    records = [json.loads(x) for x in ledger.ledger_path(reports).read_text().splitlines()]
    assert [(r["database"], r["verdict"]) for r in records] == [("gone", "PASS"),
                                                                ("gone", "FAIL")]
    (tree / "gone").mkdir()
    done, result = drill("--database", "gone", backup_dir=tree, report_dir=reports)
    assert (done.returncode, result["backup"]["selection_error"]) == (
        1, "no backup of database gone: the directory gone/ holds no backup of it (the tree "
           f"holds backups of shop) (looked in {tree})")


@pytest.mark.parametrize("broken", ["syntax", "import"])
def test_a_check_file_that_cannot_be_collected_is_exit_2_naming_it(
        tmp_path: Path, broken: str) -> None:
    """Item 5: a check file with a syntax error (seen before the drill's child starts) or an
    import that fails (seen at collection, before any restore): exit 2 and one line naming
    the file and the error; no report, no ledger record."""
    tree, reports, bc = tmp_path / "backups", tmp_path / "reports", tmp_path / "bc"
    tree.mkdir()
    bc.mkdir()
    bad = bc / "test_bad.py"
    bad.write_text("def test_x(:\n" if broken == "syntax" else
                   "import atb_no_such_module\n\ndef test_x():\n    pass\n")
    done, _ = drill("--checks", str(bc), backup_dir=tree, report_dir=reports)
    expected = (f"atb: error: check file {bad} cannot be collected: SyntaxError: invalid "
                "syntax (line 1)\n" if broken == "syntax" else
                f"atb: error: check file {bad} "
                "cannot be collected: ModuleNotFoundError: No module named "
                "'atb_no_such_module'\n")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines()[-1:] == [expected.rstrip("\n")]
    assert not reports.exists() or sorted(reports.rglob("*")) == []


@pytest.mark.parametrize("broken", ["syntax", "import"])
def test_a_conftest_where_the_drill_runs_that_cannot_be_imported_is_exit_2_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    """N5: the project's conftest.py in the directory the drill runs from is loaded by design
    (its fixtures serve your checks, README); one that cannot be imported is exit 2 and one
    line naming it and its error, as a check file's is: no report, no ledger record."""
    tree, reports = tmp_path / "backups", tmp_path / "reports"
    tree.mkdir()
    bad = tmp_path / "conftest.py"
    bad.write_text("def x(:\n" if broken == "syntax" else "import atb_no_such_module\n")
    monkeypatch.chdir(tmp_path)
    done, _ = drill(backup_dir=tree, report_dir=reports)
    why = ("SyntaxError: invalid syntax (line 1)" if broken == "syntax" else
           "ModuleNotFoundError: No module named 'atb_no_such_module'")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines()[-1:] == [f"atb: error: conftest {bad} cannot be "
                                             f"imported: {why}"]
    assert not reports.exists() or sorted(reports.rglob("*")) == []


def test_a_check_asking_for_a_fixture_that_does_not_exist_errors_naming_it(
        tmp_path: Path) -> None:
    """N8: a check of yours asking for a fixture nobody defines is an error whose message
    names the fixture, the same one line in the terminal, the JSON, Markdown and HTML
    reports (it was the repr of pytest's exception's arguments)."""
    tree, reports, bc = tmp_path / "backups", tmp_path / "reports", tmp_path / "bc"
    tree.mkdir()
    bc.mkdir()
    (bc / "test_mine.py").write_text("def test_needs_a_helper(no_such_fixture):\n    pass\n")
    done = atb_inproc("drill", "run", "--sandbox", "local", "--backup-dir", str(tree),
                      "--report-dir", str(reports), "--checks", str(bc))
    assert done.returncode == 1, done.stderr  # FAIL: the tree holds no backup
    said = "fixture 'no_such_fixture' not found"
    lines = done.stdout.splitlines()
    at = lines.index("  ERROR    Needs a helper")
    assert lines[at + 1] == f"           {said}"
    [result] = [json.loads(p.read_text()) for p in reports.rglob("*-drill.json")]
    [check] = [c for c in result["checks"] if c["name"] == "test_needs_a_helper"]
    assert (check["outcome"], check["message"]) == ("error", said)
    md = next(reports.rglob("*-drill.md")).read_text()
    assert f"| Needs a helper | ERROR | {said} |" in md
    assert "FixtureRequest" not in md
    html = next(reports.rglob("*-drill.html")).read_text()
    assert said.replace("'", "&#x27;") in html or said in html
    assert "FixtureRequest for" not in html


def test_a_drill_from_the_repository_names_the_object_its_hashes_and_the_pick(
        object_store: ObjectStore, pg15: Cluster, tmp_path: Path) -> None:
    """Item 4: `drill run --repo` without --backup: every report (JSON, Markdown, HTML) and
    the ledger record name the repository's object, its stored and plain hashes and the
    random pick, never the private download path; the manifest's hash is in the ledger."""
    source = make_database(pg15, rows=20)
    tree = tmp_path / "b"
    made = atb_inproc("db", "backup", "--backup-dir", str(tree), "--json", url=source)
    assert made.returncode == 0, made.stderr
    dump = Path(json.loads(made.stdout)["path"])
    repo = f"s3://{object_store.bucket}/mishap-{uuid.uuid4().hex[:8]}"
    env = object_store.env()
    pushed = atb_inproc("db", "push", "--backup-dir", str(tree), "--repo", repo, env=env)
    assert pushed.returncode == 0, pushed.stderr
    reports = tmp_path / "reports"
    done = atb_inproc("drill", "run", "--repo", repo, "--sandbox", "local", "--seed", "7",
                      "--database", source.dbname, "--report-dir", str(reports), "--json",
                      env=env)
    assert done.returncode == 1, done.stdout + done.stderr  # FAIL: it has no heartbeat
    key = str(dump.relative_to(tree))
    out = json.loads(done.stdout)
    plain = json.loads(manifest_path(dump).read_text())["sha256"]
    stored = out["offsite"]["stored sha256"]
    assert out["backup"]["path"] == f"{repo}/{key}"
    assert out["backup"]["selection"] == (f"random among 1 complete backup of the last 90 "
                                          f"days in {repo} (seed 7)")
    assert {k: v for k, v in out["backup"]["origin"].items()
            if k not in ("fetch/verify", "manifest sha256")} == {
        "repository": repo, "object": key, "stored sha256": stored, "plain sha256": plain,
        "encryption": "none"}
    report_json = json.loads(Path(out["reports"]["json"]).read_text())
    assert report_json["backup"] == out["backup"]
    md, html = (Path(out["reports"][k]).read_text() for k in ("md", "html"))
    assert f"{repo}/{key}" in html and f"{repo}/{key}".replace("://", "\\://") in md  # inert
    for text in (md, html):
        assert stored in text and plain in text
        assert "atb-fetch-" not in text and "given with --backup" not in text
    [record] = [json.loads(line) for line in (reports / "ledger.ndjson").read_text()
                .splitlines()]
    assert record["backup"]["path"] == f"{repo}/{key}"
    assert record["backup"]["manifest_sha256"] == out["backup"]["origin"]["manifest sha256"]
    assert len(record["backup"]["manifest_sha256"]) == 64
    assert record["backup"]["origin"]["object"] == key
    assert (record["selection"], record["seed"]) == (out["backup"]["selection"], 7)


def test_ctrl_c_during_a_drill_reports_it_interrupted_and_records_it(
        history: tuple[ConnInfo, Path], tmp_path: Path) -> None:
    """Item 7: Ctrl-C (SIGINT to the process group, as a terminal sends it) during the
    integration command: exit 130; the report says the drill was interrupted (INCOMPLETE,
    the check not reached "not run: interrupted", the RTO not measured), the ledger has its
    record naming the same report, and no phase is said "done" after the interrupt. N4: an
    impatient second Ctrl-C 0.3 s later (while the drill tears down and reports) does not
    leave the reports without their ledger record."""
    backup = oldest(history[1])
    code, out, err = interrupt_drill(
        ["--sandbox", "local", "--backup", str(backup), "--backup-dir", str(history[1]),
         "--no-record", "--json", "--exclude", "heartbeat_is_fresh_at_backup_time",
         "--schedule", "1d"],
        tmp_path, lambda: None, again_after=0.3)
    assert code == 130, out + err
    assert "Traceback" not in err
    result = json.loads(out)
    assert (result["verdict"], result["interrupted"]) == ("INCOMPLETE", True)
    assert result["not_run"]["test_application_integration_suite_passes"] == \
        "not run: interrupted"
    assert result["rto"]["failed_at"] == "interrupted" and result["rto"]["measured_s"] is None
    assert not any("deselected" in why for why in result["not_run"].values())
    report = Path(result["reports"]["md"]).read_text()
    assert "| Interrupted | the drill was stopped (Ctrl-C or SIGINT)" in report
    assert "not measured: the drill was interrupted" in report
    [record] = [json.loads(line) for line in (tmp_path / "r" / "ledger.ndjson").read_text()
                .splitlines()]
    assert (record["verdict"], record["backup"]["path"]) == ("INCOMPLETE", str(backup))
    assert (record["selection"], record["seed"]) == (f"given with --backup {backup}",
                                                     result["seed"])
    assert set(record["reports"]) == {"html", "json", "md"}
    after = err[err.index("integration..."):]
    assert "integration interrupted after" in after and "integration done" not in after


def test_ctrl_c_during_prove_detection_drops_the_detection_and_records_the_drill(
        history: tuple[ConnInfo, Path], tmp_path: Path) -> None:
    """Review of N4: Ctrl-C while the damaged copy is drilled (`--prove-detection`), before
    any check has caught the damage, stops that run and drops it: never "damage not caught",
    so the drill is not turned into a FAIL (it was). Its record is written all the same,
    with no detection; exit 130. A second Ctrl-C meanwhile says, in one line, that the
    record is being finished."""
    backup = oldest(history[1])
    code, out, err = interrupt_drill(
        ["--sandbox", "local", "--backup", str(backup), "--backup-dir", str(history[1]),
         "--no-record", "--exclude", "heartbeat_is_fresh_at_backup_time", "--schedule", "1d",
         "--prove-detection",  # and the checks that would catch the damage before the
         *[a for name in ("every_table_has_its_backup_time_row_count",  # interrupt does
                          "every_table_has_its_backup_time_content",
                          "backups_keep_to_the_schedule") for a in ("--exclude", name)]],
        tmp_path, lambda: None, again_after=0.3, in_run=2)
    [record] = [json.loads(line) for line in (tmp_path / "r" / "ledger.ndjson").read_text()
                .splitlines()]
    assert (record["verdict"], record["detection"], record["backup"]["path"]) == (
        "INCOMPLETE", None, str(backup)), record
    [report] = [json.loads(p.read_text()) for p in (tmp_path / "r").rglob("*-drill.json")]
    assert (report["verdict"], report["interrupted"]) == ("INCOMPLETE", False)
    assert report["evidence"]["detection"] is None
    assert code == 130, out + err
    assert "Traceback" not in err
    assert "atb: finishing the drill's record; interrupt again to abandon it\n" in err
    assert err.endswith("atb: the drill of the damaged copy was interrupted: the drill is "
                        "recorded without it\n\natb: error: interrupted\n")


def test_a_third_ctrl_c_abandons_the_drill_at_once(
        history: tuple[ConnInfo, Path], tmp_path: Path, sandbox_tmp: Path) -> None:
    """Review of N4: three Ctrl-C in a row, as a user whose drill's teardown seems to hang
    sends them. The second says the record is being finished; the third kills the drill's
    child at once (its namespace with it: nothing of the drill is left running), says the
    record was not written, and exits 130: no SIGKILL is needed from the user."""
    backup = oldest(history[1])
    t0 = time.monotonic()
    code, out, err = interrupt_drill(
        ["--sandbox", "local", "--backup", str(backup), "--backup-dir", str(history[1]),
         "--no-record", "--exclude", "heartbeat_is_fresh_at_backup_time"],
        tmp_path, lambda: None, again_after=0.1, times=3,
        env={"TMPDIR": str(sandbox_tmp)})  # what the killed sandbox leaves: not in /tmp
    assert (code, out) == (130, ""), err
    assert time.monotonic() - t0 < 100  # the integration command sleeps 120 s
    assert err.endswith("atb: finishing the drill's record; interrupt again to abandon it\n"
                        "atb: error: abandoned: the drill's ledger record was not written\n")
    assert not (tmp_path / "r" / "ledger.ndjson").exists()
    marker = str(tmp_path / "integration-started")
    for _ in range(50):
        if not _holding(marker):
            break
        time.sleep(0.1)
    assert _holding(marker) == []


def _holding(text: str) -> list[int]:
    """The processes whose command line holds `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_kill_9_of_a_drill_ends_its_child_unreported_and_the_next_reaps_its_files(
        history: tuple[ConnInfo, Path], tmp_path: Path, sandbox_tmp: Path) -> None:
    """Item 8: `kill -9` of `atb drill run` during the drill: its child (inside its
    namespaces) hears of it, tears its sandbox down and ends without writing a report; the
    drill's private temporary directories stay until `atb doctor` (or the next drill)
    removes them, as it does killed sandboxes."""
    scratch, reports, marker = sandbox_tmp, tmp_path / "r", tmp_path / "started"
    slow = f"{sys.executable} -c \"import pathlib, time; pathlib.Path('{marker}').touch(); " \
           "time.sleep(120)\""
    env = {**{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BACKUP_DIR")},
           "TMPDIR": str(scratch), "DATABASE_URL": history[0].secret_url}
    out = tmp_path / "out.txt"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "drills.cli", "drill", "run", "--sandbox", "local",
             "--backup", str(oldest(history[1])), "--backup-dir", str(history[1]),
             "--no-record", "--integration-cmd", slow, "--report-dir", str(reports)],
            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists() and proc.poll() is None, out.read_text()[-3000:]
    left = {p.name.split("-")[1] for p in scratch.iterdir()}
    assert {"drill", "observer"} <= left, left  # isolated: production seen through one
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while _holding(str(scratch)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _holding(str(scratch)) == [], "the drill's child outlived atb"
    assert sorted(p.name for p in reports.rglob("*") if p.is_file()) == []
    assert sorted(p.name.split("-")[1] for p in scratch.iterdir()) == ["drill", "observer"], \
        sorted(p.name for p in scratch.iterdir())
    doctor = atb("doctor", env={"TMPDIR": str(scratch)})
    assert doctor.returncode == 0, doctor.stderr
    assert doctor.stderr.count("the temporary directory of a drill that is gone") == 2
    assert list(scratch.iterdir()) == []
