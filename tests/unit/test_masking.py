"""The secrets a run parses belong to an object the run's entry point owns."""

from __future__ import annotations

import threading

from backup_core.tools import masking
from backup_core.tools.conninfo import ConnInfo, redact
from tests.helpers import atb_inproc


def test_a_run_masks_what_it_parsed_and_no_other_run_sees_it() -> None:
    first, second = masking.Secrets(), masking.Secrets()
    with masking.owned(first):
        ConnInfo.parse("host=h dbname=d password=first-secret-value")
        with masking.owned(second):
            ConnInfo.parse("host=h dbname=d password=second-secret-value")
            assert masking.current() is second
            assert redact("x first-secret-value y second-secret-value") == \
                "x first-secret-value y ***"
        assert masking.current() is first
        assert redact("first-secret-value second-secret-value") == "*** second-secret-value"
    assert (len(first), len(second)) == (1, 1)
    assert masking.current() is not first  # the owner gave it back


def test_threads_of_a_run_mask_with_the_runs_object() -> None:
    held = masking.Secrets(["thread-visible-secret"])
    seen: list[str] = []
    with masking.owned(held):
        worker = threading.Thread(target=lambda: seen.append(redact("a thread-visible-secret")))
        worker.start()
        worker.join()
    assert seen == ["a ***"]


def test_short_values_are_masked_only_as_passwords_not_in_free_text() -> None:
    held = masking.Secrets(["PASS", "longer-secret"])
    assert len(held) == 1
    assert redact("PASS postgresql://u:PASS@h/db longer-secret", held) == \
        "PASS postgresql://u:***@h/db ***"


def test_the_cli_owns_a_fresh_object_for_each_run() -> None:
    outer = masking.current()
    done = atb_inproc("-v", "db", "backup", env={
        "DATABASE_URL": "postgresql://u:a-cli-secret-1@127.0.0.1:1/d",
        "BACKUP_DIR": "/nonexistent/atb-masking"})
    assert done.returncode == 4
    assert "cannot connect to postgresql://u:***@127.0.0.1:1/d" in done.stderr
    assert "a-cli-secret-1" not in done.stderr + done.stdout
    assert masking.current() is outer
    assert outer.mask("a-cli-secret-1") == "a-cli-secret-1"  # the run's, not ours
