"""``threadflow doctor`` lists runs stranded on a workflow version nothing running (nor its modules) has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import update

from storage.tables import runs
from tests.helpers.nested_model_flows import order_flow
from tests.helpers.versioned_flows import deploy_v1
from tests.ops.conftest import ROOT, cli_env
from workflows import Engine
from workflows.versions import legacy_fingerprint


def doctor(tmp_path: Path, flows: str, module: str = "tests.helpers.versioned_flows") -> subprocess.CompletedProcess[str]:
    env = cli_env(tmp_path, THREADFLOW_WORKFLOWS=f"{module}:{flows}")
    return subprocess.run([sys.executable, "-m", "bot.cli", "doctor"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


async def test_doctor_lists_a_stranded_run_and_is_content_once_its_version_is_registered(tmp_path: Path) -> None:
    engine = Engine.from_url(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}", poll_interval=0.05)
    engine.register(deploy_v1())
    run_id = (await (await engine.start("deploy", {})).result(timeout=15)).run_id
    await engine.close()

    stranded = doctor(tmp_path, "V2")
    line = next(ln for ln in stranded.stdout.splitlines() if "Stranded runs" in ln)
    assert line.startswith("[FAIL] Stranded runs: 1 unfinished run(s)")
    assert f"{run_id} (deploy version 1 ({deploy_v1().fingerprint[:8]}), suspended)" in line
    assert "threadflow rerun RUN --from STEP" in line
    assert stranded.returncode == 1

    fine = doctor(tmp_path, "BOTH")
    assert "[ ok ] Stranded runs: every unfinished run's workflow version is registered." in fine.stdout


async def test_doctor_is_content_with_a_run_recorded_when_nested_model_class_names_counted(tmp_path: Path) -> None:
    """A run recorded before nested models were named by place carries its definition's fingerprint of then; the
    same definition, registered now, still executes it (see ``legacy_fingerprint``): it is not stranded."""
    wf = order_flow()
    assert legacy_fingerprint(wf) != wf.fingerprint  # (nested models: the class name was part of it)
    engine = Engine.from_url(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}", poll_interval=0.05)
    engine.register(wf)
    run_id = (await (await engine.start("order", {"items": [{"sku": "A-1"}]})).result(timeout=15)).run_id

    async def as_recorded_before(conn: Any) -> None:  # what threadflow recorded before the upgrade
        await conn.execute(update(runs).where(runs.c.id == run_id).values(workflow_fingerprint=legacy_fingerprint(wf)))

    await engine.db.write(as_recorded_before)
    await engine.close()

    checked = doctor(tmp_path, "ORDER", module="tests.helpers.nested_model_flows")
    assert "[ ok ] Stranded runs: every unfinished run's workflow version is registered." in checked.stdout, checked.stdout
