"""Which account a dump drill's sandbox server runs as (`choose_sandbox_account`): one that
owns nothing of production, `atb-sandbox` else `nobody`, never `postgres` unless the user
says so; one that shares an owner with what it must not touch is refused (exit 2)."""

from __future__ import annotations

import pytest

from backup_core.tools.cluster import OsAccount, RunAs, choose_sandbox_account
from backup_core.tools.errors import ConfigError

POSTGRES = OsAccount("postgres", 101, 104)
SANDBOX = OsAccount("atb-sandbox", 999, 995)
NOBODY = OsAccount("nobody", 65534, 65534)
HINT = "useradd --system --no-create-home --shell /usr/sbin/nologin --user-group atb-sandbox"


def choose(*found: OsAccount, explicit: str = "", root: bool = True,
           owners: dict[int, str] | None = None) -> RunAs:
    return choose_sandbox_account(root=root, explicit=explicit,
                                  accounts={a.name: a for a in found}, owners=owners)


def test_atb_sandbox_first_then_nobody_and_never_postgres() -> None:
    assert choose(POSTGRES, SANDBOX, NOBODY) == RunAs(
        "atb-sandbox", "an account of atb's own that owns nothing of production")
    assert choose(POSTGRES, NOBODY) == RunAs(
        "nobody", "the fallback: no atb-sandbox account exists (for an account of atb's own "
        f"that owns nothing: {HINT})")
    assert choose(NOBODY) == choose(POSTGRES, NOBODY)
    with pytest.raises(ConfigError) as raised:
        choose(POSTGRES)
    assert str(raised.value) == (
        "running as root and neither atb-sandbox nor nobody exists for the drill's sandbox "
        f"server: create it ({HINT}) or set ATB_PG_USER")
    assert raised.value.exit_code == 2


def test_atb_pg_user_is_the_users_choice_even_postgres_and_must_exist() -> None:
    assert choose(POSTGRES, SANDBOX, explicit="postgres") == RunAs(
        "postgres", "ATB_PG_USER, your choice")
    with pytest.raises(ConfigError) as raised:
        choose(POSTGRES, SANDBOX, NOBODY, explicit="atb-sandbx")  # a typo is not `postgres`
    assert str(raised.value) == "ATB_PG_USER=atb-sandbx: no such account on this host"


def test_not_root_the_server_runs_as_us_whatever_the_host_has() -> None:
    assert choose(POSTGRES, SANDBOX, root=False) == RunAs(
        None, "not run as root: the server runs as this user")
    assert choose(root=False, explicit="nobody").name is None


@pytest.mark.parametrize(("account", "message"), [
    (OsAccount("atb-sandbox", 0, 995),
     "refusing atb-sandbox for the drill's sandbox server: it is uid 0 (root); give "
     "atb-sandbox a uid and group of its own, or set ATB_PG_USER"),
    (OsAccount("atb-sandbox", 101, 995),
     "refusing atb-sandbox for the drill's sandbox server: its uid 101 is that of postgres, "
     "which owns production's data and pgBackRest's repository; give atb-sandbox a uid and "
     "group of its own, or set ATB_PG_USER"),
    (OsAccount("atb-sandbox", 999, 104),
     "refusing atb-sandbox for the drill's sandbox server: its group 104 is postgres's "
     "(group-readable files of production and pgBackRest's repository); give atb-sandbox a "
     "uid and group of its own, or set ATB_PG_USER"),
])
def test_an_atb_sandbox_sharing_root_or_postgress_files_is_refused_not_passed_over(
        account: OsAccount, message: str) -> None:
    """Refused, not skipped for `nobody`: an administrator made this account for the
    sandbox, and the mistake is theirs to see."""
    with pytest.raises(ConfigError) as raised:
        choose(POSTGRES, account, NOBODY)
    assert str(raised.value) == message


def test_nobody_that_owns_the_backups_is_refused() -> None:
    """NFS with root_squash gives root's files to `nobody`: a sandbox running as it could
    change the backups the drill reads. The same check makes `atb-sandbox` refused too."""
    owners = {65534: "the owner of the backups in /srv/backups"}
    with pytest.raises(ConfigError) as raised:
        choose(POSTGRES, NOBODY, owners=owners)
    assert str(raised.value) == (
        "refusing nobody for the drill's sandbox server: its uid 65534 is that of the owner "
        f"of the backups in /srv/backups; create atb-sandbox ({HINT}), or set ATB_PG_USER")
    assert choose(POSTGRES, SANDBOX, NOBODY, owners=owners).name == "atb-sandbox"
    assert choose(POSTGRES, SANDBOX, owners={0: "the owner of the backups in /b"}).name \
        == "atb-sandbox"  # root's backups: the usual case
