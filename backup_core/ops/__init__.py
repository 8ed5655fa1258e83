"""Operations: backup, restore, verify, migrate, status and the heartbeat."""
