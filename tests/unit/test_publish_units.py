"""The publish's pure parts: exact git argv (never a force), the wiki URL with its password
taken out, git's environment, how a push's outcome is read, which paths may be written, the
ledger's page name, and the drill policy's judgement."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup_core.ops.publish import (
    CREDENTIAL_HELPER,
    PASSWORD_ENV,
    USERNAME_ENV,
    Wiki,
    check_path,
    clone_argv,
    commit_argv,
    fetch_argv,
    git_env,
    push_argv,
    push_outcome,
    refusal,
)
from backup_core.ops.status import drill_overdue
from backup_core.tools.conninfo import redact
from backup_core.tools.errors import ConfigError
from backup_core.tools.runner import Completed
from drills.wiki import ledger_name

SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "core.symlinks=false"]


def test_git_argv_is_exact_and_never_forces() -> None:
    repo = Path("/tmp/w")
    assert clone_argv("https://u@h/x.wiki.git", repo) == [
        "git", *SAFE, "clone", "--quiet", "--no-tags", "--", "https://u@h/x.wiki.git", "/tmp/w"]
    assert fetch_argv("master") == [
        "git", *SAFE, "fetch", "--quiet", "--no-tags", "origin",
        "refs/heads/master:refs/remotes/origin/master"]
    assert commit_argv("Restore drills: x") == [
        "git", *SAFE, "commit", "--quiet", "--no-verify", "-m", "Restore drills: x"]
    push = push_argv("main")
    assert push == ["git", *SAFE, "push", "--porcelain", "origin", "HEAD:refs/heads/main"]
    assert not any(a.startswith(("+", "--force", "-f")) for a in push[len(SAFE) + 1:])


def test_a_password_in_the_url_goes_to_the_credential_helper_only() -> None:
    wiki = Wiki.parse("https://auditor:s3cr%40t-token@git.example.com:8443/org/app.wiki.git")
    assert wiki.url == "https://git.example.com:8443/org/app.wiki.git"
    assert (wiki.username, wiki.password) == ("auditor", "s3cr@t-token")
    assert wiki.display == "https://auditor@git.example.com:8443/org/app.wiki.git"
    assert "s3cr" not in repr(wiki) and redact("s3cr@t-token") == "***"
    env = git_env(wiki, base={"SSH_AUTH_SOCK": "/run/agent", "DATABASE_URL": "postgresql://p"})
    assert env["GIT_CONFIG_COUNT"] == "2"
    assert (env["GIT_CONFIG_KEY_0"], env["GIT_CONFIG_VALUE_0"]) == ("credential.helper", "")
    assert env["GIT_CONFIG_VALUE_1"] == CREDENTIAL_HELPER
    assert "s3cr" not in CREDENTIAL_HELPER and env[PASSWORD_ENV] == "s3cr@t-token"
    assert env[USERNAME_ENV] == "auditor"
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["SSH_AUTH_SOCK"] == "/run/agent"
    assert "DATABASE_URL" not in env


def test_a_token_alone_in_the_users_place_is_a_secret_too() -> None:
    wiki = Wiki.parse("https://ghp_0123456789abcdef@github.com/org/app.wiki.git")
    assert (wiki.url, wiki.display) == ("https://github.com/org/app.wiki.git",) * 2
    assert git_env(wiki, base={})[USERNAME_ENV] == "ghp_0123456789abcdef"
    assert redact("ghp_0123456789abcdef") == "***"


@pytest.mark.parametrize("url", ["git@github.com:org/app.wiki.git", "/srv/wiki.git",
                                 "ssh://git@host/wiki.git", "https://host/wiki.git",
                                 "https://[::1]:8080/wiki.git"])
def test_other_urls_pass_unchanged_and_use_the_users_own_credentials(url: str) -> None:
    wiki = Wiki.parse(url)
    assert (wiki.url, wiki.password) == (url, "")
    assert "GIT_CONFIG_COUNT" not in git_env(wiki, base={})


@pytest.mark.parametrize(("text", "message"), [
    ("", "no wiki given: pass --wiki URL or set ATB_WIKI_URL"),
    ("--upload-pack=evil", "the wiki URL cannot start with '-'")])
def test_no_wiki_or_an_option_for_a_url_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Wiki.parse(text)
    assert str(exc.value) == message


def done(code: int, stdout: str, stderr: str = "") -> Completed:
    return Completed(("git", "push"), code, stdout, stderr)


def test_a_push_outcome_is_read_from_the_porcelain_status() -> None:
    assert push_outcome(done(0, "To h\n=\tHEAD:refs/heads/master\t[up to date]\nDone\n")) == "ok"
    assert push_outcome(done(1, "To h\n!\tHEAD:refs/heads/master\t[rejected] (fetch first)\n"
                                "Done\n")) == "behind"
    assert push_outcome(done(1, "!\tHEAD:refs/heads/master\t[rejected] (non-fast-forward)\n"))\
        == "behind"
    moved = done(1, "!\tHEAD:refs/heads/master\t[remote rejected] (failed to update ref)\n",
                 "error: cannot lock ref 'refs/heads/master': is at 1a but expected 2b\n")
    assert push_outcome(moved) == "behind"
    hook = done(1, "!\tHEAD:refs/heads/master\t[remote rejected] (pre-receive hook declined)\n",
                "remote: frozen for the audit\nremote: \nerror: failed to push some refs\n")
    assert push_outcome(hook) == "refused"
    assert refusal(hook) == ("[remote rejected] (pre-receive hook declined) (the wiki said: "
                             "frozen for the audit)")
    assert push_outcome(done(128, "", "fatal: Authentication failed\n")) == "refused"


@pytest.mark.parametrize("bad", ["", "../etc/passwd", "/etc/passwd", ".git/config",
                                 ".GIT/hooks/x", "a//b", "a/./b", "a\\b"])
def test_only_plain_paths_inside_the_wiki_may_be_written(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_path(bad)
    assert str(check_path("restore-drills/a%20b/x-drill.md")) == "restore-drills/a%20b/x-drill.md"


def test_a_ledger_keeps_its_page_as_it_grows() -> None:
    one = b'{"seq": 1}\n'
    assert ledger_name(one) == ledger_name(one + b'{"seq": 2}\n')
    assert ledger_name(one) != ledger_name(b'{"seq": 1, "host": "b"}\n')
    assert ledger_name(one).startswith("restore-drills/ledger-")


def test_the_drill_policy_judges_the_newest_passing_drill() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    day = 86400.0
    assert drill_overdue(None, now=now, max_age_s=None) == ""
    assert drill_overdue(None, now=now, max_age_s=92 * day) == (
        "no passing drill recorded; the policy asks for one every 92d 00h 00m")
    assert drill_overdue("2026-09-01T12:00:00+00:00", now=now, max_age_s=92 * day) == ""
    assert drill_overdue("2026-08-01T12:00:00Z", now=now, max_age_s=92 * day) == (
        "newest passing drill 2026-08-01T12:00:00Z is 120d 00h 00m old; the policy asks for one "
        "every 92d 00h 00m")


VERBS = {"clone", "symbolic-ref", "add", "diff", "commit", "push", "fetch", "reset",
         "rev-parse"}


class FakeGit:
    """git as a recording runner: the clone is a directory, the first push loses a race,
    the second lands."""

    def __init__(self, pushes: list[tuple[int, str]], missing: bool = False) -> None:
        self.argv: list[list[str]] = []
        self.cwds: list[Path | None] = []
        self.pushes = pushes
        self.missing = missing

    def __call__(self, argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None,
                 check: bool = True, timeout: float | None = None, run_as: str | None = None,
                 cwd: Path | None = None) -> Completed:
        from backup_core.tools.errors import ToolchainError

        if self.missing:
            raise ToolchainError("program git not found")
        args = list(argv)
        self.argv.append(args)
        self.cwds.append(cwd)
        verb = next(a for a in args if a in VERBS)
        out = {"symbolic-ref": "master\n", "rev-parse": "c0ffee\n",
               "diff": "Restore-drills.md\0"}.get(verb, "")
        if verb == "clone":
            Path(args[-1]).mkdir()
        if verb == "push":
            code, out = self.pushes.pop(0)
            return Completed(tuple(args), code, out, "")
        return Completed(tuple(args), 0, out, "")


def test_a_lost_race_is_redone_from_the_new_tip_without_force() -> None:
    from backup_core.ops.publish import publish

    git = FakeGit([(1, "!\tHEAD:refs/heads/master\t[rejected] (fetch first)\n"), (0, "")])
    built: list[int] = []

    def build(clone: Path) -> dict[str, bytes]:
        built.append(1)
        return {"Restore-drills.md": b"# Restore drills\n"}

    done = publish(Wiki.parse("https://a:tok-123456@h/w.git"), build, message="m", runner=git)
    assert (done.commit, done.attempts, done.files) == ("c0ffee", 2, ("Restore-drills.md",))
    assert len(built) == 2  # the index is rebuilt from the new tip
    verbs = [next(a for a in argv[1:] if a in VERBS) for argv in git.argv]
    assert verbs == ["clone", "symbolic-ref", "add", "diff", "commit", "push", "fetch", "reset",
                     "add", "diff", "commit", "push", "rev-parse"]
    assert not any("--force" in a or a.startswith("+") for argv in git.argv for a in argv)
    assert not any("tok-123456" in a for argv in git.argv for a in argv)
    clone = Path(git.argv[0][-1])  # every call after the clone runs inside it
    assert git.cwds == [None] + [clone] * (len(git.argv) - 1)


def test_no_git_is_one_line_naming_it() -> None:
    from backup_core.ops.publish import publish
    from backup_core.tools.errors import ToolchainError

    with pytest.raises(ToolchainError) as exc:
        publish(Wiki.parse("/srv/wiki.git"), lambda clone: {}, message="m",
                runner=FakeGit([], missing=True))
    assert str(exc.value) == "publishing to a wiki needs git: install it (apt-get install git)"


@pytest.mark.parametrize("text", [
    "https//x:TokSecret1234@127.0.0.1:1/w.git",  # the scheme's ':' left out
    "https://x:TokSecret1234:127.0.0.1:1/w.git",  # the '@' left out: the token as a port
    "ghp_TokSecret1234@github.com:o/w.git",  # a token where an ssh login goes
    "git://TokSecret1234@host/w.git",
    "ssh://git:TokSecret1234@host/w.git",  # a password is taken apart for http(s) alone
    "git+ssh://u:TokSecret1234@host/w.git",
])
def test_a_wiki_url_that_cannot_be_understood_is_refused_without_its_text(text: str) -> None:
    """A mistyped URL may hold its token anywhere: it is neither shown nor given to git
    (whose argv anyone can read)."""
    with pytest.raises(ConfigError) as err:
        Wiki.parse(text)
    assert str(err.value) == (
        "cannot understand the wiki URL (its text is not shown: it may hold a token): give "
        "https://host/path.git (a token as https://user:TOKEN@host/...), "
        "ssh://user@host/path, user@host:path or a directory")


@pytest.mark.parametrize(("text", "url"), [
    ("https://x:TokSecret1234@127.0.0.1:1/w.git", "https://127.0.0.1:1/w.git"),
    ("ssh://git@github.com/o/w.git", "ssh://git@github.com/o/w.git"),
    ("git@github.com:o/w.git", "git@github.com:o/w.git"),
    ("https://[::1]:8080/w.git", "https://[::1]:8080/w.git"),
    ("file:///srv/w.git", "file:///srv/w.git"),
    ("./wiki", "./wiki"),
])
def test_every_form_git_takes_is_still_understood(text: str, url: str) -> None:
    assert Wiki.parse(text).url == url
