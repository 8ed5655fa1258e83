"""Which pgBackRest repositories are reached over the network (the drill cannot then run in
a network namespace): read from the config file's sections and pgBackRest's variables."""

from __future__ import annotations

from pathlib import Path

from backup_core.pitr.pgbackrest import Stanza, remote_repository


def _config(tmp_path: Path, text: str) -> Stanza:
    path = tmp_path / "pgbackrest.conf"
    path.write_text(text)
    return Stanza("shop", path)


def test_a_posix_repository_is_local(tmp_path: Path) -> None:
    stanza = _config(tmp_path, "[global]\nrepo1-path=/var/lib/pgbackrest\n"
                               "repo1-type=posix\n[shop]\npg1-path=/data\n")
    assert remote_repository(stanza, environ={}) is None


def test_an_s3_repository_in_the_global_section_is_remote(tmp_path: Path) -> None:
    stanza = _config(tmp_path, "[global]\nrepo1-type=s3\nrepo1-s3-bucket=b\n")
    assert remote_repository(stanza, environ={}) == "repo1-type=s3"


def test_a_repository_host_in_the_stanza_section_is_remote(tmp_path: Path) -> None:
    stanza = _config(tmp_path, "[global]\nrepo1-path=/r\n[other]\nrepo2-type=gcs\n"
                               "[shop]\nrepo2-host=backup.example\n")
    assert remote_repository(stanza, environ={}) == "repo2-host=backup.example"


def test_the_variables_count_too(tmp_path: Path) -> None:
    stanza = _config(tmp_path, "[global]\nrepo1-path=/r\n")
    assert remote_repository(stanza, environ={"PGBACKREST_REPO1_TYPE": "azure",
                                              "PGBACKREST_REPO1_S3_KEY": "k"}) == \
        "repo1-type=azure"
