"""Publishing files into a git-backed wiki (GitHub and GitLab wikis are git repositories).

One publish is: clone the wiki into a private temporary directory, write the files, commit,
push. A push refused because someone else pushed first is retried from the wiki's new tip:
fetch, move the private clone to it, write the files again (the caller's `build` sees the new
tip, so an index over every page includes the other publisher's), commit, push. Nothing is
ever forced and no history is rewritten: every commit has the wiki's tip as its parent, and
any other refusal (a hook, a protected branch, a wrong password) is one line and exit 11.

Credentials are the wiki's own: a password or token in the URL reaches git through a
credential helper that reads it from git's environment (never argv), else the user's own
git credential helpers, SSH agent or `GIT_SSH_COMMAND` apply. The temporary clone goes away
whatever happens, so a failed publish leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from backup_core.tools.conninfo import redact, register_secret
from backup_core.tools.errors import AtbError, CommandFailed, ConfigError, ToolchainError
from backup_core.tools.runner import Completed, Runner, first_error_line, run

# Attempts before giving up on a wiki that keeps moving under us: each loses only to a push
# that landed, so five means five other publishes within seconds.
ATTEMPTS = 5
GIT_TIMEOUT_S = 300
# Environment git itself needs from ours (the sealed environment drops the rest): how to
# reach the wiki over SSH or a proxy, and which git configuration to read.
GIT_PASS_ENV = ("SSH_AUTH_SOCK", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_CONFIG_GLOBAL",
                "GIT_CONFIG_SYSTEM", "XDG_CONFIG_HOME", "http_proxy", "https_proxy",
                "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "GIT_SSL_CAINFO",
                "GIT_SSL_CAPATH")
PASSWORD_ENV = "ATB_WIKI_PASSWORD"
USERNAME_ENV = "ATB_WIKI_USERNAME"
# git's credential protocol: asked to `get`, print the user and password from the
# environment. The value names variables, never holds the secret.
CREDENTIAL_HELPER = (f'!f() {{ test "$1" = get && printf "username=%s\\npassword=%s\\n" '
                     f'"${USERNAME_ENV}" "${PASSWORD_ENV}"; }}; f')


class PublishFailed(AtbError):
    """The wiki could not be reached, or refused the push: nothing was published."""

    exit_code = 11


# The forms of a wiki URL understood, each with no place a token could hide unseen: a URL
# whose host (and port) are a host's, an scp-like `user@host:path` whose user is a login
# name, or a path. Anything else (`https//user:TOKEN@host`, a token where a port goes) is
# refused without being shown: it is never given to git, whose argv anyone can read.
_SCHEME_URL = re.compile(r"^(https?|ssh|git|file|git\+ssh|ssh\+git)://", re.IGNORECASE)
_HOST = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])?$")
_SCP_LIKE = re.compile(r"^([a-z_][a-z0-9_.-]{0,31}@)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:"
                       r"(?!//)")


def _understood_wiki(text: str) -> bool:
    if _SCHEME_URL.match(text):
        parts = urlsplit(text)
        where = parts.netloc.rsplit("@", 1)[-1]
        host, _, port = where.rpartition(":") if not where.endswith("]") else (where, "", "")
        if not host:
            host, port = where, ""
        if port and not port.isdigit():
            return False
        if "@" in parts.netloc and (
                parts.scheme.lower() not in ("http", "https", "ssh", "git+ssh", "ssh+git")
                or (parts.scheme.lower() not in ("http", "https")
                    and ":" in parts.netloc.rsplit("@", 1)[0])):
            return False  # a password is taken apart for http(s) alone: elsewhere git's argv
        return bool(_HOST.match(host)) and (parts.scheme.lower() == "file" or bool(host))
    if "://" in text:
        return False
    if _SCP_LIKE.match(text):
        return True
    return "@" not in text and ":" not in text.split("/", 1)[0]


@dataclass(frozen=True)
class Wiki:
    """Where to publish: the URL git is given (no user or password in it) and the credentials
    of an http(s) URL kept apart, for the credential helper; shown only as `display`."""

    url: str
    password: str = field(default="", repr=False)
    username: str = field(default="", repr=False)

    @classmethod
    def parse(cls, text: str) -> Wiki:
        """Any URL git accepts: https://, http://, ssh://, git://, file://, `host:path`, a
        path. The `user:password@` of an http(s) URL is taken out of it (a token alone in the
        user's place, as GitHub takes it, is a secret too)."""
        text = text.strip()
        if not text:
            raise ConfigError("no wiki given: pass --wiki URL or set ATB_WIKI_URL")
        if text.startswith("-"):
            raise ConfigError("the wiki URL cannot start with '-'")
        if not _understood_wiki(text):
            raise ConfigError(
                "cannot understand the wiki URL (its text is not shown: it may hold a token): "
                "give https://host/path.git (a token as https://user:TOKEN@host/...), "
                "ssh://user@host/path, user@host:path or a directory")
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
            return cls(text)
        try:
            host, port = parts.hostname or "", parts.port
        except ValueError:
            raise ConfigError("cannot read the wiki URL's host and port (not shown: the URL "
                              "may hold a token)") from None
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        register_secret(password or user)
        netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
        return cls(urlunsplit(parts._replace(netloc=netloc)), password, user)

    @property
    def display(self) -> str:
        """The URL for a person: with its user when a password stands apart (else the user
        may be the token)."""
        if self.username and self.password:
            scheme, rest = self.url.split("://", 1)
            return redact(f"{scheme}://{quote(self.username, safe='')}@{rest}")
        return redact(self.url)


@dataclass(frozen=True)
class PublishResult:
    wiki: str  # redacted
    branch: str
    commit: str | None  # None: the wiki already held exactly these files
    files: tuple[str, ...]  # paths written that changed
    attempts: int


# -- argv, pure ------------------------------------------------------------------------------

def git_argv(*args: str) -> list[str]:
    """git with the clone's hooks never run and no links written; run in the clone's
    directory (the runner's `cwd`), never a pager or a prompt."""
    return ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.symlinks=false", *args]


def clone_argv(url: str, dest: Path) -> list[str]:
    return [*git_argv("clone", "--quiet", "--no-tags", "--"), url, str(dest)]


def fetch_argv(branch: str) -> list[str]:
    return git_argv("fetch", "--quiet", "--no-tags", "origin",
                    f"refs/heads/{branch}:refs/remotes/origin/{branch}")


def commit_argv(message: str) -> list[str]:
    return git_argv("commit", "--quiet", "--no-verify", "-m", message)


def push_argv(branch: str) -> list[str]:
    """A plain fast-forward push: no `--force`, no `+` refspec, so the wiki's history can
    only grow."""
    return git_argv("push", "--porcelain", "origin", f"HEAD:refs/heads/{branch}")


def git_env(wiki: Wiki, *, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """What git gets beyond the sealed environment: never a terminal prompt, the author, the
    transport settings of ours, and with a password in the URL, a credential helper reading
    it from this environment (helpers configured elsewhere are reset, so the URL's wins)."""
    base = os.environ if base is None else base
    who = "atb"
    email = f"atb@{socket.gethostname() or 'localhost'}"
    env = {k: base[k] for k in GIT_PASS_ENV if k in base}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_AUTHOR_NAME": who, "GIT_AUTHOR_EMAIL": email,
                "GIT_COMMITTER_NAME": who, "GIT_COMMITTER_EMAIL": email,
                "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false"})
    if wiki.password or wiki.username:
        env.update({"GIT_CONFIG_COUNT": "2",
                    "GIT_CONFIG_KEY_0": "credential.helper", "GIT_CONFIG_VALUE_0": "",
                    "GIT_CONFIG_KEY_1": "credential.helper",
                    "GIT_CONFIG_VALUE_1": CREDENTIAL_HELPER,
                    USERNAME_ENV: wiki.username, PASSWORD_ENV: wiki.password})
    return env


def push_outcome(done: Completed) -> str:
    """`ok`, `behind` (someone pushed first: fetch and try again) or `refused` (anything
    else), from `git push --porcelain`'s status line for our ref."""
    if done.returncode == 0:
        return "ok"
    for line in done.stdout.splitlines():
        if line.startswith("!\t") and "[rejected]" in line and (
                "fetch first" in line or "non-fast-forward" in line):
            return "behind"
        # the other push landed between the wiki's advertisement and our update: the wiki
        # refuses to move a ref that is no longer where we saw it
        if line.startswith("!\t") and "[remote rejected]" in line and (
                "failed to update ref" in line or "failed to lock" in line) and any(
                w in done.stderr for w in ("cannot lock ref", "but expected", "already exists")):
            return "behind"
    return "refused"


def refusal(done: Completed) -> str:
    """One line saying why the wiki refused: the remote's reason and its hook's words."""
    reason = ""
    for line in done.stdout.splitlines():
        if line.startswith("!\t"):
            reason = line.split("\t")[-1].strip()
    said = [ln.strip().removeprefix("remote:").strip() for ln in done.stderr.splitlines()
            if ln.strip().startswith("remote:") and ln.strip() != "remote:"]
    words = "; ".join(s for s in said if s)
    text = reason or first_error_line(done.stderr)
    return text + (f" (the wiki said: {words})" if words else "")


def check_path(rel: str) -> PurePosixPath:
    """A wiki-relative path atb may write: relative, no `..`, nothing under `.git`."""
    path = PurePosixPath(rel)
    if (not rel or path.is_absolute() or any(p in ("", ".", "..") for p in rel.split("/"))
            or path.parts[0].lower() == ".git" or "\0" in rel or "\\" in rel):
        raise ConfigError(f"cannot publish to {rel!r}: not a plain path inside the wiki")
    return path


# -- the publish -----------------------------------------------------------------------------

Build = Callable[[Path], Mapping[str, bytes]]


def publish(wiki: Wiki, build: Build, *, message: str, attempts: int = ATTEMPTS,
            runner: Runner = run) -> PublishResult:
    """Write the files `build(clone)` returns (wiki-relative path -> content) into the wiki,
    commit and push; from the wiki's new tip again when someone pushed first."""
    env = git_env(wiki)
    with tempfile.TemporaryDirectory(prefix="atb-wiki-") as tmp:
        clone = Path(tmp) / "wiki"
        _git(runner, clone_argv(wiki.url, clone), env, f"cannot read the wiki {wiki.display}")
        branch = _branch(runner, clone, env)
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                _git(runner, fetch_argv(branch), env, f"cannot fetch the wiki {wiki.display}",
                     cwd=clone)
                _git(runner, git_argv("reset", "--quiet", "--hard",
                                      f"refs/remotes/origin/{branch}"), env, "git reset",
                     cwd=clone)
            files = build(clone)
            changed = _write(clone, files, runner, env)
            if not changed:
                return PublishResult(wiki.display, branch, None, (), attempt)
            _git(runner, commit_argv(message), env, "git commit", cwd=clone)
            done = _call(runner, push_argv(branch), env, "git push", cwd=clone)
            outcome = push_outcome(done)
            if outcome == "ok":
                head = _git(runner, git_argv("rev-parse", "HEAD"), env, "git rev-parse",
                            cwd=clone)
                return PublishResult(wiki.display, branch, head.stdout.strip(), changed,
                                     attempt)
            if outcome == "refused":
                raise PublishFailed(f"the wiki {wiki.display} refused the push: "
                                    f"{redact(refusal(done))}; nothing was published",
                                    detail=done.stderr)
        raise PublishFailed(f"the wiki {wiki.display} kept moving: {attempts} pushes lost to "
                            "other publishers; nothing was published, try again")


def _call(runner: Runner, argv: list[str], env: Mapping[str, str], what: str,
          cwd: Path | None = None) -> Completed:
    """git through the runner (in the clone's directory, `cwd`); git missing or hanging is
    the wiki's failure to reach."""
    try:
        return runner(argv, what=what, env=env, check=False, timeout=GIT_TIMEOUT_S, cwd=cwd)
    except ToolchainError as exc:
        raise ToolchainError("publishing to a wiki needs git: install it (apt-get install "
                             "git)") from exc
    except CommandFailed as exc:  # timed out
        raise PublishFailed(str(exc)) from exc


def _git(runner: Runner, argv: list[str], env: Mapping[str, str], what: str,
         cwd: Path | None = None) -> Completed:
    done = _call(runner, argv, env, what, cwd)
    if done.returncode != 0:
        raise PublishFailed(f"{what}: {redact(first_error_line(done.stderr))}",
                            detail=done.stderr)
    return done


def _branch(runner: Runner, clone: Path, env: Mapping[str, str]) -> str:
    """The wiki's default branch (the clone's), or git's default for an empty wiki."""
    done = _git(runner, git_argv("symbolic-ref", "--short", "HEAD"), env,
                "git symbolic-ref", cwd=clone)
    return done.stdout.strip() or "master"


def _write(clone: Path, files: Mapping[str, bytes], runner: Runner,
           env: Mapping[str, str]) -> tuple[str, ...]:
    """Write `files` into the clone through no link (a wiki may hold one pointing anywhere),
    stage them, and return the paths whose content changed."""
    paths = []
    for rel, data in sorted(files.items()):
        path = check_path(rel)
        target = clone
        for depth, part in enumerate(path.parts[:-1], 1):
            target = target / part
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                raise PublishFailed(f"the wiki holds {'/'.join(path.parts[:depth])} as a link "
                                    "or a file where atb keeps a directory: it writes through "
                                    "neither; nothing was published")
            target.mkdir(exist_ok=True)
        target = target / path.parts[-1]
        if target.is_symlink() or target.is_dir():
            raise PublishFailed(f"the wiki holds {rel} as a link or a directory: atb writes "
                                "through neither; nothing was published")
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
        paths.append(str(path))
    if not paths:
        return ()
    _git(runner, git_argv("add", "--", *paths), env, "git add", cwd=clone)
    done = _git(runner, git_argv("diff", "--cached", "--name-only", "-z"), env, "git diff",
                cwd=clone)
    return tuple(p for p in done.stdout.split("\0") if p)


def page_link(rel: str) -> str:
    """A wiki-relative path as a link target: each segment percent-encoded."""
    return "/".join(quote(p, safe="") for p in rel.split("/"))
