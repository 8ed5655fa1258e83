"""The drill's child loads only the plugins it names; --rto-faithful asks for the server's
defaults; the report says what settings the RTO was measured under."""

from __future__ import annotations

import sys
from pathlib import Path

from backup_core.tools.cluster import FAST_SETTINGS, settings_text
from drills import docker_engine
from drills.options import DrillOptions
from drills.report import rto_text
from drills.result import RtoFacts
from drills.run import drill_argv, drill_env


def test_the_drill_child_loads_only_the_plugins_it_names() -> None:
    assert drill_argv(Path("/t/options.json")) == [
        sys.executable, "-m", "drills.child", "-o", "addopts=", "-p", "pytest_metadata.plugin",
        "-p", "pytest_html.fixtures", "-p", "pytest_html.plugin", "-p", "drills.plugin",
        "-p", "no:cacheprovider", "-p", "no:doctest", "-p", "no:junitxml", "-p", "no:pastebin",
        "-p", "no:unraisableexception", "-v", "--no-header", "-rfEx", "--tb=short", "--drill",
        "--drill-options=/t/options.json"]
    env = drill_env(DrillOptions(), None, {"PATH": "/usr/bin"})
    assert env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] == "1"


def test_rto_faithful_gives_the_docker_sandbox_the_images_defaults() -> None:
    tuned = docker_engine.container_spec("postgres:18")
    assert "-cfsync=off" in tuned.command and "-cwal_level=minimal" in tuned.command
    assert docker_engine.container_spec("postgres:18", faithful=True).command == ("postgres",)
    assert settings_text({}) == "the server's defaults (--rto-faithful)"
    assert settings_text(FAST_SETTINGS).startswith(
        "tuned for a throwaway server: fsync=off, full_page_writes=off, synchronous_commit=off,"
        " wal_level=minimal")


def test_the_rto_line_shows_the_forecast_and_the_settings() -> None:
    rto = RtoFacts(target_s=3600, measured_s=75.0, met=True, forecast_s=60.0,
                   forecast_how="least squares over 4 drills", settings="the server's "
                   "defaults (--rto-faithful)")
    assert rto_text(rto) == ("1m 15s measured, target 1h 00m: met; forecast 1m 00s (least "
                             "squares over 4 drills); sandbox settings: the server's defaults "
                             "(--rto-faithful)")
    assert rto_text(RtoFacts(target_s=60)) == \
        "not measured: the recovery failed at an early phase (target 1m 00s)"
