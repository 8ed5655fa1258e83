"""Which initdb template a cluster may start from: one per server build, locale, superuser
and server account, so an upgraded binary, another locale or another account never gets an
old template."""

from __future__ import annotations

import os
from pathlib import Path

from backup_core.tools.cluster import _copy_template, _save_template, template_path
from backup_core.tools.toolchain import Toolchain


def chain_in(bindir: Path, version: str = "18.6") -> Toolchain:
    bindir.mkdir(parents=True, exist_ok=True)
    postgres = bindir / "postgres"
    if not postgres.exists():
        postgres.write_bytes(b"server build 1")
        postgres.chmod(0o755)
    return Toolchain(bindir=bindir, version=version, source="test")


def test_one_template_per_build_locale_superuser_and_server_account(tmp_path: Path) -> None:
    chain = chain_in(tmp_path / "bin")
    root = tmp_path / "templates"

    def key(locale: str = "C", superuser: str = "postgres", run_as: str | None = "postgres",
            at: Toolchain = chain) -> Path:
        return template_path(root, at, locale=locale, superuser=superuser, run_as=run_as)

    first = key()
    assert first.parent == root
    assert first.name.startswith("initdb-18.6-")
    assert key() == first
    # a sandbox's account never starts from a template `postgres` could have changed
    others = {key(locale="en_US.utf8"), key(superuser="admin"), key(run_as="atb-sandbox"),
              key(run_as=None), key(at=chain_in(tmp_path / "other"))}
    assert first not in others and len(others) == 5
    # the same path and version, rebuilt in place: another template
    postgres = tmp_path / "bin" / "postgres"
    postgres.write_bytes(b"server build 2, a different size")
    os.utime(postgres, ns=(1, 1))
    assert key() != first


def test_a_template_is_kept_private_and_never_read_from_a_directory_others_may_change(
        tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o700)
    (fresh / "PG_VERSION").write_text("18\n")
    templates = tmp_path / "templates"
    template = templates / "initdb-18.6-0123456789abcdef"
    _save_template(fresh, template)
    assert (template / "PG_VERSION").read_text() == "18\n"
    assert template.stat().st_mode & 0o777 == 0o700
    assert templates.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in templates.iterdir()] == [template.name]  # no temporary left
    assert _copy_template(template, tmp_path / "copy", None)
    assert (tmp_path / "copy" / "PG_VERSION").read_text() == "18\n"
    # a template directory others may write to: not read, and nothing added to it
    templates.chmod(0o770)
    assert not _copy_template(template, tmp_path / "copy2", None)
    assert not (tmp_path / "copy2").exists()
    other = templates / "initdb-18.6-fedcba9876543210"
    _save_template(fresh, other)
    assert not other.exists()
    # a template readable by others is not used either
    templates.chmod(0o700)
    template.chmod(0o750)
    assert not _copy_template(template, tmp_path / "copy3", None)


def test_a_data_directory_holding_a_link_is_never_kept_as_a_template(tmp_path: Path) -> None:
    """The server's user owns the fresh data directory before it is kept: a link it put
    there (postgresql.conf to a file of root's) would be in every later cluster."""
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o700)
    (fresh / "PG_VERSION").write_text("18\n")
    (fresh / "postgresql.conf").symlink_to(tmp_path / "root-only")
    templates = tmp_path / "templates"
    template = templates / "initdb-18.6-0123456789abcdef"
    _save_template(fresh, template)
    assert os.listdir(templates) == []  # neither the template nor its temporary copy
