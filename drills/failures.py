"""How a drill check fails: a summary, then named sections an auditor can read."""

from __future__ import annotations

from collections.abc import Iterable


class CheckFailed(AssertionError):
    """An assertion that renders Expected / Found / Evidence sections."""

    def __init__(self, summary: str, *, expected: object = None, found: object = None,
                 output: str = "") -> None:
        self.summary = summary
        self.expected = expected
        self.found = found
        self.output = output
        super().__init__(self.render())

    def render(self) -> str:
        parts = [self.summary]
        for title, value in (("Expected", self.expected), ("Found", self.found)):
            if value is not None:
                parts.append(f"{title}:\n{_indent(value)}")
        if self.output:
            parts.append(f"Tool output:\n{_indent(self.output)}")
        return "\n\n".join(parts)


def _indent(value: object) -> str:
    if isinstance(value, dict):
        lines: Iterable[str] = (f"{k}: {v}" for k, v in value.items())
    elif isinstance(value, list | tuple | set):
        lines = (str(v) for v in value)
    else:
        lines = str(value).splitlines() or [""]
    return "\n".join("  " + ln for ln in lines)
