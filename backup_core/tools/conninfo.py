"""Connection strings, parsed and rendered with libpq's own rules (`psycopg.conninfo`).

Every form libpq accepts works (URLs, IPv6, multi-host, keyword strings, `service=`), plus the
SQLAlchemy dialect prefixes applications keep in `DATABASE_URL`. The libpq environment
(`PGHOST`, `PGPASSWORD`, ...) is folded in when parsing, so a `ConnInfo` describes a connection
completely by itself: children are then given an environment built from it and nothing else.

Secrets (`password`, `sslpassword`) are held apart from the other parameters, never rendered
into `str()`, and registered so that `redact()` masks them in any text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from urllib.parse import parse_qsl, quote

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_core.tools import masking
from backup_core.tools.errors import ConfigError

SECRET_KEYS = ("password", "sslpassword")
# Variables libpq reads besides its keyword variables: where `service=` names are looked up.
SERVICE_ENV = ("PGSERVICEFILE", "PGSYSCONFDIR")
# Query parameters that only a Python driver understands, translated or dropped for libpq.
_DRIVER_PARAMS = {"ssl": "sslmode", "prepared_statement_cache_size": "",
                  "prepare_threshold": "", "async_fallback": "", "server_settings": ""}
_DIALECT = re.compile(r"^(postgres|postgresql)(\+[A-Za-z0-9_]+)?://", re.IGNORECASE)
# Redaction scans text of any size (a tool's 30 KB line, a megabyte of output): every pattern
# below is matched only anchored at a position found by `str.find`, runs over characters that
# a failed attempt does not read again, and never backtracks, so `redact` is linear.
_SCHEME_TAIL = re.compile(r"[\w+.-]*")  # matched on the reversed text before `://`
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_URL_USER = re.compile(r"[^:/@\s'\"<>]*")
_URL_SECRET_RUN = re.compile(r"[^\s'\"<>]*")
_SPACES = re.compile(r"\s*")
_QUOTED_VALUE = re.compile(r"'(?:[^'\\]|\\.)*+'")
_BARE_VALUE = re.compile(r"[^\s'\"&]+")
# libpq variables taken out of os.environ by `detach_libpq_environment`
_detached: dict[str, str] = {}


@cache
def libpq_env_keywords() -> dict[str, str]:
    """Environment variable -> keyword, as the linked libpq itself defines them."""
    return {o.envvar.decode(): o.keyword.decode()
            for o in pq.Conninfo.get_defaults() if o.envvar}


def detach_libpq_environment() -> dict[str, str]:
    """Move the libpq variables out of `os.environ` (keeping them for `ConnInfo.parse`).

    Called once at start by the CLI and the drill plugin: afterwards no connection of this
    process, and no child it starts, is steered by an ambient PGHOST or PGPASSWORD; every
    connection says where it goes."""
    for var in [*libpq_env_keywords(), "PGDATESTYLE", "PGTZ", "PGGEQO"]:
        if var in os.environ:
            _detached[var] = os.environ.pop(var)
    return dict(_detached)


def ambient_env() -> dict[str, str]:
    """The libpq variables of this process, including those detached at start."""
    return {**_detached, **{k: v for k, v in os.environ.items() if k.startswith("PG")}}


@cache
def libpq_keywords() -> frozenset[str]:
    """Every connection keyword the linked libpq knows."""
    return frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())


def register_secret(value: str) -> None:
    """Mask `value` wherever the current run's `redact` sees it from now on."""
    masking.current().add(value)


def redact(text: str, known: masking.Secrets | None = None) -> str:
    """`text` with every connection password masked: in URLs (even unencoded), in keyword
    strings, and every secret the run (`known`, by default the current run's) has parsed."""
    text = _mask_url_passwords(text)
    text = _mask_keyword_passwords(text)
    return (masking.current() if known is None else known).mask(text)


def _end(star: re.Pattern[str], text: str, pos: int) -> int:
    """Where a run of `star` (a `*` pattern, which always matches) starting at `pos` ends."""
    m = star.match(text, pos)
    return m.end() if m else pos


def _mask_url_passwords(text: str) -> str:
    """`scheme://user:SECRET@` -> `scheme://user:***@`, the secret running to the last `@`
    before a space or quote (an unencoded password may hold `@`, `:` and `/`)."""
    out: list[str] = []
    done = 0  # text[:done] is settled
    floor = 0  # a scheme starts after the previous `://` and after the previous match
    # the run of secret characters last measured: (start, end, its last `@`)
    run_start, run_end, run_at = -1, -1, -1
    p = text.find("://")
    while p != -1:
        letter = _ASCII_LETTER.search(text, p - _end(_SCHEME_TAIL, text[floor:p][::-1], 0), p)
        user_end = _end(_URL_USER, text, p + 3)
        at = -1
        if letter is not None and text.startswith(":", user_end):
            q = user_end + 1
            if not run_start <= q < run_end:
                run_start, run_end = q, _end(_URL_SECRET_RUN, text, q)
                run_at = text.rfind("@", q, run_end)
            at = run_at if run_at >= q else -1
        if at == -1:
            floor = p + 3
            p = text.find("://", floor)
            continue
        out += [text[done:user_end], ":***@"]
        done = floor = at + 1
        p = text.find("://", floor)
    return "".join(out) + text[done:] if out else text


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _mask_keyword_passwords(text: str) -> str:
    """`password=SECRET` and `sslpassword = 'SEC RET'` (libpq's quoting) -> `password=***`."""
    out: list[str] = []
    done = 0
    i = text.find("password")
    while i != -1:
        ssl = i >= 3 and text.startswith("ssl", i - 3) and i - 3 >= done
        start = i - 3 if ssl else i
        value = None
        if start >= done and (start == 0 or not _is_word(text[start - 1])):
            j = _end(_SPACES, text, i + 8)
            if text.startswith("=", j):
                j = _end(_SPACES, text, j + 1)
                value = _QUOTED_VALUE.match(text, j) or _BARE_VALUE.match(text, j)
        if value is None:
            i = text.find("password", i + 1)
            continue
        out += [text[done:value.start()], "***"]
        done = value.end()
        i = text.find("password", done)
    return "".join(out) + text[done:] if out else text


def _reencode_userinfo(url: str) -> str | None:
    """A URL whose password holds unencoded reserved characters (`p@ss:w/rd%!`), with the
    password percent-encoded; None when there is nothing to repair."""
    m = _DIALECT.match(url)
    if not m:
        return None
    rest = url[m.end():]
    if "@" not in rest:
        return None
    userinfo, tail = rest.rsplit("@", 1)
    if ":" not in userinfo:
        return None
    user, password = userinfo.split(":", 1)
    return f"{m.group(0)}{user}:{quote(password, safe='')}@{tail}"


def _libpq_form(text: str) -> tuple[str, str]:
    """(conninfo libpq can parse, the dialect the user wrote) from a URL or keyword string."""
    m = _DIALECT.match(text)
    if not m:
        return text, ""
    return "postgresql://" + text[m.end():], m.group(0)[:-3].lower()


@dataclass(frozen=True)
class ConnInfo:
    """One database connection, fully explicit. `str()` and `repr()` never show a secret."""

    params: tuple[tuple[str, str], ...]
    secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # PGSERVICEFILE / PGSYSCONFDIR, kept only when `service=` needs them
    env: tuple[tuple[str, str], ...] = ()
    dialect: str = ""

    def __post_init__(self) -> None:
        for _, value in self.secrets:
            register_secret(value)

    @classmethod
    def make(cls, *, dbname: str, host: str = "", port: int | str | None = None,
             user: str = "", password: str = "") -> ConnInfo:
        params = {"dbname": dbname, "host": host, "port": "" if port is None else str(port),
                  "user": user}
        return cls(params=tuple((k, v) for k, v in params.items() if v),
                   secrets=(("password", password),) if password else ())

    @classmethod
    def parse(cls, text: str, *, env: Mapping[str, str] | None = None,
              what: str = "DATABASE_URL") -> ConnInfo:
        """Parse a URL or keyword string as libpq would, filling what it leaves out from the
        libpq variables of `env` (default: this process's). Raises `ConfigError` (exit 2)
        that never shows the text: what could not be parsed cannot be told apart from a
        password (a mistyped `postgresql//user:pw@...`, a password pasted alone)."""
        raw = (text or "").strip()
        env = ambient_env() if env is None else env
        conninfo, dialect = _libpq_form(raw)
        scheme = re.match(r"^([A-Za-z][\w+.-]*)://", raw)
        if scheme and not dialect:
            raise ConfigError(f"{what} is a {scheme.group(1)}:// URL: give a postgresql:// URL "
                              "or a libpq keyword string")
        if dialect:
            conninfo = _translate_driver_params(conninfo, what)
        values = {k: v for k, v in _understood(conninfo, raw, bool(dialect), what).items()
                  if v is not None}
        problem = _value_problem(values)
        if problem:
            raise ConfigError(f"cannot understand {what}: {problem}")
        for var, keyword in libpq_env_keywords().items():
            if keyword not in values and env.get(var):
                values[keyword] = env[var]
                problem = _value_problem({keyword: env[var]})  # blamed on its variable
                if problem:
                    raise ConfigError(f"cannot understand {var} (from the environment, for "
                                      f"{what}): {problem}")
        if not any(values.get(k) for k in ("dbname", "host", "service")):
            raise ConfigError(f"no database given: set {what} (a postgresql:// URL or a libpq "
                              "keyword string), or the libpq variables PGHOST and PGDATABASE")
        secrets = tuple((k, values.pop(k)) for k in SECRET_KEYS if values.get(k))
        service_env = tuple((v, env[v]) for v in SERVICE_ENV if env.get(v)) \
            if values.get("service") else ()
        return cls(params=tuple(sorted(values.items())), secrets=secrets, env=service_env,
                   dialect=dialect)

    # -- parameters ---------------------------------------------------------------------

    def get(self, key: str) -> str:
        return dict(self.params).get(key, "")

    @property
    def dbname(self) -> str:
        return self.get("dbname")

    @property
    def host(self) -> str:
        return self.get("host")

    @property
    def port(self) -> str:
        return self.get("port")

    @property
    def user(self) -> str:
        return self.get("user")

    @property
    def password(self) -> str:
        return dict(self.secrets).get("password", "")

    def with_params(self, **changes: str) -> ConnInfo:
        values = dict(self.params)
        for k, v in changes.items():
            if v:
                values[k] = v
            else:
                values.pop(k, None)
        return replace(self, params=tuple(sorted(values.items())))

    def with_dbname(self, dbname: str) -> ConnInfo:
        return self.with_params(dbname=dbname)

    def with_password(self, password: str) -> ConnInfo:
        secrets = {**dict(self.secrets), "password": password}
        return replace(self, secrets=tuple(secrets.items()))

    def with_password_from(self, other: ConnInfo | None) -> ConnInfo:
        """This connection with `other`'s password when it has none and names the same user on
        the same host and port: the runbook's target needs no password of its own."""
        if self.password or other is None or not other.password:
            return self
        if (self.user, self.host, self.port) != (other.user, other.host, other.port):
            return self
        return self.with_password(other.password)

    # -- renderings ---------------------------------------------------------------------

    @property
    def conninfo(self) -> str:
        """libpq keyword string without secrets: for an argv, psycopg, or a log line."""
        return make_conninfo(**dict(self.params))

    def _url(self, *, password: str | None, scheme: str = "postgresql",
             multi_host_query: bool = False) -> str:
        values = dict(self.params)
        user, dbname = values.pop("user", ""), values.pop("dbname", "")
        hosts = [h for h in values.pop("host", "").split(",") if h] if "host" in values else []
        ports = values.pop("port", "").split(",") if "port" in values else []
        query: list[tuple[str, str]] = []
        netloc = ""
        in_netloc = bool(hosts) and not any(h.startswith("/") for h in hosts) \
            and len(ports) in (0, 1, len(hosts)) and not (multi_host_query and len(hosts) > 1)
        if in_netloc:
            parts = []
            for i, h in enumerate(hosts):
                p = ports[i] if len(ports) == len(hosts) else (ports[0] if ports else "")
                name = f"[{h}]" if ":" in h else quote(h, safe="")
                parts.append(name + (f":{p}" if p else ""))
            netloc = ",".join(parts)
        else:
            if multi_host_query and len(hosts) > 1:
                query += [("host", f"{h}:{ports[i]}" if len(ports) == len(hosts) else h)
                          for i, h in enumerate(hosts)]
            elif hosts:
                query.append(("host", ",".join(hosts)))
            if ports and ports != [""] and not (multi_host_query and len(hosts) > 1
                                                 and len(ports) == len(hosts)):
                query.append(("port", ",".join(ports)))
        auth = quote(user, safe="")
        if password is not None and self.password:
            auth += ":" + password
        query += sorted(values.items())
        ssl_secret = dict(self.secrets).get("sslpassword")
        if ssl_secret and password is not None:
            query.append(("sslpassword", "***" if password == "***" else ssl_secret))
        tail = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
        return (f"{scheme}://{auth + '@' if auth else ''}{netloc}/{quote(dbname, safe='')}"
                + (f"?{tail}" if tail else ""))

    @property
    def libpq_url(self) -> str:
        """A URL without its password: safe for an argv, a log line or a report."""
        return self._url(password=None)

    @property
    def redacted(self) -> str:
        """A URL for people: `***` where the password is."""
        return self._url(password="***")

    @property
    def secret_url(self) -> str:
        """The full `postgresql://` URL with password: for a child's environment only."""
        return self._url(password=quote(self.password, safe=""))

    @property
    def sqlalchemy_url(self) -> str:
        """The same for SQLAlchemy with the installed driver (psycopg 3), sync or async."""
        return self._url(password=quote(self.password, safe=""), scheme="postgresql+psycopg",
                         multi_host_query=True)

    def app_url(self, dialect: str = "") -> str:
        """The URL in the form the application's own DATABASE_URL uses (its dialect prefix,
        `postgresql+asyncpg` say), for the application's code in a child's environment."""
        scheme = dialect or self.dialect or "postgresql"
        return self._url(password=quote(self.password, safe=""), scheme=scheme,
                         multi_host_query="+" in scheme)

    def psycopg_kwargs(self) -> dict[str, str]:
        """Keyword arguments for `psycopg.connect`: the keyword string and the secrets."""
        return {"conninfo": self.conninfo, "connect_timeout": self.get("connect_timeout")
                or "10", **dict(self.secrets)}

    def __str__(self) -> str:
        return self.redacted


def _translate_driver_params(url: str, what: str) -> str:
    """`url` with the query parameters of Python drivers (asyncpg's `ssl=require`) put in
    libpq's terms; libpq refuses any parameter it does not know."""
    if "?" not in url:
        return url
    base, query = url.split("?", 1)
    known = libpq_keywords()
    out: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in known:
            out.append((key, value))
        elif key in _DRIVER_PARAMS:
            if _DRIVER_PARAMS[key]:
                out.append((_DRIVER_PARAMS[key], {"true": "require", "false": "disable"}.get(
                    value.lower(), value)))
        else:
            raise ConfigError(f"cannot understand {what}: libpq has no parameter "
                              f"{_named(key)}; remove it or use its libpq name")
    if not out:
        return base
    return base + "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in out)


def _named(key: str) -> str:
    """An unknown parameter's name where it is plainly one (a short lowercase word); else
    not shown: it may be part of a password that the URL's syntax split off."""
    return repr(key) if re.fullmatch(r"[a-z_]{1,40}", key) else "(name not shown)"


def _understood(conninfo: str, raw: str, url: bool, what: str) -> dict[str, str | None]:
    """libpq's reading of `conninfo`; for a URL whose password holds unencoded reserved
    characters (libpq then fails, or splits it into a host holding `@` or a port that is
    not a number), the reading of it with the password percent-encoded, so the password is
    taken, and masked, whole."""
    try:
        parsed = _as_text(conninfo_to_dict(conninfo))
        failure = ""
    except psycopg.ProgrammingError as exc:
        parsed, failure = {}, str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if url and (failure or _split_password(parsed)):
        repaired = _reencode_userinfo(conninfo)
        if repaired is not None:
            try:
                again = _as_text(conninfo_to_dict(repaired))
            except psycopg.ProgrammingError:
                again = {}
            if again and not _split_password(again):
                return again
    if failure:
        raise ConfigError(f"cannot understand {what} (its text is not shown: it may hold a "
                          f"password): {_reason(failure, raw)}; give a postgresql:// URL "
                          "(percent-encode reserved characters in the password) or a libpq "
                          "keyword string such as 'host=h dbname=d'")
    return parsed


def _as_text(parsed: Mapping[str, object]) -> dict[str, str | None]:
    return {k: None if v is None else str(v) for k, v in parsed.items()}


def _split_password(parsed: Mapping[str, str | None]) -> bool:
    """libpq's reading of a URL shows a password cut by its own `@` or `/`: a host holding
    `@`, or a port that is not a list of numbers."""
    port = parsed.get("port") or ""
    return "@" in (parsed.get("host") or "") or any(
        p and not p.isdigit() for p in port.split(","))


def _reason(failure: str, raw: str) -> str:
    """What libpq found wrong, without the text it quotes (which may be a password), and a
    hint from the text's shape."""
    if "unterminated quoted string" in failure:
        return "a quoted value is not closed"
    if "://" not in raw and re.match(r"^[A-Za-z][\w+.-]*:/?[^/]", raw):
        return "its scheme is not followed by '://'"
    if "://" not in raw and "=" not in raw:
        return "it is neither a URL (postgresql://...) nor keyword=value pairs"
    if "invalid connection option" in failure:
        return "it names a parameter libpq does not know"
    if "missing \"=\"" in failure:
        return "a word in it is not a keyword=value pair"
    if "invalid percent-encoded token" in failure:
        return "a %-escape in it is not two hexadecimal digits"
    return "libpq cannot parse it"


# Parameters whose values libpq checks only when it connects (a typo was exit 4, "cannot
# connect"): checked here, so a value that cannot be understood is a configuration error.
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby",
                             "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
    "sslnegotiation": ("postgres", "direct"),
    "sslcertmode": ("disable", "allow", "require"),
}
_INTEGERS = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
             "keepalives_count", "tcp_user_timeout")


def _value_problem(values: Mapping[str, str]) -> str:
    """Why a parameter's value cannot be understood ("" when every value can)."""
    bad_ports = [p for p in values.get("port", "").split(",")
                 if p and not (p.isdigit() and 0 < int(p) < 65536)]
    if bad_ports:  # not shown: a password whose `@` was left out lands here
        return ("its port is not a number from 1 to 65535 (the port is not shown: a password "
                "written without its '@' would land there)")
    if "@" in values.get("host", ""):  # not shown: a password's unencoded '@' puts it here
        return ("its host holds '@' (not shown: it may hold a password; write an '@' in a "
                "user name or password as %40)")
    for key, choices in _CHOICES.items():
        value = values.get(key)
        if value and value not in choices:
            return f"{key}={value!r} is not one of {', '.join(choices)}"
    for key in _INTEGERS:
        value = values.get(key)
        if value and not re.fullmatch(r"\s*-?\d+\s*", value):
            return f"{key}={value!r} is not a whole number"
    return ""
