"""Alternate A and B, keep every timing, summarise as medians, min/max and the ratio A/B."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Comparison:
    name: str
    a_label: str
    b_label: str
    goal: str
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.a) / statistics.median(self.b) if self.b else float("nan")

    def row(self) -> list[str]:
        def stat(xs: list[float]) -> str:
            if not xs:
                return "-"
            return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"

        ratio = f"{self.ratio:.2f}" if self.b else "-"
        return [self.name, f"{self.a_label}: {stat(self.a)}",
                f"{self.b_label}: {stat(self.b)}" if self.b else "-", ratio, self.goal,
                "; ".join(self.notes)]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(comp: Comparison, a: Callable[[], Any], b: Callable[[], Any] | None,
              repeat: int, *, reset: Callable[[], Any] | None = None) -> Comparison:
    """A, B, A, B...: both see the same machine state, caches and load, in turn."""
    for i in range(repeat):
        order = [(comp.a, a), (comp.b, b)] if i % 2 == 0 else [(comp.b, b), (comp.a, a)]
        for sink, fn in order:
            if fn is None:
                continue
            if reset:
                reset()
            sink.append(timed(fn))
        print(f"  {comp.name}: round {i + 1}/{repeat}", file=sys.stderr, flush=True)
    return comp


def in_child(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `code` in a fresh interpreter that prints its own peak RSS (children excluded).

    VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the parent."""
    wrapper = (f"{code}\nimport json\n"
               "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]\n"
               "print(json.dumps({'maxrss_kb': int(hwm.split()[1])}))")
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                          env=env, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def own_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def replace_section(text: str, begin: str, end: str) -> None:
    """Write `text` (which starts with `begin` and ends with `end`) into bench/RESULTS.md in
    place of the section those markers held before, moved to the end of the record."""
    results = Path(__file__).resolve().parent / "RESULTS.md"
    old = results.read_text() if results.exists() else "# Benchmark results\n"
    if begin in old:
        old = old[: old.index(begin)] + old[old.index(end) + len(end):].lstrip("\n")
    results.write_text(old.rstrip("\n") + "\n\n" + text)
