"""Telling people when it matters, through apprise (Slack, Teams, e-mail, webhooks, ...).

A notification URL usually carries a token: it is checked before any work starts, its secret
parts are registered for masking, and it is shown only in apprise's private form
(`json://user:****@host/...`). Sending never raises: a failed delivery is a record the
caller logs, so a notification can never change a verdict or an exit code.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from urllib.parse import parse_qsl, unquote, urlsplit

from backup_core.tools.conninfo import redact, register_secret
from backup_core.tools.errors import ConfigError
from backup_core.tools.extras import require

log = logging.getLogger("atb.notify")


@dataclass(frozen=True)
class Notice:
    title: str
    body: str
    failure: bool = True  # a failure (red) rather than a warning


@dataclass(frozen=True)
class Delivery:
    target: str  # the URL in apprise's private form
    ok: bool
    error: str = ""


def _apprise() -> ModuleType:
    """apprise, imported without its own deprecation warnings (on Python 3.11 it imports
    `imghdr`, which warns): they are apprise's to fix, not a user's to read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import apprise
    return apprise


def _register(url: str) -> None:
    """Every part of `url` that may be a secret (the password, query values, long path or
    host parts with a digit: tokens), masked wherever `redact` sees it from now on."""
    parts = urlsplit(url)
    try:
        candidates = [parts.password or "", parts.username or ""]
    except ValueError:
        candidates = []
    candidates += [v for _, v in parse_qsl(parts.query)]
    # a "host" without dots is a token for many services (`slack://TokenA/TokenB/TokenC`)
    host = parts.netloc.rsplit("@", 1)[-1]
    candidates += [p for p in [*parts.path.split("/"), "" if "." in host else host]
                   if len(p) >= 8 and any(c.isdigit() for c in p)]
    for value in candidates:
        register_secret(unquote(value))


def private(url: str) -> str:
    """`url` as it may be shown: apprise's private form, else the scheme alone."""
    apprise = _apprise()
    with _quiet():
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if plugin:  # its options (`?method=POST&...`) say nothing a reader needs
        return redact(str(plugin.url(privacy=True)).split("?", 1)[0])
    return f"{url.split('://', 1)[0]}://***" if "://" in url else "***"


def check_targets(urls: Sequence[str]) -> tuple[str, ...]:
    """The notification URLs, each one apprise understands, or `ConfigError` (exit 2) naming
    it in its private form, before any work starts."""
    if not urls:
        return ()
    require("notify", what="--notify")
    apprise = _apprise()

    for url in urls:
        _register(url)
        with _quiet():
            plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
        if not plugin:
            raise ConfigError(f"--notify {private(url)}: not a notification URL apprise "
                              "understands (see https://github.com/caronc/apprise/wiki)")
    return tuple(urls)


def send(urls: Sequence[str], notice: Notice) -> tuple[Delivery, ...]:
    """Deliver `notice` to each URL; never raises."""
    if not urls:
        return ()
    apprise = _apprise()
    out = []
    for url in urls:
        target = private(url)
        with _quiet() as said:
            try:
                ap = apprise.Apprise()
                ap.add(url)
                ok = bool(ap.notify(body=redact(notice.body), title=redact(notice.title),
                                    notify_type=apprise.NotifyType.FAILURE if notice.failure
                                    else apprise.NotifyType.WARNING))
                error = "" if ok else (said[-1] if said else "not delivered")
            except Exception as exc:  # a notifier's bug must not decide the verdict
                ok, error = False, f"{type(exc).__name__}: {exc}"
        delivery = Delivery(target, ok, redact(error))
        if ok:
            log.info("notified %s", target)
        else:
            log.warning("notification to %s failed: %s (the outcome stands)", target,
                        delivery.error)
        out.append(delivery)
    return tuple(out)


@contextmanager
def _quiet() -> Iterator[list[str]]:
    """apprise's own log lines kept (redacted) for the failure's reason, not printed; its
    deprecation warnings (plugins load lazily) not raised."""
    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                said.append(redact(record.getMessage()))

    logger = logging.getLogger("apprise")
    handler = Keep()
    saved = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield said
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved
