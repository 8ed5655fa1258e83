"""`atb` imports only the command group it runs; the groups it lists are the same either way."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys, click
from drills.cli import cli
before = sorted(m for m in sys.modules if m.startswith('drills.cli.'))
command = cli.get_command(click.Context(cli), 'drill')
after = sorted(m for m in sys.modules if m.startswith('drills.cli.'))
print(before, after, command.name, cli.list_commands(click.Context(cli)))
"""


def test_only_the_group_that_runs_is_imported() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == (
        "['drills.cli.params'] ['drills.cli.drill', 'drills.cli.output', 'drills.cli.params', "
        "'drills.cli.publish'] drill ['audit', 'db', 'demo', 'doctor', 'drill', 'tests']")
