"""Your code in the drill's pytest process runs where it can open no unix socket.

Inside the drill's namespaces the sandbox is reached on their own loopback; a unix socket
is the one way left out (production's, under any name a link gives it, or the Docker engine's).
atb's own work in this process keeps its sockets, so your code runs in threads of its own
under the seccomp filter (a filter binds one thread and what it starts): your conftest files
as they are imported, every hook they or the plugins they name implement, your check files'
imports, your fixtures and your checks. What is yours is decided by the file it came from:
everything that is not the drill's own code (atb, pytest, pluggy, the report's plugins)."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from backup_core.tools import namespaces, seccomp

# the drill's pytest child is made of these (`drills.run.CHILD_PLUGINS` and what they need)
OWN_PACKAGES = ("drills", "backup_core", "_pytest", "pytest", "pluggy", "pytest_html",
                "pytest_metadata")
ATB_PACKAGES = ("drills", "backup_core")


def in_sealed_thread(work: Callable[[], object], *, name: str) -> None:
    """Run `work` in a new thread that can open no unix socket, raising what it raised
    (pytest's outcomes, skip and fail, are BaseExceptions: they pass through too). In a
    thread sealed already, it runs there."""
    if seccomp.unix_sockets_denied():
        work()
        return
    raised: list[BaseException] = []

    def sealed() -> None:
        try:
            seccomp.deny_unix_sockets()
            work()
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=sealed, name=name)
    worker.start()
    worker.join()
    if raised:
        raise raised[0]


def call_sealed(func: Callable[..., Any], *args: Any, name: str, **kwargs: Any) -> Any:
    box: list[Any] = []
    in_sealed_thread(lambda: box.append(func(*args, **kwargs)), name=name)
    return box[0]


def sealed(func: Callable[..., Any], *, name: str) -> Callable[..., Any]:
    """`func`, each call run in a sealed thread, with its signature and marks kept (pytest
    and pluggy read both); a generator function stays one, each of its steps sealed."""
    if getattr(func, "_atb_sealed", False):
        return func
    if inspect.isgeneratorfunction(func):
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            steps = func(*args, **kwargs)  # runs nothing yet
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                try:
                    value = (call_sealed(steps.throw, thrown, name=name) if thrown is not None
                             else call_sealed(steps.send, sent, name=name))
                except StopIteration as stop:
                    return stop.value
                try:
                    sent, thrown = (yield value), None
                except GeneratorExit:
                    in_sealed_thread(steps.close, name=name)
                    raise
                except BaseException as exc:  # thrown in by pluggy or pytest: passed on
                    sent, thrown = None, exc
    else:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return call_sealed(func, *args, name=name, **kwargs)
    wrapper._atb_sealed = True  # type: ignore[attr-defined]
    return wrapper


@functools.cache
def _dirs(packages: tuple[str, ...]) -> tuple[Path, ...]:
    found = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        for where in (spec.submodule_search_locations or []) if spec else []:
            found.append(Path(where).resolve())
    return tuple(found)


def _file(obj: object) -> Path | None:
    """The file `obj` (a module, a function, a partial of one, a class or an instance of one)
    was loaded from."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    try:
        target = obj if isinstance(obj, ModuleType) or inspect.isroutine(obj) \
            or inspect.isclass(obj) else type(obj)
        return Path(inspect.getfile(target)).resolve()
    except (TypeError, OSError):
        return None


def yours_at(where: Path) -> bool:
    return not any(where.is_relative_to(d) for d in _dirs(OWN_PACKAGES))


def yours(obj: object) -> bool:
    """Not the drill's own code (atb, pytest, pluggy, the report's plugins), by its file;
    what has no file is yours too."""
    where = _file(obj)
    return where is None or yours_at(where)


def atbs(obj: object) -> bool:
    """atb's own code (the one part of the drill that needs its sockets), by its file."""
    where = _file(obj)
    return where is not None and any(where.is_relative_to(d) for d in _dirs(ATB_PACKAGES))


def seal_hooks(plugin: object) -> None:
    """Every hook `plugin` implements, run sealed (pluggy reads them from its attributes)."""
    for attr in dir(plugin):
        method = getattr(plugin, attr, None)
        if not inspect.isroutine(method) or getattr(method, "_atb_sealed", False) or not (
                attr.startswith("pytest_") or hasattr(method, "pytest_impl")):
            continue
        try:
            setattr(plugin, attr, sealed(method, name=f"atb-hook-{attr}"))
        except (AttributeError, TypeError) as exc:
            raise pytest.UsageError(f"the drill cannot run the hook {attr} of {plugin!r} "
                                    f"sealed: {exc}") from exc


def install(pluginmanager: pytest.PytestPluginManager) -> None:
    """Inside the drill's namespaces (and not sealed whole already, as an integration
    command is): conftest files are imported in a sealed thread, and every plugin registered
    from now on that is yours has its hooks run sealed."""
    if not namespaces.already_inside() or seccomp.unix_sockets_denied() \
            or getattr(pluginmanager, "_atb_sealing", False):
        return
    importconftest = getattr(pluginmanager, "_importconftest", None)
    if importconftest is None:  # fail closed: a pytest that loads conftests otherwise
        raise pytest.UsageError("this pytest imports conftest files in a way the drill cannot "
                                "seal; install pytest 8 or 9")
    register = pluginmanager.register

    def sealing_register(plugin: object, name: str | None = None) -> str | None:
        if yours(plugin):
            seal_hooks(plugin)
        return register(plugin, name)

    def sealed_importconftest(*args: Any, **kwargs: Any) -> Any:
        return call_sealed(importconftest, *args, name="atb-conftest", **kwargs)

    pluginmanager.register = sealing_register  # type: ignore[method-assign]
    pluginmanager._importconftest = sealed_importconftest  # type: ignore[method-assign]
    pluginmanager._atb_sealing = True  # type: ignore[attr-defined]
