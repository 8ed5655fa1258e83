"""One real drill by random pick with `--prove-detection` and a signing key: the damaged copy
of the backup picked is caught by
the checks that compare what came back with the manifest, the reports show the detection,
the key and the controls, and the drill's signed record is in a ledger that verifies."""

from __future__ import annotations

import json
from pathlib import Path

from backup_core.store import ledger
from backup_core.store.ledger import file_sha256
from backup_core.store.signing import load_signer
from backup_core.tools import db
from backup_core.tools.cluster import Cluster
from tests.conftest import make_database
from tests.helpers import atb_inproc, drill
from tests.integration.test_ledger_audit import make_key


def test_prove_detection_catches_the_damaged_copy_and_the_drill_is_recorded(
        pg15: Cluster, tmp_path: Path, sandbox_tmp: Path) -> None:
    source = make_database(pg15, rows=50)
    with db.connect(source, autocommit=True) as conn:
        conn.execute("INSERT INTO system_events(type, message) VALUES ('TEST', 'Heartbeat')")
    backups, reports = tmp_path / "backups", tmp_path / "reports"
    done = atb_inproc("db", "backup", "--backup-dir", str(backups), "--json", url=source)
    assert done.returncode == 0, done.stderr
    dump = Path(json.loads(done.stdout)["path"])
    before = file_sha256(dump)
    key = make_key(tmp_path / "signing.pem")
    fp = load_signer(key).public.fingerprint
    # by random pick, as cron drills (the damaged copy is of the backup picked)
    done, result = drill("--seed", "5", "--prove-detection", backup_dir=backups,
                         report_dir=reports, url=source,
                         env={"TMPDIR": str(sandbox_tmp), "ATB_SIGNING_KEY_FILE": str(key)})
    assert (result["backup"]["path"], result["backup"]["selection"]) == (
        str(dump), "random among 1 complete backup of the last 90 days (seed 5)")
    # no Alembic config and no integration command: the real drill is INCOMPLETE (exit 10)
    assert done.returncode == 10, (result.get("evidence"), done.stderr)
    assert result["verdict"] == "INCOMPLETE"
    detection = result["evidence"]["detection"]
    assert detection["caught"] is True
    assert detection["verdict"] == "FAIL"
    assert detection["damage"] == ["one row removed from public.orders",
                                   "one value of public.orders.price changed"]
    assert set(detection["caught_by"]) == {"test_every_table_has_its_backup_time_row_count",
                                           "test_every_table_has_its_backup_time_content"}
    assert result["evidence"]["key_fingerprint"] == fp
    assert file_sha256(dump) == before  # the drilled backup itself is untouched
    md = Path(result["reports"]["md"]).read_text()
    assert ("| Detection | caught by Every table has its backup time row count; Every table has "
            "its backup time content (damage: one row removed from public.orders; one value of "
            "public.orders.price changed) |") in md
    assert f"| Ledger key | Ed25519 SHA-256 {fp} |" in md
    assert "| Control | SOC 2 A1.3: recovery plan procedures supporting system recovery are " \
           "tested. |" in md
    html = Path(result["reports"]["html"]).read_text()
    # the child wrote the key's row; the parent added only the detection's, each once
    assert (html.count(f"Ed25519 SHA-256 {fp}"), html.count(">Detection</th>")) == (1, 1)
    records = [json.loads(x) for x in ledger.ledger_path(reports).read_text().splitlines()]
    assert len(records) == 1
    rec = records[0]
    assert (rec["verdict"], rec["database"], rec["source"], rec["key"]) == (
        "INCOMPLETE", source.dbname, "dump", fp)
    assert rec["backup"]["sha256"] == before
    assert rec["detection"]["caught"] is True
    assert set(rec["reports"]) == {"html", "json", "md"}
    assert rec["reports"]["md"]["sha256"] == file_sha256(Path(result["reports"]["md"]))
    check = atb_inproc("audit", "verify", "--report-dir", str(reports))
    assert check.returncode == 0, check.stdout
    assert check.stdout.startswith(f"OK: 1 records verified (1 signed; signed by {fp})")
