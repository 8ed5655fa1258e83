"""Connections and tools: connection strings, the one subprocess runner, argv builders,
toolchains, local clusters and isolation. The lowest layer: it imports no other layer."""
