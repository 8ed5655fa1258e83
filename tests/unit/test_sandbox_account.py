"""Which account a dump drill's sandbox server runs as (`choose_sandbox_account`): one that
owns nothing of production, `ATB_SANDBOX_USER` else `atb-sandbox` else `nobody`, never
`postgres`; one that shares an owner with what it must not touch is refused (exit 2), whoever
chose it."""

from __future__ import annotations

import os

import pytest

from backup_core.tools.cluster import OsAccount, RunAs, choose_sandbox_account, service_user
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
        f"server: create it ({HINT}) or set ATB_SANDBOX_USER")
    assert raised.value.exit_code == 2


EXPLICIT_FIX = ("set ATB_SANDBOX_USER to an account that owns nothing of production (e.g. "
                f"atb-sandbox: {HINT})")


def test_atb_sandbox_user_is_the_users_choice_and_must_exist() -> None:
    assert choose(POSTGRES, SANDBOX, NOBODY, explicit="nobody") == RunAs(
        "nobody", "ATB_SANDBOX_USER, your choice")
    with pytest.raises(ConfigError) as raised:
        choose(POSTGRES, SANDBOX, NOBODY, explicit="atb-sandbx")  # a typo is not `postgres`
    assert str(raised.value) == "ATB_SANDBOX_USER=atb-sandbx: no such account on this host"
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(("explicit", "owners", "message"), [
    ("postgres", None,
     "refusing postgres for the drill's sandbox server: its uid 101 is that of postgres, "
     f"which owns production's data and pgBackRest's repository; {EXPLICIT_FIX}"),
    ("root", None, f"refusing root for the drill's sandbox server: it is uid 0 (root); "
     f"{EXPLICIT_FIX}"),
    ("pgadmin", None, "refusing pgadmin for the drill's sandbox server: its group 104 is "
     "postgres's (group-readable files of production and pgBackRest's repository); "
     f"{EXPLICIT_FIX}"),
    ("atb-sandbox", {999: "the owner of the backups in /b"},
     "refusing atb-sandbox for the drill's sandbox server: its uid 999 is that of the owner "
     f"of the backups in /b; {EXPLICIT_FIX}"),
])
def test_an_explicit_account_is_checked_as_the_default_is(
        explicit: str, owners: dict[int, str] | None, message: str) -> None:
    """The user's choice is no exemption: `ATB_SANDBOX_USER=postgres` (or root, or an
    account in postgres's group, or the backups' owner) would put the restored archive's
    superuser back in reach of what it must not touch."""
    found = (POSTGRES, SANDBOX, NOBODY, OsAccount("root", 0, 0),
             OsAccount("pgadmin", 1001, 104))
    with pytest.raises(ConfigError) as raised:
        choose(*found, explicit=explicit, owners=owners)
    assert (str(raised.value), raised.value.exit_code) == (message, 2)


def test_not_root_the_server_runs_as_us_whatever_the_host_has() -> None:
    assert choose(POSTGRES, SANDBOX, root=False) == RunAs(
        None, "not run as root: the server runs as this user")
    assert choose(root=False, explicit="nobody").name is None


@pytest.mark.parametrize(("account", "message"), [
    (OsAccount("atb-sandbox", 0, 995),
     "refusing atb-sandbox for the drill's sandbox server: it is uid 0 (root); give "
     "atb-sandbox a uid and group of its own, or set ATB_SANDBOX_USER"),
    (OsAccount("atb-sandbox", 101, 995),
     "refusing atb-sandbox for the drill's sandbox server: its uid 101 is that of postgres, "
     "which owns production's data and pgBackRest's repository; give atb-sandbox a uid and "
     "group of its own, or set ATB_SANDBOX_USER"),
    (OsAccount("atb-sandbox", 999, 104),
     "refusing atb-sandbox for the drill's sandbox server: its group 104 is postgres's "
     "(group-readable files of production and pgBackRest's repository); give atb-sandbox a "
     "uid and group of its own, or set ATB_SANDBOX_USER"),
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
        f"of the backups in /srv/backups; create atb-sandbox ({HINT}), or set ATB_SANDBOX_USER")
    assert choose(POSTGRES, SANDBOX, NOBODY, owners=owners).name == "atb-sandbox"
    assert choose(POSTGRES, SANDBOX, owners={0: "the owner of the backups in /b"}).name \
        == "atb-sandbox"  # root's backups: the usual case


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: not root, no account is chosen")
def test_an_atb_pg_user_naming_no_account_is_refused_not_postgres(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other cluster's account (`service_user`): a typo is exit 2, one line, where it
    was silently `postgres`; root too, where initdb refused it once the work had begun."""
    monkeypatch.setenv("ATB_PG_USER", "atb-no-such")
    with pytest.raises(ConfigError) as raised:
        service_user()
    assert (str(raised.value), raised.value.exit_code) == (
        "ATB_PG_USER=atb-no-such: no such account on this host", 2)
    monkeypatch.setenv("ATB_PG_USER", "root")
    with pytest.raises(ConfigError) as raised:
        service_user()
    assert str(raised.value) == ("ATB_PG_USER=root: it is uid 0 (root), which PostgreSQL "
                                 "refuses to run as: name an unprivileged account")
    monkeypatch.setenv("ATB_PG_USER", "nobody")
    assert service_user() == "nobody"
