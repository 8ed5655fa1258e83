"""`atb audit publish`: the drills' reports, the ledger and an index into the audit wiki."""

from __future__ import annotations

from pathlib import Path

import click

from backup_core.ops.publish import PublishResult, Wiki
from drills.cli import output
from drills.cli.params import EXIT_CODES, json_option

wiki_option = click.option(
    "--wiki", "wiki_url", envvar="ATB_WIKI_URL", show_envvar=True, metavar="URL",
    help="The audit wiki's git URL (any URL git accepts; a GitHub or GitLab wiki's "
         "`.wiki.git`). A password or token in it reaches git through a credential helper, "
         "never argv; set it in the environment: atb's own argv is visible in ps. Without "
         "one, your git credential helpers and SSH agent apply.")

notify_option = click.option(
    "--notify", "notify_urls", multiple=True, metavar="URL",
    help="Tell this apprise URL (Slack, Teams, mailto://, json:// webhooks, ...) when it "
         "matters; a failed notification is logged and changes nothing. (repeatable)")


def wiki_of(url: str | None) -> Wiki:
    """The wiki, checked before any work starts (exit 2 without one)."""
    return Wiki.parse(url or "")


@click.command("publish", epilog=EXIT_CODES)
@wiki_option
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("reports"), show_default=True,
              help="Where the drills wrote their reports (and the ledger, ledger.ndjson).")
@click.option("--drill", "only", multiple=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Publish only this drill (any of its report files; repeatable).  "
                   "[default: every drill of --report-dir]")
@json_option
def publish(wiki_url: str | None, report_dir: Path, only: tuple[Path, ...],
            as_json: bool) -> None:
    """Put the drills' Markdown reports (HTML, PDF and JSON attached), the ledger and an
    index of every drill into a git-backed wiki: commit and push, never forced; a push lost
    to another publisher is redone from the wiki's new tip. Exits 11 when the wiki cannot be
    reached or refuses the push (nothing is published then)."""
    from drills.wiki import publish_drills

    result = publish_drills(wiki_of(wiki_url), report_dir, only)
    output.show(result, as_json=as_json, text=published_text)


def published_text(r: PublishResult) -> str:
    if r.commit is None:
        return f"wiki {r.wiki}: already up to date, nothing to publish"
    return (f"wiki {r.wiki}: published {len(r.files)} files in commit {r.commit[:12]} on "
            f"{r.branch}" + (f" (attempt {r.attempts})" if r.attempts > 1 else ""))
