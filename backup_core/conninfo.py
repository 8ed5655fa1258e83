"""Connection URLs: parse once, never leak the password.

The password travels to libpq tools through `PGPASSWORD` in the child's environment and to
psycopg as a keyword argument; every URL that is shown or put on an argv has it removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from backup_core.errors import ConfigError

_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"}
_URL_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*://[^:/@\s]*):[^@\s]*@")


def redact(text: str) -> str:
    """Replace the password of any connection URL inside `text` with `***`."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


@dataclass(frozen=True)
class ConnInfo:
    """A parsed PostgreSQL URL. `str()` and `repr()` never show the password."""

    dbname: str
    host: str = ""
    port: int | None = None
    user: str = ""
    password: str = field(default="", repr=False)
    query: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, url: str) -> ConnInfo:
        """Parse a `postgresql://` URL, raising `ConfigError` with a redacted copy on failure."""
        if not url or not url.strip():
            raise ConfigError("no database URL given: set DATABASE_URL or pass --database-url")
        shown = redact(url)
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"malformed database URL {shown!r}: {exc}") from exc
        if parts.scheme not in _SCHEMES:
            raise ConfigError(
                f"malformed database URL {shown!r}: expected postgresql://user:password@host/dbname"
            )
        dbname = unquote(parts.path.lstrip("/"))
        query = tuple(parse_qsl(parts.query, keep_blank_values=True))
        params = dict(query)
        if not dbname:
            dbname = params.get("dbname", "")
        if not dbname:
            raise ConfigError(f"database URL {shown!r} names no database: add /dbname to it")
        host = unquote(parts.hostname or "") or params.get("host", "")
        if port is None and params.get("port", "").isdigit():
            port = int(params["port"])
        return cls(
            dbname=dbname,
            host=host,
            port=port,
            user=unquote(parts.username or "") or params.get("user", ""),
            password=unquote(parts.password or "") or params.get("password", ""),
            query=tuple((k, v) for k, v in query
                        if k not in ("dbname", "host", "port", "user", "password")),
        )

    def with_dbname(self, dbname: str) -> ConnInfo:
        return replace(self, dbname=dbname)

    def with_password_from(self, other: ConnInfo | None) -> ConnInfo:
        """This URL with `other`'s password when it has none and names the same user on the
        same server: the runbook's target needs no password of its own on the command line."""
        if self.password or other is None or not other.password:
            return self
        if (self.user, self.host, self.port) != (other.user, other.host, other.port):
            return self
        return replace(self, password=other.password)

    def _url(self, *, password: str | None, scheme: str = "postgresql") -> str:
        auth = quote(self.user, safe="") if self.user else ""
        if password is not None and self.password:
            auth += ":" + password
        netloc = (auth + "@" if auth else "") + (self.host if "/" not in self.host else "")
        if self.port is not None and "/" not in self.host:
            netloc += f":{self.port}"
        query = list(self.query)
        if "/" in self.host:
            query.insert(0, ("host", self.host))
            if self.port is not None:
                query.insert(1, ("port", str(self.port)))
        tail = ("?" + urlencode(query)) if query else ""
        return f"{scheme}://{netloc}/{quote(self.dbname, safe='')}{tail}"

    @property
    def libpq_url(self) -> str:
        """The URL without its password: safe for an argv, a log line or a report."""
        return self._url(password=None)

    @property
    def redacted(self) -> str:
        return self._url(password="***")

    @property
    def secret_url(self) -> str:
        """The full URL with password, for in-process use or a child's environment only."""
        return self._url(password=quote(self.password, safe=""))

    @property
    def sqlalchemy_url(self) -> str:
        return self._url(password=quote(self.password, safe=""), scheme="postgresql+psycopg")

    def child_env(self) -> dict[str, str]:
        """Environment entries that hand the password to a libpq tool without an argv."""
        return {"PGPASSWORD": self.password} if self.password else {}

    def psycopg_kwargs(self) -> dict[str, str]:
        """Keyword arguments for `psycopg.connect`: the URL without password, the password."""
        kwargs = {"conninfo": self.libpq_url, "connect_timeout": "10"}
        if self.password:
            kwargs["password"] = self.password
        return kwargs

    def __str__(self) -> str:
        return self.redacted
