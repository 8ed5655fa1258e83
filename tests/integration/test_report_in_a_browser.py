"""The audit report read as a person would: a real drill, its HTML rendered by headless
Chromium as a reader without JavaScript gets it (a wiki preview, an archive), and the rendered
text (extracted from the PDF Chromium prints) must carry the verdict, the summary and every
check with its evidence; pytest-html's script-only placeholders must not show."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backup_core.store import catalog
from backup_core.tools.conninfo import ConnInfo
from drills import render
from drills.demo import example_dir
from tests.helpers import atb_inproc

EXAMPLE = example_dir()


@pytest.fixture(scope="module")
def browser() -> str:
    found = render.find_chromium()
    if found is None or shutil.which("pdftotext") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium and pdftotext (see .ci/run)")
        pytest.skip("no Chromium or pdftotext here: apt-get install chromium poppler-utils")
    return found


def test_the_report_reads_without_javascript_and_prints_to_pdf(
    browser: str, history: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    _, backup_dir = history
    newest = next(b for b in catalog.scan(backup_dir) if b.complete).path
    integration = f"{sys.executable} -m pytest -q -p no:cacheprovider {EXAMPLE / 'tests'}"
    done = atb_inproc("drill", "run", "--json", "--sandbox", "local", "--backup", str(newest),
               "--no-record", "--schedule", "1d", "--pdf", "--alembic-config",
               str(EXAMPLE / "alembic.ini"), "--integration-cmd", integration,
               "--report-dir", str(tmp_path / "reports"))
    assert done.returncode == 0, done.stderr + done.stdout[-2000:]
    result = json.loads(done.stdout)
    pdf = Path(result["reports"]["pdf"])
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True,
                          text=True, check=True).stdout
    flat = " ".join(text.split())
    assert "Verdict: PASS" in flat
    for row in ("Database", "Selection", "Sandbox", "RTO", "RPO", "Alembic", "Seed"):
        assert row in flat
    for check in result["checks"]:
        assert " ".join(check["title"].split()) in flat, check["title"]
    assert "content checksums compared" in flat and "definitions compared" in flat
    for placeholder in ("There are still tests running", "No results found",
                        "(Un)check the boxes"):
        assert placeholder not in flat
