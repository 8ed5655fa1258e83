"""One connection model, from libpq: every form apps put in DATABASE_URL, parsed by libpq's
own rules, rendered back without losing a parameter, and never showing a secret."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from backup_core.tools import childenv
from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.errors import ConfigError

FORMS = {
    "postgresql://app:pw1234@db.example:5433/trading": {},
    "postgres://app:pw1234@db.example:5433/trading": {},
    "postgresql+psycopg://app:pw1234@db.example:5433/trading": {},
    "postgresql+psycopg2://app:pw1234@db.example:5433/trading": {},
    "postgresql+asyncpg://app:pw1234@db.example:5433/trading?ssl=require": {"sslmode": "require"},
    "host=db.example port=5433 dbname=trading user=app password=pw1234": {},
}


@pytest.mark.parametrize("text", FORMS)
def test_every_form_apps_use_means_the_same_connection(text: str) -> None:
    info = ConnInfo.parse(text, env={})
    expected = {"dbname": "trading", "host": "db.example", "port": "5433", "user": "app",
                **FORMS[text]}
    assert dict(info.params) == expected
    assert info.password == "pw1234"
    for shown in (str(info), repr(info), info.redacted, info.conninfo, info.libpq_url):
        assert "pw1234" not in shown


def test_ipv6_multi_host_sockets_and_options_survive_a_round_trip() -> None:
    cases = {
        "postgresql://u:pw1234@[::1]:5432/db?options=-c%20search_path%3Dx": {
            "host": "::1", "port": "5432", "options": "-c search_path=x"},
        "postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write": {
            "host": "h1,h2", "port": "5432,5433", "target_session_attrs": "read-write"},
        "postgresql:///db?host=/var/run/postgresql&port=5444": {
            "host": "/var/run/postgresql", "port": "5444"},
        "host=/tmp port=5432 dbname='my db' user=x": {"host": "/tmp", "dbname": "my db"},
    }
    for text, subset in cases.items():
        info = ConnInfo.parse(text, env={})
        assert subset.items() <= dict(info.params).items(), text
        for rendered in (info.secret_url, info.conninfo):
            back = conninfo_to_dict(rendered)
            back.pop("password", None)
            assert back == dict(info.params), rendered
    assert "[::1]:5432" in ConnInfo.parse("postgresql://u@[::1]:5432/d", env={}).libpq_url
    assert "options=-c%20x%3Dy" in ConnInfo.parse(
        "postgresql://u@h/d?options=-c%20x%3Dy", env={}).libpq_url


def test_the_libpq_environment_fills_what_the_url_leaves_out() -> None:
    env = {"PGHOST": "/run/pg", "PGPORT": "6000", "PGUSER": "envuser", "PGPASSWORD": "envpw99",
           "PGDATABASE": "envdb", "PGSSLMODE": "disable"}
    info = ConnInfo.parse("postgresql:///explicit", env=env)
    assert info.dbname == "explicit" and info.host == "/run/pg" and info.port == "6000"
    assert info.user == "envuser" and info.password == "envpw99"
    assert info.get("sslmode") == "disable"
    alone = ConnInfo.parse("", env=env)
    assert alone.dbname == "envdb"
    with pytest.raises(ConfigError, match="no database given"):
        ConnInfo.parse("", env={})


def test_service_files_travel_with_a_service_connection_only() -> None:
    env = {"PGSERVICEFILE": "/etc/app/pg_service.conf"}
    with_service = ConnInfo.parse("service=prod", env=env)
    assert dict(with_service.env) == env
    assert childenv.libpq_vars(with_service)["PGSERVICEFILE"] == "/etc/app/pg_service.conf"
    assert ConnInfo.parse("host=h dbname=d", env=env).env == ()


@pytest.mark.parametrize("text", [
    "mysql://u:pw@h/db", "postgresql+asyncpg://u:pw@h/db?unknown_param=1",
    "postgresql://u:pw@h:notaport/db", "host=h dbname='unterminated",
])
def test_what_cannot_be_understood_is_a_clear_error_without_the_password(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        ConnInfo.parse(text, env={})
    assert ":pw@" not in str(err.value)
    assert any(w in str(err.value) for w in ("cannot understand", "no database", "mysql:// URL"))


def test_an_unencoded_password_is_understood_and_masked_whole() -> None:
    text = "postgresql://app:p@ss:w/rd%!@host/db"
    info = ConnInfo.parse(text, env={})
    assert info.password == "p@ss:w/rd%!" and info.host == "host" and info.dbname == "db"
    shown = redact(f"connecting to {text} failed")
    assert "p@ss" not in shown and "w/rd" not in shown and "ss:w" not in shown
    assert "postgresql://app:***@host/db" in shown


def test_secret_parameters_never_show_and_every_known_secret_is_masked() -> None:
    info = ConnInfo.parse("postgresql://u:topsecret1@h/db?sslpassword=keyphrase9&sslmode=require",
                          env={})
    for shown in (str(info), info.conninfo, info.libpq_url, info.redacted):
        assert "keyphrase9" not in shown and "topsecret1" not in shown
    assert "keyphrase9" in info.secret_url  # for a child's environment only
    assert redact("tool said: keyphrase9 and topsecret1") == "tool said: *** and ***"
    assert redact("host=h password='a b c' sslpassword=xyz") == \
        "host=h password=*** sslpassword=***"


def test_apps_get_their_own_dialect_and_alembic_gets_an_installed_driver() -> None:
    prod = ConnInfo.parse("postgresql+asyncpg://app:pw1234@db/trading", env={})
    sandbox = ConnInfo.make(dbname="atb_drill_1", host="/tmp/s", port=5432, user="postgres")
    assert sandbox.app_url(prod.dialect).startswith("postgresql+asyncpg://postgres@/atb_drill_1")
    assert sandbox.sqlalchemy_url.startswith("postgresql+psycopg://")
    assert sandbox.app_url().startswith("postgresql://")


def test_sealed_environments_drop_production_and_point_libpq_at_the_target() -> None:
    ambient = {"PATH": "/bin", "HOME": "/root", "LC_ALL": "C", "DATABASE_URL": "postgresql://p",
               "PGHOST": "prod", "PGPASSWORD": "prodpw", "PGSERVICE": "prod",
               "PGSERVICEFILE": "/x", "AWS_SECRET_ACCESS_KEY": "k", "APP_MODE": "test",
               "ATB_SANDBOX_URL": "postgresql://admin:pw@s/postgres"}
    target = ConnInfo.make(dbname="copy", host="/tmp/s", port=5432, user="postgres")
    env = childenv.sealed(childenv.libpq_vars(target), pass_env=["APP_MODE"], base=ambient)
    empty = {k: env.pop(k) for k in ("PGPASSFILE", "PGSERVICEFILE", "PGSYSCONFDIR")}
    assert empty == {"PGPASSFILE": "/dev/null/pgpass",
                     "PGSERVICEFILE": "/dev/null/pg_service.conf", "PGSYSCONFDIR": "/dev/null"}
    assert not any(Path(v, "pg_service.conf").exists() or Path(v).is_file()
                   for v in empty.values())
    assert env == {"PATH": "/bin", "HOME": "/root", "LC_ALL": "C", "APP_MODE": "test",
                   "PGHOST": "/tmp/s", "PGPORT": "5432", "PGUSER": "postgres",
                   "PGDATABASE": "copy"}
    with pytest.raises(ConfigError, match="PGHOST"):
        childenv.check_pass_env(["PGHOST", "APP_MODE"])
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        childenv.check_pass_env(["DATABASE_URL"])


def test_sslpassword_reaches_a_tool_through_a_private_service_file() -> None:
    info = ConnInfo.parse("postgresql://u@h/db?sslpassword=keyphrase9", env={})
    with childenv.for_tool(info) as (conninfo, env):
        assert "keyphrase9" not in conninfo and "service=atb" in conninfo
        path = Path(env["PGSERVICEFILE"])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "sslpassword=keyphrase9" in path.read_text()
    assert not path.exists()


_text = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF,
                              blacklist_characters="\x7f"), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(user=_text, password=_text, dbname=_text, host=st.sampled_from(
    ["db.example", "10.0.0.7", "::1", "/var/run/postgresql", "h1,h2"]))
def test_any_values_round_trip_through_every_rendering(user: str, password: str, dbname: str,
                                                       host: str) -> None:
    info = ConnInfo.make(dbname=dbname, host=host, port=5432, user=user, password=password)
    for rendered in (info.secret_url, info.conninfo):
        back = conninfo_to_dict(rendered)
        assert back.get("dbname") == dbname and back.get("user") == user
        assert back.get("host") == host
    assert conninfo_to_dict(info.secret_url)["password"] == password
    if len(password) >= 6:
        assert password not in redact(f"error from {info.secret_url}: {password}")


SECRET = "Pw0rdTrial9x7"


@pytest.mark.parametrize(("text", "reason"), [
    (f"postgresql//app:{SECRET}@127.0.0.1:54321/shop",
     "it is neither a URL (postgresql://...) nor keyword=value pairs"),
    (f"postgresql:/app:{SECRET}@127.0.0.1:54321/shop", "its scheme is not followed by '://'"),
    (SECRET, "it is neither a URL (postgresql://...) nor keyword=value pairs"),
    (f"host=127.0.0.1 port=54321 dbname=shop user=app password='{SECRET}",
     "a quoted value is not closed"),
    (f"host=127.0.0.1 {SECRET} dbname=shop", "a word in it is not a keyword=value pair"),
])
def test_text_that_cannot_be_parsed_is_never_shown(text: str, reason: str) -> None:
    """What libpq cannot parse cannot be told apart from a password: a mistyped scheme, a
    password pasted alone, a quote left open. The message gives the reason, not the text."""
    with pytest.raises(ConfigError) as err:
        ConnInfo.parse(text, env={})
    assert str(err.value) == (
        f"cannot understand DATABASE_URL (its text is not shown: it may hold a password): "
        f"{reason}; give a postgresql:// URL (percent-encode reserved characters in the "
        "password) or a libpq keyword string such as 'host=h dbname=d'")
    assert SECRET not in str(err.value) and "Trial" not in str(err.value)


@pytest.mark.parametrize("password", [f"Pw0rd@{SECRET}", f"Pw0/{SECRET}", f"a:{SECRET}@x"])
def test_a_password_libpq_would_split_into_host_or_port_is_taken_whole(password: str) -> None:
    """libpq reads `app:Pw0rd@Trial@host` as the host `Trial@host`; a host never holds `@`,
    nor a port letters, so the password runs to the last `@` and is masked whole."""
    info = ConnInfo.parse(f"postgresql://app:{password}@127.0.0.1:54321/shop", env={})
    assert (info.password, info.host, info.port, info.dbname) == (
        password, "127.0.0.1", "54321", "shop")
    assert info.redacted == "postgresql://app:***@127.0.0.1:54321/shop"


@pytest.mark.parametrize(("query", "message"), [
    ("sslmode=bogus", "sslmode='bogus' is not one of disable, allow, prefer, require, "
                      "verify-ca, verify-full"),
    ("connect_timeout=abc", "connect_timeout='abc' is not a whole number"),
    ("target_session_attrs=primary-ish", "target_session_attrs='primary-ish' is not one of "
     "any, read-write, read-only, primary, standby, prefer-standby"),
])
def test_a_parameter_value_libpq_checks_only_when_connecting_is_refused_first(
        query: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        ConnInfo.parse(f"postgresql://u:pw@h/db?{query}", env={})
    assert str(err.value) == f"cannot understand DATABASE_URL: {message}"
    with pytest.raises(ConfigError, match=r"^cannot understand DATABASE_URL: sslmode='maybe' "):
        ConnInfo.parse("postgresql+asyncpg://u:pw@h/db?ssl=maybe", env={})
    assert ConnInfo.parse("postgresql://u:pw@h/db?sslmode=verify-full&connect_timeout=10",
                          env={}).get("connect_timeout") == "10"


@pytest.mark.parametrize(("var", "value", "message"), [
    ("PGSSLMODE", "bogus", "sslmode='bogus' is not one of disable, allow, prefer, require, "
                           "verify-ca, verify-full"),
    ("PGCONNECT_TIMEOUT", "soon", "connect_timeout='soon' is not a whole number"),
])
def test_a_bad_value_from_the_environment_names_its_variable(
        var: str, value: str, message: str) -> None:
    """A libpq variable that fills in what the URL leaves out is blamed, not the URL."""
    with pytest.raises(ConfigError) as err:
        ConnInfo.parse("postgresql://u:pw@h/db", env={var: value})
    assert str(err.value) == (f"cannot understand {var} (from the environment, for "
                              f"DATABASE_URL): {message}")
    given = ConnInfo.parse("postgresql://u:pw@h/db?sslmode=require&connect_timeout=5",
                           env={var: value})  # the URL's own values win: nothing to blame
    assert (given.get("sslmode"), given.get("connect_timeout")) == ("require", "5")


def test_an_unknown_parameter_is_named_only_when_plainly_a_name() -> None:
    with pytest.raises(ConfigError, match=r"libpq has no parameter 'hots';"):
        ConnInfo.parse("postgresql+asyncpg://u:pw@h/db?hots=x", env={})
    with pytest.raises(ConfigError, match=r"libpq has no parameter \(name not shown\);"):
        ConnInfo.parse(f"postgresql+asyncpg://u:pw@h/db?{SECRET}=1", env={})


@pytest.mark.parametrize(("text", "message"), [
    (f"postgresql://app:{SECRET}:127.0.0.1:54327/shop", "its port is not a number from 1 to "
     "65535 (the port is not shown: a password written without its '@' would land there)"),
    (f"postgresql://app:{SECRET}127.0.0.1:54327/shop", "its port is not a number from 1 to "
     "65535 (the port is not shown: a password written without its '@' would land there)"),
    (f"postgresql://app@{SECRET}@127.0.0.1:54327/shop", "its host holds '@' (not shown: it may "
     "hold a password; write an '@' in a user name or password as %40)"),
])
def test_a_password_that_lands_in_the_port_or_the_host_is_never_shown(
        text: str, message: str) -> None:
    """An '@' or ':' left out or doubled puts the password where libpq reads a port or a
    host: neither is shown when it cannot be one."""
    with pytest.raises(ConfigError) as err:
        ConnInfo.parse(text, env={})
    assert str(err.value) == f"cannot understand DATABASE_URL: {message}"
    assert SECRET not in str(err.value)
