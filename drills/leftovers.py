"""The private temporary directories of an `atb drill run` (or a restore from the
repository) that was killed (`kill -9`): its scratch directory (`atb-drill-*`: the child's
options, progress and result), its observer's socket directory (`atb-observer-*`) and a
download from the repository (`atb-fetch-*`: a decrypted dump). Each is marked with its
owner when made (the process, its start time and host, as `backup_core.tools.reaper`
records a sandbox's); the next drill and `atb doctor` remove those whose owner is gone, the
way killed sandboxes are
reaped. Only a directory positively known to be ours is touched: in the temporary directory,
named so, ours, not a link, and holding an owner mark whose process this host knows is dead.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

from backup_core.tools import removal
from backup_core.tools.reaper import OWNER_MARK, Owner

log = logging.getLogger("atb.reaper")
PREFIXES = ("atb-drill-", "atb-observer-", "atb-fetch-")


def owner_of(folder: Path) -> Owner | None:
    """The owner `folder` is marked with, when it is positively one of ours: a directory
    (not a link) of our user, named as ours, holding a readable mark; else None."""
    if not folder.name.startswith(PREFIXES):
        return None
    try:
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return None
        fd = os.open(folder / OWNER_MARK, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as fh:
            return Owner.from_label(fh.read(200).strip())
    except (OSError, ValueError):
        return None


def reap(where: Path | None = None) -> list[str]:
    """Remove the marked directories of drills that are gone (in `where`, by default the
    temporary directory); what was done, one line each (also logged)."""
    root = where or Path(tempfile.gettempdir())
    done = []
    try:
        names = sorted(p for p in root.iterdir() if p.name.startswith(PREFIXES))
    except OSError:
        return []
    for folder in names:
        owner = owner_of(folder)
        if owner is None or not owner.gone():
            continue
        removal.discard(folder)
        line = (f"removed {folder}, the temporary directory of a drill that is gone "
                f"(pid {owner.pid})")
        log.warning("%s", line)
        done.append(line)
    return done
