"""The isolation probe's yes is kept for this boot only, only as a yes, and only in a
private directory of ours: an old or planted answer can never lower a drill's isolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from backup_core.tools import isolation, isolation_cache


def test_the_key_changes_with_every_fact_the_answer_depends_on() -> None:
    parts = isolation_cache.key_parts("/usr/bin/unshare", [isolation_cache.__file__])
    assert parts[0] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    key = isolation_cache.probe_key(parts)
    assert key == isolation_cache.probe_key(list(parts))
    for i in range(len(parts)):
        changed = [*parts[:i], parts[i] + "x", *parts[i + 1:]]
        assert isolation_cache.probe_key(changed) != key


def test_only_a_yes_in_a_private_directory_of_ours_is_remembered(tmp_path: Path) -> None:
    root = tmp_path / "isolation"
    assert not isolation_cache.remembered(root, "k")
    isolation_cache.remember(root, "k")
    assert root.stat().st_mode & 0o777 == 0o700
    assert isolation_cache.remembered(root, "k")
    assert not isolation_cache.remembered(root, "other")
    assert [p.name for p in root.iterdir()] == ["probe-k"]  # no temporary left
    root.chmod(0o770)  # others may write here: nothing in it is trusted
    assert not isolation_cache.remembered(root, "k")
    root.chmod(0o700)
    (root / "probe-no").write_text("environment only\n")  # anything but a yes is no entry
    assert not isolation_cache.remembered(root, "no")
    (root / "probe-link").symlink_to(root / "probe-k")
    assert not isolation_cache.remembered(root, "link")
    isolation_cache.forget(root, "k")
    assert not isolation_cache.remembered(root, "k")


def test_the_probe_keeps_its_yes_and_a_failed_launch_forgets_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATB_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ATB_ISOLATION", raising=False)
    isolation.probe.cache_clear()
    try:
        first = isolation.probe()
        kept = sorted(p.name for p in (tmp_path / "isolation").glob("probe-*")) \
            if (tmp_path / "isolation").is_dir() else []
        if not first.network:  # this machine cannot isolate: nothing is kept
            assert kept == []
            return
        assert len(kept) == 1
        isolation.probe.cache_clear()
        ran: list[object] = []
        monkeypatch.setattr(isolation, "run", lambda *a, **k: ran.append(a))
        assert isolation.probe() == first  # from the kept yes: the launcher not run
        assert ran == []
        isolation.forget_probe()
        assert list((tmp_path / "isolation").glob("probe-*")) == []
    finally:
        isolation.probe.cache_clear()
