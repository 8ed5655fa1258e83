"""The drill ledger without a server: `atb audit verify` on sound and tampered ledgers (each
with its exit code and the record it names), two processes appending at once, and the
evidence bundle checked by `atb audit verify-bundle` and by hand with openssl and sha256sum."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backup_core.store import ledger
from backup_core.store.signing import load_signer
from tests.helpers import atb_inproc

pytestmark = pytest.mark.fast
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_key(path: Path) -> Path:
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def fill(report_dir: Path, n: int, *, key: Path | None) -> list[Path]:
    """`n` drills' worth of reports and records, a day apart."""
    signer = load_signer(key) if key else None
    made = []
    for i in range(n):
        folder = report_dir / "app"
        folder.mkdir(parents=True, exist_ok=True)
        html = folder / f"2026110{i + 1}T120000Z-drill.html"
        md, js = html.with_suffix(".md"), html.with_suffix(".json")
        html.write_text(f"<p>drill {i}</p>")
        md.write_text(f"# drill {i}\n")
        js.write_text(json.dumps({"database": "app", "finished_at": f"day {i}",
                                  "evidence": {}}))
        ledger.append(report_dir, {"database": "app", "verdict": "PASS", "rto_s": 1.5 + i},
                      reports={"html": html, "md": md, "json": js}, signer=signer,
                      now=T0 + timedelta(days=i))
        made.append(html)
    return made


def verify(report_dir: Path, *extra: str) -> tuple[int, dict, str]:
    done = atb_inproc("audit", "verify", "--report-dir", str(report_dir), "--json", *extra)
    return done.returncode, json.loads(done.stdout), done.stderr


def lines(report_dir: Path) -> list[bytes]:
    return ledger.ledger_path(report_dir).read_bytes().splitlines(keepends=True)


def write(report_dir: Path, parts: list[bytes]) -> None:
    ledger.ledger_path(report_dir).write_bytes(b"".join(parts))


def test_a_sound_signed_ledger_verifies_with_its_count(tmp_path: Path) -> None:
    key = make_key(tmp_path / "k.pem")
    fill(tmp_path / "r", 3, key=key)
    code, out, _ = verify(tmp_path / "r")
    fp = load_signer(key).public.fingerprint
    assert (code, out["ok"], out["records"], out["signed"], out["keys"]) == (0, True, 3, 3, [fp])
    text = atb_inproc("audit", "verify", "--report-dir", str(tmp_path / "r"))
    assert text.returncode == 0
    assert text.stdout.startswith(f"OK: 3 records verified (3 signed; signed by {fp})")
    first = json.loads(lines(tmp_path / "r")[0])
    assert first["prev"] == ledger.GENESIS and first["seq"] == 1
    assert first["reports"]["html"]["path"] == "app/20261101T120000Z-drill.html"


def _edit_report(d: Path) -> None:
    (d / "app" / "20261102T120000Z-drill.html").write_text("<p>drill 1, better</p>")


def _edit_record(d: Path) -> None:
    parts = lines(d)
    parts[1] = parts[1].replace(b'"verdict":"PASS"', b'"verdict":"FAIL"')
    write(d, parts)


def _edit_and_rehash(d: Path) -> None:
    """A forger who recomputes the edited record's own hash: the next record's link breaks."""
    parts = lines(d)
    record = json.loads(parts[1])
    record["rto_s"] = 0.1
    record.pop("sig")
    record.pop("key")
    record["hash"] = ledger.record_hash(record)
    parts[1] = ledger.canonical(record) + b"\n"
    write(d, parts)


def _reorder(d: Path) -> None:
    parts = lines(d)
    write(d, [parts[0], parts[2], parts[1]])


def _delete(d: Path) -> None:
    parts = lines(d)
    write(d, [parts[0], parts[2]])


def _wrong_signature(d: Path) -> None:
    """Record 2 signed again with another key that claims the ledger key's fingerprint."""
    parts = lines(d)
    record = json.loads(parts[1])
    other = load_signer(make_key(d.parent / "other.pem"))
    import base64
    record["sig"] = base64.b64encode(other.sign(ledger.canonical(ledger.body(record)))).decode()
    parts[1] = ledger.canonical(record) + b"\n"
    write(d, parts)


def _delete_last(d: Path) -> None:
    write(d, lines(d)[:2])


def _torn(d: Path) -> None:
    parts = lines(d)
    write(d, [*parts[:2], parts[2][:40]])


@pytest.mark.parametrize(("tamper", "line", "reason"), [
    (_edit_report, 2, "its html report app/20261102T120000Z-drill.html was changed"),
    (_edit_record, 2, "edited: its content no longer matches its recorded hash"),
    (_edit_and_rehash, 2, "is not signed, but the ledger is"),
    (_reorder, 2, "numbered 3 at position 2"),
    (_delete, 2, "numbered 3 at position 2"),
    (_wrong_signature, 2, "its signature does not verify with key"),
    (_torn, 3, "torn: the last append was cut short"),
    (_delete_last, 3, "missing: the report app/20261103T120000Z-drill.json is in no record"),
])
def test_tampering_exits_1_naming_the_first_failing_record(
        tmp_path: Path, tamper: Callable[[Path], None], line: int, reason: str) -> None:
    d = tmp_path / "r"
    fill(d, 3, key=make_key(tmp_path / "k.pem"))
    tamper(d)
    code, out, _ = verify(d)
    assert code == 1
    assert out["ok"] is False
    assert out["failure"]["line"] == line
    assert out["records"] == line - 1
    assert reason in out["failure"]["reason"]
    text = atb_inproc("audit", "verify", "--report-dir", str(d))
    assert text.returncode == 1
    assert text.stdout.startswith(f"FAIL: record {line}" + ("" if tamper is _torn else " ("))


def test_unsigned_ledger_edit_and_rehash_is_caught_by_the_next_record(tmp_path: Path) -> None:
    d = tmp_path / "r"
    fill(d, 3, key=None)
    parts = lines(d)
    record = json.loads(parts[1])
    record["verdict"] = "FAIL"
    record["hash"] = ledger.record_hash(record)
    parts[1] = ledger.canonical(record) + b"\n"
    write(d, parts)
    code, out, _ = verify(d)
    assert (code, out["failure"]["line"], out["records"]) == (1, 3, 2)
    assert out["failure"]["reason"].startswith("does not follow the record before it")


def test_a_pinned_key_refuses_a_ledger_resigned_by_another(tmp_path: Path) -> None:
    """An attacker who rewrites the whole ledger with a key of their own (and puts that key
    beside it) passes an unpinned check, but not one given the real public key."""
    d = tmp_path / "r"
    real, forged = make_key(tmp_path / "real.pem"), make_key(tmp_path / "forged.pem")
    fill(d, 2, key=forged)
    pub = tmp_path / "real.pub"
    pub.write_bytes(load_signer(real).public.pem)
    assert verify(d)[0] == 0
    code, out, _ = verify(d, "--public-key", str(pub))
    assert (code, out["failure"]["line"]) == (1, 1)
    assert "which is not a key to trust here" in out["failure"]["reason"]


def test_no_ledger_fails_and_a_missing_directory_is_bad_usage(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    code, out, _ = verify(tmp_path / "r")
    assert (code, out["failure"]["line"]) == (1, 0)
    assert out["failure"]["reason"].startswith("no ledger at ")
    done = atb_inproc("audit", "verify", "--report-dir", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert done.stderr == f"atb: error: --report-dir {tmp_path / 'nowhere'} is not a directory\n"


def test_an_append_after_a_torn_line_is_refused_and_adds_nothing(tmp_path: Path) -> None:
    d = tmp_path / "r"
    fill(d, 2, key=None)
    _torn_second = lines(d)
    write(d, [_torn_second[0], _torn_second[1][:30]])
    before = ledger.ledger_path(d).read_bytes()
    with pytest.raises(ledger.LedgerError, match="ends in a torn record"):
        fill(d, 1, key=None)
    assert ledger.ledger_path(d).read_bytes() == before


APPENDER = """
import sys
from pathlib import Path
from backup_core.store import ledger
d = Path(sys.argv[1])
for i in range(int(sys.argv[2])):
    f = d / f"{sys.argv[3]}-{i}.md"
    f.write_text(sys.argv[3] + str(i))
    ledger.append(d, {"database": sys.argv[3], "verdict": "PASS"}, reports={"md": f})
"""


def test_two_processes_appending_at_once_keep_one_valid_chain(tmp_path: Path) -> None:
    d = tmp_path / "r"
    d.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(d), "40", name])
             for name in ("a", "b")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    code, out, _ = verify(d)
    assert (code, out["records"]) == (0, 80)
    records = [json.loads(raw) for raw in lines(d)]
    assert [r["seq"] for r in records] == list(range(1, 81))
    assert sorted(r["database"] for r in records) == ["a"] * 40 + ["b"] * 40


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, Path, Path]:
    d = tmp_path / "r"
    key = make_key(tmp_path / "k.pem")
    fill(d, 4, key=key)
    out = tmp_path / "evidence.tar.gz"
    done = atb_inproc("audit", "export", "--report-dir", str(d), "--since", "20261102T000000Z",
                      "--until", "2026-11-03T23:00:00Z", "--out", str(out), "--json",
                      env={"ATB_SIGNING_KEY_FILE": str(key)})
    assert done.returncode == 0, done.stderr
    exported = json.loads(done.stdout)
    assert (exported["records"], exported["reports"]) == (2, 6)
    assert "SOC 2 A1.3: recovery plan procedures supporting system recovery are tested." \
        in exported["controls"]
    return out, key, tmp_path


def test_the_bundle_verifies_with_atb_and_by_hand_with_openssl_and_sha256sum(
        bundle: tuple[Path, Path, Path]) -> None:
    out, key, tmp = bundle
    done = atb_inproc("audit", "verify-bundle", str(out))
    fp = load_signer(key).public.fingerprint
    assert done.returncode == 0, done.stdout
    assert done.stdout == f"OK: {out}: 2 records and 6 reports verified, signed by key {fp}\n"
    with tarfile.open(out) as tar:
        tar.extractall(tmp / "x", filter="data")
    root = tmp / "x" / "evidence"
    readme = (root / "README.txt").read_text()
    assert "Drill records 2 to 3 (2 records)" in readme
    assert "PCI DSS v4.0 12.10.2" in readme and "ISO/IEC 27001:2022 A.8.13" in readme

    def sh(cmd: str) -> str:
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=root,
                             capture_output=True, text=True, check=False)
        assert res.returncode == 0, (cmd, res.stdout, res.stderr)
        return res.stdout

    # the README's steps, as a person runs them
    assert sh("openssl pkey -pubin -in ledger-key.pem -outform DER | sha256sum") \
        == f"{fp}  -\n"
    assert sh("openssl pkeyutl -verify -pubin -inkey ledger-key.pem -rawin -in SHA256SUMS "
              "-sigfile SHA256SUMS.sig").strip() == "Signature Verified Successfully"
    assert sh("sha256sum -c SHA256SUMS").count(": OK\n") == 14
    seqs = sh("jq -r '[.seq, .prev, .hash] | @tsv' ledger.ndjson").splitlines()
    hashes = [sh(f"sha256sum records/{n}.json").split()[0] for n in (2, 3)]
    assert [s.split("\t")[2] for s in seqs] == hashes
    assert seqs[1].split("\t")[1] == hashes[0]
    for n in (2, 3):
        assert sh(f"openssl pkeyutl -verify -pubin -inkey keys/{fp}.pem -rawin "
                  f"-in records/{n}.json -sigfile records/{n}.sig").strip() \
            == "Signature Verified Successfully"
    assert sh("jq -r '.reports[] | \"\\(.sha256)  reports/\\(.path)\"' ledger.ndjson "
              "| sha256sum -c").count(": OK\n") == 6
    # and a changed report is what sha256sum and openssl then report
    (root / "reports" / "app" / "20261102T120000Z-drill.md").write_text("# edited\n")
    res = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=root,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 1
    assert res.stdout == "reports/app/20261102T120000Z-drill.md: FAILED\n"


def test_a_changed_bundle_fails_verify_bundle(bundle: tuple[Path, Path, Path]) -> None:
    out, _, tmp = bundle
    with tarfile.open(out) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore
    forged = tmp / "forged.tar.gz"
    import io
    with tarfile.open(forged, "w:gz") as tar:
        for m, data in members:
            if m.name.endswith("20261103T120000Z-drill.html"):
                data = b"<p>all fine</p>"
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    done = atb_inproc("audit", "verify-bundle", str(forged), "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["failure"] == (
        "reports/app/20261103T120000Z-drill.html does not match its SHA-256 in SHA256SUMS: "
        "it was changed")


def test_export_needs_the_signing_key_and_a_sound_ledger(tmp_path: Path) -> None:
    d = tmp_path / "r"
    key = make_key(tmp_path / "k.pem")
    fill(d, 2, key=key)
    done = atb_inproc("audit", "export", "--report-dir", str(d), "--out",
                      str(tmp_path / "e.tar.gz"))
    assert done.returncode == 2
    assert "ATB_SIGNING_KEY_FILE" in done.stderr
    _edit_report(d)
    done = atb_inproc("audit", "export", "--report-dir", str(d), "--out",
                      str(tmp_path / "e.tar.gz"), env={"ATB_SIGNING_KEY_FILE": str(key)})
    assert done.returncode == 1
    assert done.stderr.startswith("atb: error: the ledger does not verify, so no evidence is "
                                  "exported from it: record 2 (")
    assert not (tmp_path / "e.tar.gz").exists()


def test_a_signing_key_that_is_not_ed25519_is_refused_before_the_drill_starts(
        tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    done = atb_inproc("drill", "run", "--backup-dir", str(tmp_path), "--report-dir",
                      str(tmp_path / "r"), env={"ATB_SIGNING_KEY_FILE": str(bad)})
    assert done.returncode == 2
    assert done.stderr == (f"atb: error: ATB_SIGNING_KEY_FILE: {bad} is not an unencrypted PEM "
                           "private key (make one with: openssl genpkey -algorithm ed25519)\n")
    assert not (tmp_path / "r").exists()


def test_prove_detection_is_refused_for_a_point_in_time_drill(tmp_path: Path) -> None:
    done = atb_inproc("drill", "run", "--source", "pgbackrest", "--stanza", "main",
                      "--prove-detection", "--report-dir", str(tmp_path / "r"))
    assert done.returncode == 2
    assert done.stderr == ("atb: error: --prove-detection damages a copy of a pg_dump backup: "
                           "it does not apply to --source pgbackrest\n")
    assert not (tmp_path / "r").exists()


def test_a_detection_run_that_passes_makes_the_whole_drill_fail(tmp_path: Path) -> None:
    from dataclasses import replace

    from drills import ledger as drill_ledger
    from drills import report
    from drills.result import DetectionFacts, DrillResult

    folder = tmp_path / "app"
    folder.mkdir()
    paths = {k: str(folder / f"20261101T120000Z-drill.{k}") for k in ("html", "json", "md")}
    passed = replace(DrillResult.from_dict({"verdict": "PASS", "database": "app"}),
                     reports=paths)
    Path(paths["html"]).write_text("<html>" + report.summary_html(passed) + "</html>")
    blind = DetectionFacts(caught=False, damage=("one row removed from public.t",),
                           verdict="PASS")
    result = drill_ledger.annotate(passed, signer=None, detection=blind)
    assert result.verdict == "FAIL"
    assert json.loads(Path(paths["json"]).read_text())["verdict"] == "FAIL"
    md = Path(paths["md"]).read_text()
    assert md.startswith("# Restore drill: app, : **FAIL**")
    assert ("| Detection | NOT CAUGHT: the drill passed a damaged copy (damage: one row removed "
            "from public.t) |") in md
    html = Path(paths["html"]).read_text()
    assert "Verdict: FAIL</div>" in html and "Verdict: PASS" not in html
    assert "NOT CAUGHT: the drill passed a damaged copy" in html


def test_verify_bundle_with_a_pinned_key_refuses_a_bundle_signed_by_another(
        bundle: tuple[Path, Path, Path]) -> None:
    out, key, tmp = bundle
    other = tmp / "other.pub"
    other.write_bytes(load_signer(make_key(tmp / "other.pem")).public.pem)
    done = atb_inproc("audit", "verify-bundle", str(out), "--public-key", str(other))
    assert done.returncode == 1
    fp = load_signer(key).public.fingerprint
    assert done.stdout == (f"FAIL: {out}: the bundle is signed by key {fp}, not by a key given "
                           "to trust\n")
    mine = tmp / "mine.pub"
    mine.write_bytes(load_signer(key).public.pem)
    assert atb_inproc("audit", "verify-bundle", str(out), "--public-key", str(mine)).returncode \
        == 0
