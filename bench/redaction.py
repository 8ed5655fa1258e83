"""`python -m bench.redaction`: `redact` on long tool-output lines, against the backtracking
expressions it replaced (issue 16: a 30 KB line turned a 6.6 s drill into 58 s). The old
expressions are timed only on inputs they finish in seconds; the point is the growth."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable

from backup_core.tools.conninfo import redact

OLD_URL = re.compile(r"([A-Za-z][\w+.-]*://[^:/@\s'\"<>]*):[^\s'\"<>]*@")
OLD_KEYWORD = re.compile(r"\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"&]+)")


def old_redact(text: str) -> str:
    return OLD_KEYWORD.sub(r"\1***", OLD_URL.sub(r"\1:***@", text))


def seconds(fn: Callable[[str], str], text: str, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def lines(size: int) -> dict[str, str]:
    return {"letters": "a" * size,
            "a URL without password": "x " + "postgresql://" * (size // 13),
            "a URL with a long password": "postgresql://u:" + "p" * size + "@h/db",
            "keyword pairs": "password=s3cret " * (size // 16)}


def main() -> None:
    print("| input | size | redact (ms) | old expressions (ms) |")
    print("|---|---|---|---|")
    slow: set[str] = set()
    for size, label in ((30_000, "30 KB"), (2**20, "1 MB")):
        for name, text in lines(size).items():
            new = seconds(redact, text) * 1000
            old = None if name in slow else seconds(old_redact, text, repeat=1) * 1000
            if old is not None and old > 1000:
                slow.add(name)  # quadratic: 35 times the size is about 1200 times the time
            shown = f"{old:.1f}" if old is not None else "not run (quadratic: about an hour)"
            print(f"| {name} | {label} | {new:.1f} | {shown} |")


if __name__ == "__main__":
    main()
