"""Root conftest: loads the restore-drill plugin even where its entry point is not installed
(`pytest --backup PATH` from a checkout). Installed, the entry point has already loaded it."""

pytest_plugins = ["drills.plugin"]
