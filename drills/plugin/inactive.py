"""The drill's fixtures in a pytest run that is not a drill: each skips, saying how to make it
one. Registered instead of the real parts, so a project's tests marked `drill` skip in its
ordinary runs at no import cost (the real fixtures import the whole drill)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

# the fixtures of `drills.plugin.fixtures` (a unit test keeps the two lists equal)
NAMES = ("drill", "drill_backup", "drill_chains", "drill_conditions", "drill_engine",
         "drill_final_url", "drill_integration", "drill_integrity", "drill_migration",
         "drill_migration_outcome", "drill_policy", "drill_restore", "drill_rpo", "drill_rto",
         "drill_sandbox", "drill_sandbox_start", "drill_url", "evidence", "findings")
REASON = "not a drill run: pass --drill or --backup PATH"


def _skipping(name: str) -> Callable[[], None]:
    def fixture() -> None:
        pytest.skip(REASON)

    fixture.__name__ = f"inactive_{name}"
    fixture.__doc__ = f"`{name}` outside a drill: skips ({REASON})."
    return fixture


for _name in NAMES:
    globals()[f"inactive_{_name}"] = pytest.fixture(name=_name)(_skipping(_name))
