"""Backup core: produce, list, verify, prune and restore `pg_dump -Fc` backups.

Plain functions and frozen dataclasses; no CLI, no pytest, no printing.
"""

__version__ = "0.1.0"
