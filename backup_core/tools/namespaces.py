"""Whether this process runs inside the drill's network namespace: `isolate_exec` marks its
children with the namespace's identity, so code deep inside (the drill's pytest plugin, loaded
into every pytest run) knows it cheaply, without importing the isolation machinery."""

from __future__ import annotations

import os
from collections.abc import Mapping

# set in every isolated child's environment: its own children are inside already
ACTIVE_ENV = "ATB_ISOLATION_ACTIVE"
# `off` forces environment only, for platforms where the probe succeeds but isolation breaks
SWITCH_ENV = "ATB_ISOLATION"
SWITCH_VALUES = ("", "off")


def check_switch(env: Mapping[str, str]) -> None:
    """`ATB_ISOLATION` is unset, empty or `off`: anything else is a typo (exit 2), never read
    as "isolate after all" or "do not" in silence."""
    # imported here: the launcher (`isolate_exec`) runs this module with the standard
    # library alone, copied beside it where atb is not installed
    from backup_core.tools.errors import ConfigError

    value = env.get(SWITCH_ENV, "")
    if _switch(env) not in SWITCH_VALUES:
        raise ConfigError(f"{SWITCH_ENV}={value[:40]!r} is not understood: leave it unset "
                          "(isolate where the platform can) or set it to off")


def switched_off(env: Mapping[str, str]) -> bool:
    """`ATB_ISOLATION=off` (in any case, with any spaces): application code runs with a
    sealed environment only."""
    return _switch(env) == "off"


def _switch(env: Mapping[str, str]) -> str:
    """`ATB_ISOLATION`'s value, read the one way both its check and its use read it."""
    return env.get(SWITCH_ENV, "").strip().lower()


def already_inside(env: Mapping[str, str] | None = None) -> bool:
    """True in a child that `isolate_exec` started (or its children): the variable it set
    names the network namespace this process is in."""
    env = os.environ if env is None else env
    try:
        return bool(env.get(ACTIVE_ENV)) and env[ACTIVE_ENV] == os.readlink("/proc/self/ns/net")
    except OSError:
        return False
