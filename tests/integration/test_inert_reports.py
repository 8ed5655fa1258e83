"""Every report is inert: a real drill of a database whose name is live markup, with a user
check whose parametrize ids, evidence, output, extras and failure carry HTML, script and
backtick runs, and an Alembic migration whose output prints markup. The HTML report is opened
in headless Chromium with JavaScript on (pytest-html builds its tables with it) and no payload
element may exist in the DOM it builds; the Markdown report is rendered by GitHub's engine with
raw HTML allowed, and no tag may survive and every fence must close where we opened it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from backup_core.tools import db
from backup_core.tools.cluster import Cluster
from drills import render
from tests.helpers import atb_inproc, drill
from tests.unit.test_inert_units import TAGS_OK, gfm

PWN = "document.title='PWNED'"
# A database name may hold markup, quotes, backticks and a pipe (63 bytes at most). Its script
# sets the title without `=`: a name with `=` cannot be backed up yet (pg_dumpall --database
# reads it as a conninfo; issue 16 fixes that elsewhere); the ids and outputs carry `<img`.
DBNAME = "x<script>Object.assign(document,{title:'PWNED'})</script>`|\""
CHECK = f'''
import pytest
import pytest_html


@pytest.mark.parametrize("n", [1, 2], ids=["<img src=x onerror={PWN}>",
                                           "<script>{PWN}</script>"])
def test_hostile(n, evidence, extras):
    """Why: <b>bold</b> ``` and <img src=x onerror={PWN}>."""
    evidence.add("seen <img src=x onerror={PWN}> | ```` four")
    evidence.add("<script>{PWN}</script>")
    print("captured <img src=x onerror={PWN}>")
    extras.append(pytest_html.extras.html("<img src=x onerror={PWN}>"))
    extras.append(pytest_html.extras.url("javascript:{PWN}", name="<b>link</b>"))
    assert n == 1, "found <img src=x onerror={PWN}>\\n```\\n<script>{PWN}</script>\\n```"
'''
MIGRATION = f'''
"""A migration that prints markup and fails with it."""
revision = "0001_markup"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    print("alembic says <img src=x onerror={PWN}> and ``` fence")
    raise RuntimeError("<script>{PWN}</script> ```` </pre><img src=x onerror={PWN}>")


def downgrade() -> None:
    pass
'''
ENV_PY = '''
import os

from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine(os.environ["DATABASE_URL"].replace("postgresql://",
                                                          "postgresql+psycopg://", 1),
                       poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
'''


@pytest.fixture(scope="module")
def browser() -> str:
    found = render.find_chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium (see .ci/run)")
        pytest.skip("no Chromium here: apt-get install chromium")
    return found


@pytest.fixture(scope="module")
def hostile_drill(pg15: Cluster, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[dict[str, Any], Path]]:
    """One drill of the hostile database: (its JSON result, its report directory)."""
    tmp = tmp_path_factory.mktemp("inert")
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DBNAME.replace(chr(34), chr(34) * 2)}"')
    try:
        with db.connect(pg15.url(DBNAME), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO t VALUES (1, %s)", (f"<img src=x onerror={PWN}>",))
        done = atb_inproc("db", "backup", env={"BACKUP_DIR": str(tmp / "b")}, url=pg15.url(DBNAME))
        assert done.returncode == 0, done.stderr
        (tmp / "checks").mkdir()
        (tmp / "checks" / "test_hostile_check.py").write_text(CHECK)
        app = tmp / "app"
        (app / "migrations" / "versions").mkdir(parents=True)
        (app / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
        (app / "migrations" / "env.py").write_text(ENV_PY)
        (app / "migrations" / "versions" / "0001_markup.py").write_text(MIGRATION)
        [dump] = (tmp / "b").rglob("*.dump")
        done, result = drill("--backup", str(dump), "--checks", str(tmp / "checks"),
                             "--alembic-config", str(app / "alembic.ini"), "--no-record",
                             "--schedule", "1d", backup_dir=tmp / "b", report_dir=tmp / "r")
        assert done.returncode == 1, done.stderr[-3000:]
        yield result, tmp / "r"
    finally:
        with db.connect(pg15.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{DBNAME.replace(chr(34), chr(34) * 2)}" '
                         "WITH (FORCE)")


class Dom(HTMLParser):
    """The elements Chromium built and the text it shows."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_title:
            self.title += data


def open_in_chromium(browser: str, report: Path, tmp_path: Path) -> Dom:
    """The DOM Chromium builds for `report`, its scripts run. The report is opened from a plain
    path: under a database's directory (`x%3Cscript...`) the file URL holds `%`, and
    pytest-html's script stops at history.pushState before it builds its table."""
    html = tmp_path / "report.html"
    html.write_text(report.read_text())
    done = subprocess.run(
        render.chromium_argv(browser, tmp_path / "profile", html, "--dump-dom",
                             "--virtual-time-budget=5000"),
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Dom()
    dom.feed(done.stdout)
    assert dom.title != "PWNED"
    handlers = [(t, k, v) for t, a in dom.elements for k, v in a.items() if k.startswith("on")]
    assert handlers == [("div", "onclick", "location.reload()")]  # pytest-html's own button
    assert [a for t, a in dom.elements if t == "img" and a.get("src") == "x"] == []
    assert len([t for t, _ in dom.elements if t == "script"]) == 1  # pytest-html's own
    assert not [a for t, a in dom.elements if (a.get("href") or "").startswith("javascript")]
    return dom


def test_the_html_report_builds_no_payload_element_with_javascript_on(
    browser: str, hostile_drill: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    result, _ = hostile_drill
    dom = open_in_chromium(browser, Path(result["reports"]["html"]), tmp_path)
    assert dom.title.startswith(f"Restore drill: {DBNAME} (")
    # pytest-html's script ran: its results table has a row per check, user checks included
    # (their ids are the escaped text of our Test cells)
    testids = [a.get("id") or "" for t, a in dom.elements if t == "tbody" and a.get("id")]
    assert len([i for i in testids if "test_hostile[&lt;" in i]) == 2, testids
    shown = "".join(dom.text)
    for literal in (f"<img src=x onerror={PWN}>", f"<script>{PWN}</script>", DBNAME,
                    f"captured <img src=x onerror={PWN}>"):
        assert literal in shown, literal
    checks = {c["name"]: c for c in result["checks"]}
    assert checks[f"test_hostile[<img src=x onerror={PWN}>]"]["outcome"] == "passed"
    assert checks[f"test_hostile[<script>{PWN}</script>]"]["outcome"] == "failed"
    assert checks["test_alembic_upgrade_head_reaches_the_script_head"]["outcome"] == "failed"


def test_the_markdown_report_renders_no_tag_and_every_fence_closes_where_opened(
    hostile_drill: tuple[dict[str, Any], Path]
) -> None:
    result, _ = hostile_drill
    md = Path(result["reports"]["md"]).read_text()
    page = gfm(md)
    assert {t for t, _ in page.tags} <= TAGS_OK | {"h1", "h2"}, {t for t, _ in page.tags}
    failed = [c for c in result["checks"] if c["outcome"] in ("failed", "error")]
    # one fenced block per failure, holding exactly its message: no fence closed early
    assert page.by_tag.get("pre", []) == [c["message"].strip() + "\n" for c in failed]
    assert len(failed) == 2
    assert any("alembic says <img src=x onerror" in c["message"] for c in failed)
    assert page.by_tag["h1"][0].startswith(f"Restore drill: {DBNAME}, ")
    cells = page.by_tag["td"]
    assert cells[cells.index("Database") + 1] == DBNAME
    assert f"seen <img src=x onerror={PWN}> | ```` four; <script>{PWN}</script>" in cells
    assert json.loads(Path(result["reports"]["json"]).read_text())["database"] == DBNAME


def test_a_database_name_with_an_event_handler_stays_text_in_the_html_report(
    browser: str, tmp_path: Path
) -> None:
    """The name a drill was asked for (`--database`) is in the title, the summary and the
    environment table even when no backup of it exists."""
    name = f"x<img src=x onerror={PWN}>`|\""
    (tmp_path / "b").mkdir()
    done, result = drill("--database", name, backup_dir=tmp_path / "b",
                         report_dir=tmp_path / "r")
    assert done.returncode == 1 and result["verdict"] == "FAIL"
    assert result["database"] == name
    dom = open_in_chromium(browser, Path(result["reports"]["html"]), tmp_path)
    assert dom.title.startswith(f"Restore drill: {name} (")
    shown = "".join(dom.text)
    assert shown.count(name) >= 3, shown  # the heading, the summary, the environment table
