"""Restore drills built on `backup_core`: sandboxes, the pytest plugin, checks and reports."""
