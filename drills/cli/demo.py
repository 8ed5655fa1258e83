"""`atb demo`: a throwaway production, a 90-day history, a prune and a drill, end to end."""

from __future__ import annotations

from pathlib import Path

import click

from backup_core.tools import extras
from drills import console
from drills.cli import output
from drills.cli.drill import drill_summary
from drills.cli.params import EXIT_CODES, json_option


@click.command(epilog=EXIT_CODES)
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="Leave the demo's backup tree here (an empty or new directory) to explore "
                   "with `atb db list`, `verify`, `status` and `drill run --backup`.")
@click.option("--report-dir", default="reports", type=click.Path(file_okay=False,
              path_type=Path), help="Where the drill reports go.")
@click.option("--seed", type=int, help="Seed of the drill's random pick.  [default: random]")
@click.option("--days", default=90, type=click.IntRange(min=3), help="Days of backup history.")
@json_option
def demo(keep: Path | None, report_dir: Path, seed: int | None, days: int,
         as_json: bool) -> None:
    """Start a throwaway production database, build a 90-day backup history as its schema
    advances, prune it, drill a random backup, print the verdict and the report path."""
    from drills.demo import describe, run_demo

    extras.require("drill", what="the demo")
    extras.require("embedded", what="the demo (it runs on the embedded PostgreSQL)")
    progress = console.DrillProgress()

    def say(text: str) -> None:
        progress.close()
        click.echo(f"demo: {text}", err=True)

    try:
        result = run_demo(keep=keep, report_dir=report_dir, seed=seed, days=days, say=say,
                          on_event=progress)
    finally:
        progress.close()
    drilled = result.drill
    if as_json:
        output.print_json({**describe(result), "drill": drilled})
    else:
        click.echo(drill_summary(drilled))
        click.echo(f"\ndemo finished in {result.seconds:.0f}s: verdict "
                   f"{drilled.verdict}; open {drilled.reports['html']}")
        if keep is not None:
            click.echo(f"backups kept in {keep}: try `atb db list --backup-dir {keep}`")
    if not result.drill.passed:
        raise SystemExit(1)
