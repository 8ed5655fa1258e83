"""`python -m drills.cli`: the `atb` entry point."""

from __future__ import annotations

from drills.cli import main

main()
