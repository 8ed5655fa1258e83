"""The repository's pure parts: its URL, where a backup goes, and the offsite record."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup_core.store.manifest import Manifest
from backup_core.store.offsite_catalog import Offsite, StoredObject, _stem
from backup_core.store.offsite_transfer import remote_rel
from backup_core.store.repository import RepoUrl
from backup_core.tools.errors import ConfigError


def test_a_repository_url_is_a_bucket_and_a_clean_prefix() -> None:
    assert RepoUrl.parse("s3://atb-backups/prod/db/") == RepoUrl("atb-backups", "prod/db")
    assert RepoUrl.parse("s3://atb-backups").key("a/b.dump") == "a/b.dump"
    assert RepoUrl("b1", "p").key("x") == "p/x" and RepoUrl("b1", "p").rel("p/x") == "x"
    assert str(RepoUrl("b1", "p")) == "s3://b1/p"


@pytest.mark.parametrize("bad", ["http://bucket/x", "s3://", "s3://B_ad/x", "s3://ok/a/../b",
                                 "s3://ok/a//b", "/var/backups"])
def test_a_malformed_repository_url_is_exit_2(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RepoUrl.parse(bad)
    assert caught.value.exit_code == 2


def test_a_backup_goes_where_the_local_tree_keeps_it() -> None:
    m = Manifest(database="a b", file="backup-20261123T230400Z.dump",
                 taken_at=datetime(2026, 11, 23, 23, 4, tzinfo=UTC).isoformat(),
                 started_at="2026-11-23T23:04:00+00:00", finished_at="2026-11-23T23:04:01+00:00",
                 duration_s=1.0, size_bytes=1, sha256="0" * 64, pg_dump_version="15.1",
                 server_version="15.1", toc_entries=1, alembic_revision=None,
                 row_counts_mode="off")
    assert remote_rel(m) == "a%20b/2026/11/23/backup-20261123T230400Z.dump"
    assert _stem("a/2026/11/23/backup-20261123T230400Z.dump.age") == (
        "a/2026/11/23/backup-20261123T230400Z", ".dump.age")
    assert _stem("a/notes.txt") is None
    assert _stem("../../etc/backup-20261123T230400Z.dump") is None  # would leave a download


def test_the_offsite_record_round_trips_and_refuses_keys_that_leave_the_repository() -> None:
    dump = StoredObject("a/2026/11/23/backup-20261123T230400Z.dump.age", 10, "1" * 64,
                        "2" * 64, 8)
    record = Offsite("age", ("sha256:abc",), dump, None, None, "2026-11-23T23:05:00+00:00")
    assert Offsite.from_dict(record.to_dict()) == record
    bad = record.to_dict()
    bad["dump"]["key"] = "../../etc/passwd"
    with pytest.raises(ValueError, match="leaves the repository"):
        Offsite.from_dict(bad)
    with pytest.raises(ValueError, match="unknown encryption"):
        Offsite.from_dict({**record.to_dict(), "encryption": "rot13"})
    assert Path(dump.key).name.endswith(".dump.age")


def test_the_download_progress_says_percent_and_eta_in_steps_of_ten() -> None:
    import time

    from drills.cli.drill import _eta

    last = ["download"]
    t0 = time.monotonic() - 10  # 10 s for the first quarter: 30 s to go
    first = _eta(25 << 20, 100 << 20, t0, last)
    assert first.startswith("download 20% of 100.0 MiB, ETA ") and first.endswith("s")
    assert 29 <= int(first.rsplit(" ", 1)[1][:-1]) <= 31
    assert _eta(26 << 20, 100 << 20, t0, last) is first  # same step: same text
    assert _eta(100 << 20, 100 << 20, t0, last) == "download 100% of 100.0 MiB, ETA 0s"
    assert _eta(0, 0, t0, ["download"]) == "download"


def _denied() -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied."},
                        "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")


def test_boto3_and_s3transfer_errors_are_the_refusal_they_wrap() -> None:
    """upload_file wraps the store's AccessDenied in boto3's S3UploadFailedError, and a
    download's retries end in s3transfer's RetriesExceededError: both are the store's
    refusal (exit 4, naming the code), and so is one that reached the CLI unguarded."""
    from boto3.exceptions import S3UploadFailedError
    from s3transfer.exceptions import RetriesExceededError

    from backup_core.store.repository import RepoUrl, guarded, translate, unplaced
    from backup_core.tools.errors import ConnectionFailed

    try:
        try:
            raise _denied()
        except Exception as inner:
            raise S3UploadFailedError(f"Failed to upload x: {inner}") from None
    except S3UploadFailedError as exc:
        wrapped = exc
    repo = RepoUrl.parse("s3://bucket/p")
    for exc in (wrapped, RetriesExceededError(_denied())):
        got = translate(exc, repo, "uploading x to")
        assert type(got) is ConnectionFailed and got.exit_code == 4
        assert str(got) == ("uploading x to s3://bucket/p: the store refused our credentials "
                            "(AccessDenied): check the AWS keys or profile and the key's "
                            "permissions")
    assert str(unplaced(wrapped)).startswith("talking to the object store: the store refused")
    with pytest.raises(ConnectionFailed, match="refused our credentials"), \
            guarded(repo, "uploading x to"):
        raise wrapped
    with pytest.raises(KeyError), guarded(repo, "uploading x to"):  # ours: not the store's
        raise KeyError("x")


def test_a_store_error_that_escaped_every_guard_is_still_exit_4_in_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The command line's one place for errors: an S3 client error no guard translated is
    the store's refusal (exit 4), never an internal error (exit 70) with a traceback file."""
    import click

    from drills import cli

    def boom() -> None:
        raise _denied()

    cli.cli.add_command(click.Command("fixa-boom", callback=boom))
    try:
        code = cli.run(["fixa-boom"])
    finally:
        cli.cli.commands.pop("fixa-boom")
    err = capsys.readouterr().err
    assert (code, err) == (4, "atb: error: talking to the object store: the store refused our "
                              "credentials (AccessDenied): check the AWS keys or profile and "
                              "the key's permissions\n")


@pytest.mark.parametrize("endpoint", ["127.0.0.1:35093", "notaurl"])
def test_an_endpoint_without_a_scheme_is_a_configuration_error(
        endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's ValueError for the endpoint was an internal error (exit 70)."""
    pytest.importorskip("boto3")
    from backup_core.store import repository
    from backup_core.tools.errors import ConfigError

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(ConfigError) as err:
        repository.open_repository("s3://bucket-x/prefix")
    assert str(err.value) == (f"cannot use the S3 endpoint: Invalid endpoint: {endpoint}; give "
                              "it as http(s)://host:port (AWS_ENDPOINT_URL, or endpoint_url in "
                              "the AWS configuration)")
    assert err.value.exit_code == 2


def test_only_the_store_libraries_own_errors_are_followed_to_what_they_were_handling() -> None:
    """boto3 raises its wrapper inside `except ClientError` without `from` (followed); an
    error of ours raised while a store error was handled is ours, not the store's."""
    from boto3.exceptions import S3UploadFailedError

    from backup_core.store.repository import _underlying

    denied = _denied()
    for raised in (S3UploadFailedError("Failed to upload x"), KeyError("x")):
        try:
            try:
                raise denied
            except Exception:
                raise raised  # noqa: B904 (implicitly chained, as boto3 does)
        except Exception as exc:
            got = _underlying(exc)
        assert got is (denied if isinstance(raised, S3UploadFailedError) else raised)
