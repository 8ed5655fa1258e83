"""A sandbox database that is reached but whose locale cannot be read is said as such, not
as a sandbox that "cannot be reached" (the production guard's refusal, exit 8)."""

from __future__ import annotations

import secrets

import pytest
from psycopg import sql

from backup_core.tools import db
from backup_core.tools.cluster import Cluster
from backup_core.tools.errors import AtbError, SafetyRefusal
from drills import sandbox


def test_a_locale_that_cannot_be_read_is_its_own_error_not_an_unreachable_sandbox(
        pg15: Cluster) -> None:
    name, password = f"locale_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)))
    try:
        with db.connect(pg15.url(name), autocommit=True) as conn:
            # the role sees which database it is in, not its encoding and locale
            conn.execute("REVOKE SELECT ON pg_catalog.pg_database FROM PUBLIC")
            conn.execute("GRANT SELECT (oid, datname) ON pg_catalog.pg_database TO PUBLIC")
        url = pg15.url(name).with_params(user=name).with_password(password)
        ident, made = sandbox._reached(url, name=name, read=False)
        assert ident is not None and ident.database == name and made == ""
        with pytest.raises(AtbError) as caught:
            sandbox._reached(url, name=name, read=True)
        assert not isinstance(caught.value, SafetyRefusal) and caught.value.exit_code == 1
        assert str(caught.value).startswith(
            f"the locale of the sandbox database {name} could not be read: permission denied")
        assert sandbox._reached(url.with_params(port="1"), name=name, read=True) == (None, "")
    finally:
        with db.connect(pg15.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
