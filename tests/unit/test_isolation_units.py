"""The isolation's pure parts: the exact argv, which sockets and files are hidden, the
launcher's arguments, the relay's startup-packet parsing, the observer's wire format."""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

import pytest

from backup_core.reading import guard
from backup_core.tools import db, isolate_exec, isolation, relay
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import ConfigError
from drills import observer

TABLE = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 1001 /tmp/pg/.s.PGSQL.5432
0000000000000000: 00000002 00000000 00010000 0001 01 1002 /run/relay/.s.PGSQL.6432
0000000000000000: 00000003 00000000 00000000 0001 03 1003 /tmp/pg/.s.PGSQL.5433
0000000000000000: 00000002 00000000 00010000 0001 01 1004 /run/docker.sock
0000000000000000: 00000002 00000000 00010000 0001 01 1005 @.s.PGSQL.abstract
0000000000000000: 00000002 00000000 00010000 0001 01 1006
"""


def test_isolated_argv_is_exact_as_root_and_through_a_user_namespace() -> None:
    assert isolation.isolated_argv(["pytest", "-q"], hide=["/a/.s.PGSQL.5432", "/h/.pgpass"],
                                   root=True, unshare_path="/usr/bin/unshare") == [
        "/usr/bin/unshare", "--net", "--mount", "--pid", "--propagation", "private", "--",
        sys.executable, "-m", "backup_core.tools.isolate_exec", "--hide", "/a/.s.PGSQL.5432",
        "--hide", "/h/.pgpass", "--", "pytest", "-q"]
    assert isolation.isolated_argv(["true"], hide=[], root=False, unshare_path="unshare") == [
        "unshare", "--net", "--mount", "--pid", "--propagation", "private", "--user",
        "--map-current-user", "--keep-caps", "--", sys.executable, "-m",
        "backup_core.tools.isolate_exec", "--", "true"]


def test_only_listening_postgres_sockets_with_a_path_are_hidden() -> None:
    assert isolation.listening_pg_sockets(TABLE) == ["/tmp/pg/.s.PGSQL.5432",
                                                     "/run/relay/.s.PGSQL.6432"]


def test_hidden_paths_keep_the_allowed_socket_and_add_libpq_files(tmp_path: Path) -> None:
    sock_dir = tmp_path / "pg"
    sock_dir.mkdir()
    live, allowed = sock_dir / ".s.PGSQL.5432", sock_dir / ".s.PGSQL.6432"
    live.touch()
    allowed.touch()
    table = "header\n" + "".join(f"0: 00000002 00000000 00010000 0001 01 1 {p}\n"
                                 for p in (live, allowed, sock_dir / ".s.PGSQL.1"))
    home = tmp_path / "home"
    home.mkdir()
    (home / ".pgpass").write_text("x")
    sysconf = tmp_path / "etc"
    sysconf.mkdir()
    (sysconf / "pg_service.conf").write_text("[prod]\n")
    mounted = tmp_path / "mounted"  # a container's socket directory: on disk, not listed
    mounted.mkdir()
    (mounted / ".s.PGSQL.5432.lock").touch()
    (mounted / ".s.PGSQL.7").touch()  # not a socket
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(mounted / ".s.PGSQL.5432"))
        hidden = isolation.hidden_paths([str(allowed)], table=table, dirs=[str(mounted)],
                                        env={"HOME": str(home), "PGSYSCONFDIR": str(sysconf)})
    # a socket gone since /proc/net/unix was read, and an absent service file, are skipped
    assert hidden == sorted([str(live), str(mounted / ".s.PGSQL.5432"),
                             str(home / ".pgpass"), str(sysconf / "pg_service.conf")])
    assert isolation.socket_dirs({"PGHOST": "/srv/pg,db.example,/run/postgresql"}) == [
        "/run/postgresql", "/var/run/postgresql", "/tmp", "/srv/pg"]


def test_isolation_off_is_environment_only_and_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    isolation.probe.cache_clear()
    monkeypatch.setenv("ATB_ISOLATION", "off")
    try:
        iso = isolation.probe()
        assert (iso.level, iso.reason, iso.network) == ("environment only", "ATB_ISOLATION=off",
                                                        False)
        assert isolation.wrap(["x"], env={}) == (["x"], iso)
    finally:
        isolation.probe.cache_clear()
    assert iso.describe() == "environment only (ATB_ISOLATION=off)"
    assert isolation.Isolation("network", "ns", ("127.0.0.1:6379",)).describe() == (
        "network (ns; let through: 127.0.0.1:6379)")


def test_isolated_argv_carries_each_forward() -> None:
    assert isolation.isolated_argv(["t"], hide=[], root=True, unshare_path="u",
                                   forward={"127.0.0.1:6379": "/r/service.sock"})[7:] == [
        sys.executable, "-m", "backup_core.tools.isolate_exec", "--forward",
        "127.0.0.1:6379=/r/service.sock", "--", "t"]


def test_allowed_services_are_loopback_addresses_and_never_production() -> None:
    assert [isolation.check_service(s) for s in ("127.0.0.1:6379", "[::1]:80",
                                                 "localhost:8080", "127.0.0.2:1")] == [
        "127.0.0.1:6379", "[::1]:80", "localhost:8080", "127.0.0.2:1"]
    for bad, why in (("10.0.0.5:6379", "only loopback"), ("cache.internal:6379", "only "
                     "loopback"), ("127.0.0.1", "HOST:PORT"), ("127.0.0.1:0", "HOST:PORT"),
                     (":80", "HOST:PORT"), ("127.0.0.1:http", "HOST:PORT")):
        with pytest.raises(ConfigError, match=why):
            isolation.check_service(bad)
    prod = ConnInfo.make(dbname="app", host="localhost", port=5433)
    for same in ("127.0.0.1:5433", "localhost:5433"):
        with pytest.raises(ConfigError, match="production's address"):
            isolation.refuse_production_service([same], prod)
    socket_prod = ConnInfo.make(dbname="app", host="/run/postgresql", port=5432)
    with pytest.raises(ConfigError, match="production's address"):  # its TCP side, maybe
        isolation.refuse_production_service(["127.0.0.1:5432"], socket_prod)
    isolation.refuse_production_service(["127.0.0.1:6379"], prod)
    isolation.refuse_production_service(["127.0.0.1:5433"], None)


def test_the_launcher_reads_its_arguments_or_refuses() -> None:
    assert isolate_exec.parse(["--hide", "/a", "--forward", "127.0.0.1:6379=/r/s.sock",
                               "--no-unix", "--hide", "/b", "--read-only", "/t", "--", "cmd",
                               "--hide"]) == isolate_exec.Launch(
        ["cmd", "--hide"], ["/a", "/b"], ["/t"], {"127.0.0.1:6379": "/r/s.sock"},
        no_unix=True)
    assert isolate_exec.parse(["--nested", "--no-unix", "--", "x"]) == isolate_exec.Launch(
        ["x"], no_unix=True, nested=True)
    with pytest.raises(isolate_exec.IsolationFailed, match="--nested changes no mount"):
        isolate_exec.parse(["--nested", "--hide", "/a", "--", "x"])
    with pytest.raises(isolate_exec.IsolationFailed, match="HOST:PORT=SOCKET"):
        isolate_exec.parse(["--forward", "127.0.0.1:1", "--", "x"])
    for bad in ([], ["--hide", "/a"], ["cmd"], ["--"]):
        with pytest.raises(isolate_exec.IsolationFailed, match="usage"):
            isolate_exec.parse(bad)
    assert isolate_exec.main(["--"]) == 3
    with pytest.raises(isolate_exec.IsolationFailed, match="not in a new net namespace"):
        isolate_exec.check_namespaces()  # here, in the host's: nothing may be changed


def _startup(**params: str) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!ii", len(body) + 8, 196608) + body


def test_startup_packets_are_parsed_as_the_server_would() -> None:
    start = relay.parse_startup(_startup(user="app", database="copy", options="-c x=1"))
    assert start.params == (("user", "app"), ("database", "copy"), ("options", "-c x=1"))
    assert (start.database, start.cancel) == ("copy", False)
    assert relay.parse_startup(_startup(user="app")).database == "app"  # libpq's default
    ssl = struct.pack("!ii", 8, relay.SSL_REQUEST)
    assert relay.parse_startup(ssl).code == relay.SSL_REQUEST
    assert relay.parse_startup(struct.pack("!iiii", 16, relay.CANCEL_REQUEST, 1, 2)).cancel
    for bad, why in ((b"\0\0\0", "short"), (_startup(user="a")[:-1], "length"),
                     (struct.pack("!ii", 8, 2 << 16), "protocol"),
                     (struct.pack("!ii", 10, 196608) + b"ab", "unterminated")):
        with pytest.raises(ValueError, match=why):
            relay.parse_startup(bad)


def test_a_refusal_is_a_fatal_error_response() -> None:
    body = b"SFATAL\0VFATAL\0C28000\0Matb: no\0\0"
    assert relay.error_response("atb: no") == b"E" + struct.pack("!i", len(body) + 4) + body


def test_observations_cross_the_boundary_unchanged() -> None:
    obs = guard.Observation(identity=db.Identity("port 5432, started 1", 16384, "app"),
                            alembic_revision=None, schema_hash="abc")
    assert observer.decode(observer.encode(obs)) == obs
    assert observer.decode(observer.encode(None)) is None
    assert observer.observer_for("/nonexistent/observer.sock")(None) is None


def test_the_archiver_row_crosses_the_boundary_unchanged() -> None:
    from datetime import UTC, datetime

    from backup_core.pitr.wal_status import Archiver
    from backup_core.tools.errors import AtbError

    row = Archiver(last_archived_wal="000000010000000000000004",
                   last_archived_at=datetime(2026, 11, 29, 9, 0, tzinfo=UTC),
                   last_failed_wal=None, last_failed_at=None, failed_count=0,
                   archive_mode="on")
    assert observer.decode_archiver(observer.encode_archiver(row)) == row
    with pytest.raises(AtbError, match="connection refused"):
        observer.decode_archiver(b'{"error": "connection refused"}')


def test_a_stray_active_variable_never_switches_isolation_off() -> None:
    """Only the namespace the launcher named counts as inside: `1`, or the host's own
    namespace copied from elsewhere, is not."""
    import os

    assert not isolation.already_inside({"ATB_ISOLATION_ACTIVE": "1"})
    assert not isolation.already_inside({"ATB_ISOLATION_ACTIVE": "net:[1]"})
    assert not isolation.already_inside({})
    here = os.readlink("/proc/self/ns/net")
    assert isolation.already_inside({"ATB_ISOLATION_ACTIVE": here})


def test_a_drill_on_a_remote_docker_engine_is_environment_only_and_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from drills.options import DrillOptions
    from drills.run import drill_isolation

    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.7:2376")
    iso = drill_isolation(DrillOptions(sandbox="docker"))
    assert (iso.level, iso.reason) == (
        "environment only", "the Docker engine at tcp://10.0.0.7:2376 is not on this host's "
        "unix socket: its container cannot be reached from inside a network namespace")
    assert drill_isolation(DrillOptions(sandbox="local")) == isolation.probe()
