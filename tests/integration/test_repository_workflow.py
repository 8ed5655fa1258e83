"""The CI template `.github/workflows/restore-drill.yml` really runs: its `run:` steps are
executed in order by bash, as GitHub runs them, against the suite's object store; its `uses:`
steps are stood in by what they set up (the checkout: the example application; Python: this
interpreter; the artifact upload: the reports it would upload)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import yaml
from pyrage import x25519

from backup_core.tools.conninfo import ConnInfo
from drills.demo import example_dir
from tests.helpers import atb_inproc, copy_backup, oldest
from tests.object_store import ObjectStore

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "restore-drill.yml"
EXPRESSION = re.compile(r"\$\{\{\s*([a-z]+)\.([A-Za-z_]+)\s*\}\}")


def _expand(value: str, contexts: dict[str, dict[str, str]]) -> str:
    return EXPRESSION.sub(lambda m: contexts[m.group(1)].get(m.group(2), ""), str(value))


def test_the_workflow_template_drills_from_the_repository_with_read_only_keys(
        object_store: ObjectStore, history: tuple[ConnInfo, Path], tmp_path: Path,
        sandbox_tmp: Path) -> None:
    """The disaster-recovery drill: an encrypted backup pushed from the backup host, drilled
    by the workflow's own steps on a runner with only read-only keys and the identity (no
    BACKUP_DIR, no DATABASE_URL). Restored, migrated, every check passed (the RPO judged from
    the schedule, a miss a finding: PASS, exit 0); the output names the object and its
    hashes; the identity never touched the disk and the download is gone."""
    repo = f"s3://{object_store.bucket}/wf-{uuid.uuid4().hex[:8]}"
    ident = x25519.Identity.generate()
    host = tmp_path / "host"
    copy_backup(oldest(history[1]), host)
    pushed = atb_inproc("db", "push", "--backup-dir", str(host), "--repo", repo,
                        env={**object_store.env(), "BACKUP_ENCRYPT_TO": str(ident.to_public())})
    assert pushed.returncode == 0, pushed.stderr
    flow = yaml.safe_load(WORKFLOW.read_text())
    runner_temp, workspace = tmp_path / "runner", tmp_path / "workspace"
    runner_temp.mkdir()
    ro = object_store.env(read_only=True)
    contexts = {"inputs": {"backup": ""}, "secrets": {
        "BACKUP_REPO": repo, "AWS_ACCESS_KEY_ID": ro["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": ro["AWS_SECRET_ACCESS_KEY"],
        "AWS_ENDPOINT_URL": object_store.endpoint, "AWS_REGION": "us-east-1",
        "ATB_AGE_IDENTITY": f"# the drill's identity\n{ident}"}}
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "pip").write_text('#!/bin/sh\necho "$@" > "$RUNNER_TEMP/pip-args"\n')
    (shims / "pip").chmod(0o755)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "ATB_", "BACKUP_", "DATABASE_URL"))}
    base.update({"PATH": f"{shims}:{Path(sys.executable).parent}:{base['PATH']}",
                 "RUNNER_TEMP": str(runner_temp), "TMPDIR": str(sandbox_tmp),
                 **{k: _expand(v, contexts) for k, v in flow["env"].items()},
                 # the application's settings: the example app, a local sandbox
                 "ATB_SANDBOX": "local", "ATB_SCHEDULE": "5d",  # the history is 4 days old
                 # the application's suite is the local drill tests' business: a stand-in
                 "ATB_INTEGRATION_CMD": "true"})
    codes, outputs = [], []
    for step in flow["jobs"]["drill"]["steps"]:
        if "uses" in step:
            action = step["uses"].split("@")[0]
            if action == "actions/checkout":
                shutil.copytree(example_dir(), workspace,
                                ignore=shutil.ignore_patterns("__pycache__"))
            elif action == "actions/upload-artifact":
                reports = workspace / step["with"]["path"]
                assert {p.suffix for p in reports.rglob("*.*")} >= {".html", ".json", ".md"}
            else:
                assert action == "actions/setup-python"  # this interpreter, on PATH
            continue
        env = {**base, **{k: _expand(v, contexts) for k, v in step.get("env", {}).items()}}
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                               step["run"]], cwd=workspace, env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        codes.append(done.returncode)
        outputs.append(done.stdout + done.stderr)
    assert (runner_temp / "pip-args").read_text().split() == [
        "install", "atb-backup-drills[drill,embedded,s3]"]
    assert codes == [0, 0], "\n".join(outputs)
    drill_out = outputs[1]
    assert "Verdict:       PASS" in drill_out, drill_out
    key = json.loads(atb_inproc("db", "list", "--repo", repo, "--json",
                                env=ro).stdout)[0]["path"]
    assert f"Object:        {key}.age" in drill_out
    assert "Encryption:    age" in drill_out and "Fetch/verify:" in drill_out
    report = json.loads(next((workspace / "reports").rglob("*.json")).read_text())
    assert report["verdict"] == "PASS"
    assert {c["name"]: c["outcome"] for c in report["checks"]
            if c["outcome"] != "passed"} == {"test_schedule_meets_the_rpo_target": "finding"}
    assert sorted(p.name for p in runner_temp.iterdir()) == ["pip-args"]  # no identity
    assert not list(sandbox_tmp.glob("atb-fetch-*"))
