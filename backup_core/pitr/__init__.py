"""Point in time: pgBackRest, WAL status and point-in-time restores."""
