"""Benchmarks: atb against the plain PostgreSQL tools, side by side, in one process run."""
