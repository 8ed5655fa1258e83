"""A small trading application: the example the demo drill restores and migrates."""
