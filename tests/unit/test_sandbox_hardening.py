"""Hardening of the prepared sandbox and the drill's child: a child orphaned before its
parent-death signal is armed, the prepared data directory's variable never passed on."""

from __future__ import annotations

import signal
import subprocess

import pytest

from backup_core.tools import childenv, runner
from backup_core.tools.errors import ConfigError
from drills import sandbox


def test_a_child_orphaned_before_its_parent_death_signal_is_armed_signals_itself() -> None:
    """The parent may die between the fork and the arming: the kernel then never sends the
    signal (the parent it would watch is another already), so the child sends it itself."""
    orphaned = subprocess.Popen(["sleep", "30"],
                                preexec_fn=runner._parent_death(signal.SIGKILL, parent=1))
    assert orphaned.wait(timeout=10) == -signal.SIGKILL  # as if its parent were gone
    armed = subprocess.Popen(["true"], preexec_fn=runner._parent_death(signal.SIGKILL))
    assert armed.wait(timeout=10) == 0  # its parent is the one expected: runs as asked


def test_the_prepared_data_directory_variable_cannot_be_passed_to_the_drill() -> None:
    """Only `atb drill run` tells its child where a data directory was copied for it."""
    assert sandbox.PREPARED_ENV in childenv.FORBIDDEN
    with pytest.raises(ConfigError, match=f"--pass-env cannot pass {sandbox.PREPARED_ENV}:"):
        childenv.check_pass_env(["HOME", sandbox.PREPARED_ENV])
