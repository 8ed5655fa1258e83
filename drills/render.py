"""A report as a person sees it: headless Chromium renders the HTML as a reader without
JavaScript gets it (a wiki preview, an archive, a text browser) into a PDF or a screenshot.

Chromium's headless mode cannot print with scripts switched off (its own printing runs on
them), so it renders a copy of the page with the scripts removed and the `<noscript>`
contents in place: what a browser with JavaScript off displays."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from backup_core.tools.errors import ToolchainError
from backup_core.tools.runner import run

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def chromium_argv(browser: str, profile: Path, html: Path, *output: str) -> list[str]:
    """Headless, scripts disabled, no network of its own, a throwaway profile."""
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-quic", f"--user-data-dir={profile}", *output, html.resolve().as_uri()]


_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.IGNORECASE | re.DOTALL)
_NOSCRIPT = re.compile(r"<noscript\b[^>]*>(.*?)</noscript\s*>", re.IGNORECASE | re.DOTALL)


def without_scripts(page: str) -> str:
    """The page as a browser with JavaScript off has it."""
    return _NOSCRIPT.sub(r"\1", _SCRIPT.sub("", page))


def require() -> str:
    browser = find_chromium()
    if browser is None:
        raise ToolchainError("a PDF or screenshot of the report needs Chromium: install it "
                             "(apt-get install chromium) or leave out --pdf")
    return browser


def render(html: Path, *, pdf: Path | None = None, png: Path | None = None,
           width: int = 1280, height: int = 2400) -> None:
    browser = require()
    outputs = []
    if pdf is not None:
        outputs += [f"--print-to-pdf={pdf.resolve()}", "--no-pdf-header-footer"]
    if png is not None:
        outputs += [f"--screenshot={png.resolve()}", f"--window-size={width},{height}",
                    "--hide-scrollbars"]
    with tempfile.TemporaryDirectory(prefix="atb-chromium-") as tmp:
        static = Path(tmp) / html.name
        static.write_text(without_scripts(html.read_text(errors="replace")))
        run(chromium_argv(browser, Path(tmp) / "profile", static, *outputs), what="chromium",
            timeout=120)
