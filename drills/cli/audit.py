"""`atb audit`: evidence for auditors."""

from __future__ import annotations

import click

from drills.cli.params import EXIT_CODES
from drills.cli.publish import publish


@click.group(epilog=EXIT_CODES)
def audit() -> None:
    """Evidence for auditors: drill reports published into the audit wiki."""


audit.add_command(publish)
