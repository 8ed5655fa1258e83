"""The ledger's pure parts: the canonical form, the chain, signatures, the walk over lines,
the bundle's sums, and the report rows the ledger adds."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backup_core.store import evidence, ledger
from backup_core.store.ledger import GENESIS
from backup_core.store.signing import PublicKey, Signer
from backup_core.tools import isolation
from drills import report
from drills.result import DetectionFacts, DrillResult, EvidenceFacts

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def signer() -> Signer:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return Signer(pem, PublicKey(pub))


def chain(n: int, s: Signer | None) -> list[bytes]:
    out, prev = [], GENESIS
    for i in range(1, n + 1):
        r = ledger.make_record({"database": "app", "verdict": "PASS"}, seq=i, prev=prev,
                               at=T0 + timedelta(hours=i), signer=s)
        out.append(ledger.canonical(r))
        prev = r["hash"]
    return out


def test_canonical_form_is_sorted_compact_utf8() -> None:
    assert ledger.canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_a_record_hash_covers_everything_but_hash_and_sig() -> None:
    r = ledger.make_record({"verdict": "PASS"}, seq=1, prev=GENESIS, at=T0, signer=None)
    assert r["hash"] == ledger.record_hash({**r, "hash": "x", "sig": "y"})
    assert r["hash"] != ledger.record_hash({**r, "verdict": "FAIL"})
    assert (r["seq"], r["prev"], r["time"]) == (1, GENESIS, "2026-11-01T00:00:00+00:00")


def test_a_signature_verifies_only_over_the_signed_bytes() -> None:
    s = signer()
    r = ledger.make_record({"verdict": "PASS"}, seq=1, prev=GENESIS, at=T0, signer=s)
    sig = base64.b64decode(r["sig"])
    assert r["key"] == s.public.fingerprint and len(r["key"]) == 64
    assert s.public.verifies(sig, ledger.canonical(ledger.body(r)))
    assert not s.public.verifies(sig, ledger.canonical(ledger.body({**r, "verdict": "FAIL"})))
    assert "PRIVATE" not in repr(s)


def test_a_sound_chain_walks_to_its_head() -> None:
    s = signer()
    lines = chain(3, s)
    v = ledger.walk(lines, False, keys={s.public.fingerprint: s.public}, pinned=True)
    assert (v.ok, v.records, v.signed, v.keys) == (True, 3, 3, (s.public.fingerprint,))
    assert v.head == ledger.record_hash(json.loads(lines[-1]))


@pytest.mark.parametrize(("order", "line", "reason"), [
    ((0, 2, 1), 2, "numbered 3 at position 2"),
    ((1, 0, 2), 1, "numbered 2 at position 1"),
    ((0, 2), 2, "numbered 3 at position 2"),
])
def test_reordered_or_deleted_records_name_the_first_out_of_place(
        order: tuple[int, ...], line: int, reason: str) -> None:
    lines = chain(3, None)
    v = ledger.walk([lines[i] for i in order], False, keys={}, pinned=False)
    assert v.failure is not None
    assert (v.failure.line, v.records) == (line, line - 1)
    assert v.failure.reason.startswith(reason)


def test_pinned_keys_require_every_record_signed() -> None:
    s = signer()
    v = ledger.walk(chain(2, None), False, keys={s.public.fingerprint: s.public}, pinned=True)
    assert v.failure is not None and v.failure.line == 1
    assert v.failure.reason.startswith("is not signed, but the ledger is")


def test_sums_are_sha256sum_lines_sorted_by_name() -> None:
    assert evidence.sums_text({"b": b"", "a": b"abc"}) == (
        b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  a\n"
        b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  b\n")


def test_a_records_time_is_inside_the_range_inclusive() -> None:
    r = {"time": "2026-11-02T00:00:00+00:00"}
    assert evidence.in_range(r, T0 + timedelta(days=1), T0 + timedelta(days=1))
    assert not evidence.in_range(r, T0 + timedelta(days=1, seconds=1), None)
    assert not evidence.in_range({"time": "garbage"}, None, None)


def test_the_report_shows_detection_key_and_one_line_per_control() -> None:
    base = DrillResult.from_dict({"verdict": "PASS"})
    caught = replace(base, evidence=EvidenceFacts("ab" * 32, ledger.CONTROLS, DetectionFacts(
        caught=True, damage=("one row removed from public.t",),
        caught_by=("test_every_table_has_its_backup_time_row_count",))))
    rows = report.evidence_rows(caught)
    assert rows[0] == ("Detection", "caught by Every table has its backup time row count "
                                    "(damage: one row removed from public.t)")
    assert rows[1] == ("Ledger key", f"Ed25519 SHA-256 {'ab' * 32}")
    assert [v for k, v in rows if k == "Control"] == list(ledger.CONTROLS)
    blind = replace(base, evidence=EvidenceFacts(None, (), DetectionFacts(caught=False)))
    assert report.evidence_rows(blind) == [
        ("Detection", "NOT CAUGHT: the drill passed a damaged copy (damage: -)"),
        ("Ledger key", "not signed (no ATB_SIGNING_KEY_FILE)")]
    assert report.evidence_rows(base) == []
    again = DrillResult.from_dict(json.loads(report.to_json(caught)))
    assert again.evidence == caught.evidence


def test_the_signing_key_is_hidden_from_the_drills_namespace(tmp_path: Path) -> None:
    key = tmp_path / "drill-key.pem"
    key.write_text("k")
    assert isolation.hidden_paths(env={"ATB_SIGNING_KEY_FILE": str(key)}, table="",
                                  dirs=[]) == [str(key)]
    assert isolation.hidden_paths(env={}, table="", dirs=[]) == []
