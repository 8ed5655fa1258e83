"""`atb audit ...`: check the drill ledger, and export or check an evidence bundle."""

from __future__ import annotations

import os
from pathlib import Path

import click

from backup_core.store import evidence, ledger
from backup_core.store.evidence import BundleCheck, Exported
from backup_core.store.ledger import Verification
from backup_core.store.naming import parse_stamp
from backup_core.store.signing import KEY_ENV, PublicKey, signer_from_env
from backup_core.tools.errors import ConfigError
from drills.cli import output
from drills.cli.params import EXIT_CODES, json_option
from drills.cli.publish import publish

report_dir_option = click.option(
    "--report-dir", type=click.Path(file_okay=False, path_type=Path), default="reports",
    help="The drills' report directory, whose ledger.ndjson is read.")
public_key_option = click.option(
    "--public-key", "public_keys", multiple=True, metavar="FILE",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Trust only this Ed25519 public key (PEM), and require every record to be signed "
         "by it (repeatable).  [default: the keys kept beside the ledger]")


@click.group(epilog=EXIT_CODES)
def audit() -> None:
    """Evidence for auditors: the tamper-evident drill ledger, the evidence bundle, and drill
    reports published into the audit wiki."""


@audit.command("verify", epilog=EXIT_CODES)
@report_dir_option
@public_key_option
@json_option
def audit_verify(report_dir: Path, public_keys: tuple[Path, ...], as_json: bool) -> None:
    """Re-hash every report the ledger names, walk its hash chain and check every signature.
    Exits 0 with the count of records when all hold, 1 naming the first record that fails."""
    result = ledger.verify(report_dir, public_keys=_keys(public_keys))
    output.show(result, as_json=as_json, text=verify_text)
    if not result.ok:
        raise SystemExit(1)


@audit.command("export", epilog=EXIT_CODES)
@report_dir_option
@click.option("--since", metavar="TIME", help="First record time (UTC, 20261123T230400Z or "
                                                "ISO 8601).  [default: the first record]")
@click.option("--until", metavar="TIME", help="Last record time.  [default: now]")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The bundle to write (tar.gz).")
@public_key_option
@json_option
def audit_export(report_dir: Path, since: str | None, until: str | None, out: Path,
                 public_keys: tuple[Path, ...], as_json: bool) -> None:
    """Write one signed tar.gz with the ledger records of a time range, the reports they
    name, the public keys and a README with the steps to verify it by hand. Signed with
    ATB_SIGNING_KEY_FILE; refused (exit 1) when the ledger does not verify."""
    signer = signer_from_env(os.environ)
    if signer is None:
        raise ConfigError(f"the bundle is signed: set {KEY_ENV} to the Ed25519 key "
                          "(PEM) that signs the ledger")
    result = evidence.export(report_dir, out, since=parse_stamp(since) if since else None,
                             until=parse_stamp(until) if until else None, signer=signer,
                             public_keys=_keys(public_keys))
    output.show(result, as_json=as_json, text=export_text)


@audit.command("verify-bundle", epilog=EXIT_CODES)
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@public_key_option
@json_option
def audit_verify_bundle(bundle: Path, public_keys: tuple[Path, ...], as_json: bool) -> None:
    """Check an evidence bundle as its README says to by hand: its signature, every file's
    SHA-256, its records' chain and signatures, and their reports. Exits 1 on any failure."""
    result = evidence.verify_bundle(bundle, public_keys=_keys(public_keys))
    output.show(result, as_json=as_json, text=bundle_text)
    if not result.ok:
        raise SystemExit(1)


def _keys(paths: tuple[Path, ...]) -> tuple[PublicKey, ...]:
    return tuple(PublicKey.read(p) for p in paths)


def verify_text(v: Verification) -> str:
    if v.failure is not None:
        return (f"FAIL: {v.failure}\n{v.records} records before it verified "
                f"({v.ledger})")
    keys = f"; signed by {', '.join(v.keys)}" if v.keys else "; not signed"
    return (f"OK: {v.records} records verified ({v.signed} signed{keys}); head {v.head}\n"
            f"ledger: {v.ledger}")


def export_text(e: Exported) -> str:
    lines = [f"wrote {e.path}: {e.records} records, {e.reports} reports",
             f"signed by key {e.key_fingerprint}", f"head {e.head}", "controls served:"]
    return "\n".join(lines + [f"  {c}" for c in e.controls])


def bundle_text(b: BundleCheck) -> str:
    if b.failure is not None:
        return f"FAIL: {b.path}: {b.failure}"
    return (f"OK: {b.path}: {b.records} records and {b.reports} reports verified, signed by "
            f"key {b.key_fingerprint}")


audit.add_command(publish)
