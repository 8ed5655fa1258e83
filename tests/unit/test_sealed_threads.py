"""Your code in the drill's pytest process runs in sealed threads: what is yours is told by
its file, and a sealed generator (a fixture, a hook wrapper) behaves as the original."""

from __future__ import annotations

import errno
import socket
import sys
import threading
from collections.abc import Generator
from pathlib import Path

import _pytest.config
import pytest

from backup_core.tools import seccomp
from drills.plugin import sealed_threads


def _attempt() -> str:
    try:
        socket.socket(socket.AF_UNIX).close()
        return "open"
    except OSError as exc:
        return f"blocked {errno.errorcode[exc.errno or 0]}"


def test_a_sealed_call_opens_no_unix_socket_and_this_thread_still_does() -> None:
    assert sealed_threads.call_sealed(_attempt, name="t") == "blocked EACCES"
    assert sealed_threads.call_sealed(seccomp.unix_sockets_denied, name="t") is True
    assert (_attempt(), seccomp.unix_sockets_denied()) == ("open", False)


def test_a_sealed_generator_steps_sends_throws_and_closes_as_the_original() -> None:
    seen: list[object] = []

    def original(start: int) -> Generator[str, object, str]:
        try:
            got = yield f"{start} {_attempt()}"
            seen.append(got)
            yield "second"
        except KeyError as exc:
            seen.append(f"thrown {exc}")
            yield "after throw"
        finally:
            seen.append(f"closed {threading.current_thread().name}")
        return "done"

    steps = sealed_threads.sealed(original, name="atb-t")(7)
    assert next(steps) == "7 blocked EACCES"
    assert steps.send("sent") == "second"
    with pytest.raises(StopIteration) as stop:
        next(steps)
    assert (stop.value.value, seen) == ("done", ["sent", "closed atb-t"])
    seen.clear()
    again = sealed_threads.sealed(original, name="atb-t")(8)
    next(again)
    assert again.throw(KeyError("k")) == "after throw"
    again.close()
    assert seen == ["thrown 'k'", "closed atb-t"]


def test_a_sealed_function_keeps_its_name_signature_and_marks() -> None:
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(item: object) -> str:
        return _attempt()

    wrapped = sealed_threads.sealed(pytest_runtest_setup, name="t")
    assert (wrapped.__name__, wrapped.pytest_impl, wrapped(item=None)) == (  # type: ignore[attr-defined]
        "pytest_runtest_setup", pytest_runtest_setup.pytest_impl,  # type: ignore[attr-defined]
        "blocked EACCES")
    assert sealed_threads.sealed(wrapped, name="t") is wrapped


def test_yours_is_everything_but_the_drills_own_code(tmp_path: Path) -> None:
    mine = tmp_path / "conftest_like.py"
    mine.write_text("def fixture():\n    return 1\n\nclass Plugin:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import conftest_like  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    assert [sealed_threads.yours(x) for x in (
        conftest_like, conftest_like.fixture, conftest_like.Plugin(), len)] == [
            True, True, True, True]  # a builtin has no file: yours too
    assert [sealed_threads.yours(x) for x in (
        sealed_threads, sealed_threads.sealed, pytest.fixture, _pytest.config.Config,
        pytest.hookimpl)] == [False] * 5


def test_the_installed_pytest_imports_conftests_where_the_drill_can_seal_them() -> None:
    """The drill wraps this (private) method; a pytest without it is refused, not run
    unsealed: this test fails first when pytest changes it."""
    assert callable(getattr(_pytest.config.PytestPluginManager, "_importconftest", None))


def test_outside_the_namespaces_nothing_is_installed() -> None:
    manager = _pytest.config.PytestPluginManager()
    sealed_threads.install(manager)
    assert not hasattr(manager, "_atb_sealing")
    assert "register" not in vars(manager)
