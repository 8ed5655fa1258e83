"""The suite's own shape: which tests are `slow` is decided by rule, and a fast test cannot
start a server, a container, a browser, pgBackRest or a drill."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import starts_something_slow

CONFTEST = Path(__file__).parents[1] / "conftest.py"


@pytest.mark.parametrize(("argv", "slow"), [
    (["/usr/lib/postgresql/15/bin/initdb", "-D", "/tmp/d"], True),
    (["/usr/lib/postgresql/15/bin/pg_ctl", "-D", "/tmp/d", "start"], True),
    (["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/postgres", "-D", "d"], True),
    (["docker", "run", "atb-postgres:15"], True),
    (["chromium", "--headless", "--print-to-pdf=r.pdf", "r.html"], True),
    (["pgbackrest", "--stanza=trading", "backup"], True),
    ([sys.executable, "-m", "drills.cli", "drill", "run", "--backup", "b.dump"], True),
    ([sys.executable, "-m", "pytest", "--drill", "--backup", "b.dump"], True),
    (["/usr/lib/postgresql/15/bin/postgres", "--version"], False),
    (["/usr/lib/postgresql/15/bin/pg_dump", "--version"], False),
    (["pg_dump", "-Fc", "-d", "app"], False),
    ([sys.executable, "-m", "drills.cli", "db", "list"], False),
    ("initdb -D /tmp/d", False),  # a string is one program name, never a shell line here
])
def test_what_counts_as_starting_something_slow(argv: list[str] | str, slow: bool) -> None:
    assert starts_something_slow(argv) is slow


def test_a_fast_test_that_starts_a_server_fails_at_once() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"is not slow but starts \['initdb'"):
        subprocess.run(["initdb", "-D", "/nonexistent/atb-never"], check=False)


def test_integration_tests_and_cluster_fixtures_are_slow_unless_marked_fast(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n"
                     "markers =\n    slow: s\n    fast: f\n    docker: d\n")
    pytester.makeconftest(CONFTEST.read_text())
    pytester.mkpydir("integration")
    pytester.mkpydir("unit")
    Path(pytester.path / "integration" / "test_new.py").write_text(
        "import pytest\n\n"
        "def test_unmarked():\n    pass\n\n"
        "@pytest.mark.fast\ndef test_declared_fast():\n    pass\n")
    Path(pytester.path / "unit" / "test_pure.py").write_text(
        "def test_pure():\n    pass\n\n"
        "def test_asks_for_a_cluster(pg15):\n    pass\n")
    fast = pytester.runpytest("--collect-only", "-q", "-m", "not slow")
    assert sorted(ln for ln in fast.outlines if "::" in ln) == [
        "integration/test_new.py::test_declared_fast", "unit/test_pure.py::test_pure"]
    slow = pytester.runpytest("--collect-only", "-q", "-m", "slow")
    assert sorted(ln for ln in slow.outlines if "::" in ln) == [
        "integration/test_new.py::test_unmarked", "unit/test_pure.py::test_asks_for_a_cluster"]


def test_a_fast_marker_on_a_test_using_a_cluster_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    slow: s\n    fast: f\n")
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_lie="import pytest\n\n"
                                 "@pytest.mark.fast\ndef test_lie(pg15):\n    pass\n")
    done = pytester.runpytest("--collect-only", "-q")
    assert done.ret == pytest.ExitCode.USAGE_ERROR
    assert "test_lie.py::test_lie is marked fast but uses pg15: drop the fast marker" in \
        done.errlines[0]


def test_programs_are_started_only_by_the_runner() -> None:
    """One way to run a subprocess: every call that starts a program in the product's code is
    in backup_core/tools/runner.py (argv logged redacted, environment sealed)."""
    root = Path(__file__).resolve().parents[2]
    starters = {"Popen", "run", "call", "check_call", "check_output", "getoutput", "system",
                "popen", "spawnv", "spawnvp", "posix_spawn"}
    found = []
    for path in sorted([*root.glob("backup_core/**/*.py"), *root.glob("drills/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id in ("subprocess", "os") \
                    and node.func.attr in starters:
                found.append((str(path.relative_to(root)), node.lineno))
    assert sorted(found) == [("backup_core/tools/runner.py", n) for n in _runner_lines(root)]


def _runner_lines(root: Path) -> list[int]:
    text = (root / "backup_core/tools/runner.py").read_text().splitlines()
    lines = [i for i, line in enumerate(text, 1)
             if "subprocess.run(" in line or "subprocess.Popen(" in line]
    assert len(lines) == 3  # run, spawn, spawn_text
    return lines
