"""Root conftest: loads the restore-drill plugin from a checkout whose package is not
installed (`pytest --backup PATH`). Installed, the `pytest11` entry point loads it, and this
file declares nothing: pytest refuses `pytest_plugins` in a conftest that is not top-level,
which this one is when the drill runs from another directory."""

from importlib.metadata import entry_points

if not any(ep.name == "drills.plugin" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["drills.plugin"]
