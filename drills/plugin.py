"""pytest plugin (placeholder until the drill lands)."""
