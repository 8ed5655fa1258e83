"""Which initdb template a cluster may start from: one per server build, locale and
superuser, so an upgraded binary or another locale never gets an old template."""

from __future__ import annotations

import os
from pathlib import Path

from backup_core.tools.cluster import template_path
from backup_core.tools.toolchain import Toolchain


def chain_in(bindir: Path, version: str = "18.6") -> Toolchain:
    bindir.mkdir(parents=True, exist_ok=True)
    postgres = bindir / "postgres"
    if not postgres.exists():
        postgres.write_bytes(b"server build 1")
        postgres.chmod(0o755)
    return Toolchain(bindir=bindir, version=version, source="test")


def test_one_template_per_build_locale_and_superuser(tmp_path: Path) -> None:
    chain = chain_in(tmp_path / "bin")
    root = tmp_path / "templates"
    first = template_path(root, chain, locale="C", superuser="postgres")
    assert first.parent == root
    assert first.name.startswith("initdb-18.6-")
    assert template_path(root, chain, locale="C", superuser="postgres") == first
    others = {template_path(root, chain, locale="en_US.utf8", superuser="postgres"),
              template_path(root, chain, locale="C", superuser="admin"),
              template_path(root, chain_in(tmp_path / "other"), locale="C",
                            superuser="postgres")}
    assert first not in others and len(others) == 3
    # the same path and version, rebuilt in place: another template
    postgres = tmp_path / "bin" / "postgres"
    postgres.write_bytes(b"server build 2, a different size")
    os.utime(postgres, ns=(1, 1))
    assert template_path(root, chain, locale="C", superuser="postgres") != first
