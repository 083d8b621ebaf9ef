"""Where the ``threadflow`` command takes its settings from: ``.env`` as well as the environment (README,
"Running it in your Slack workspace"), and a malformed one as one line with exit status 2 (README, "The CLI").

The settings go only into ``.env`` (or only into the environment), and the real command runs as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.settings import Settings
from tests.fakes import DUMMY_KEY, FakeOpenAI
from tests.helpers.processes import ROOT, run_cli


async def threadflow(cwd: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """``threadflow ARGS`` in ``cwd`` with only ``env`` set; this event loop keeps serving the fakes meanwhile."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("THREADFLOW_", "SLACK_", "OPENAI_"))}
    full.update(env, PYTHONPATH=str(ROOT))
    return await run_cli(cwd, args, full)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(profile="openai") as fake:
        yield fake


async def test_model_settings_in_dotenv_are_used_by_agents(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """Settings read ``.env``, but agents read their model from the environment: they answered offline."""
    (tmp_path / ".env").write_text(
        f"OPENAI_API_KEY={DUMMY_KEY}\nOPENAI_BASE_URL={fake_openai.base_url}\nTHREADFLOW_MODEL=openai:gpt-4o-mini\n"
        f"THREADFLOW_DATABASE_URL=sqlite+aiosqlite:///{tmp_path / 'x.db'}\n")
    fake_openai.reply_text("Hello from the configured server.")
    code, out, err = await threadflow(tmp_path, "run", "chat-flow", "--input", '{"prompt": "hi there"}')
    assert code == 0, out + err
    result = json.loads(out)
    assert result["status"] == "success"
    assert "offline" not in result["output"]["text"], result["output"]
    assert fake_openai.chat_requests, "the agent never called the model server named in .env"


async def test_workspace_setting_in_dotenv_is_where_deploy_app_writes(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"THREADFLOW_WORKSPACE={tmp_path / 'tf-out'}\nTHREADFLOW_DATABASE_URL=sqlite+aiosqlite:///{tmp_path / 'x.db'}\n")
    code, out, err = await threadflow(tmp_path, "run", "deploy-app", "--input", '{"cost_threshold": 100000}')
    assert code in (0, 1), out + err
    run_id = json.loads(out)["run_id"]
    assert list((tmp_path / "tf-out" / run_id).glob("*.tf")), "no .tf files under THREADFLOW_WORKSPACE from .env"


async def test_the_environment_wins_over_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"THREADFLOW_WORKSPACE={tmp_path / 'from-dotenv'}\n")
    code, out, err = await threadflow(tmp_path, "run", "deploy-app", "--input", '{"cost_threshold": 100000}',
                                      THREADFLOW_WORKSPACE=str(tmp_path / "from-env"),
                                      THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert code in (0, 1), out + err
    assert (tmp_path / "from-env").exists() and not (tmp_path / "from-dotenv").exists()


@pytest.mark.parametrize(("name", "value"), [("THREADFLOW_SQLITE_BUSY_TIMEOUT_MS", "30s"),
                                             ("THREADFLOW_SQLITE_SYNCHRONOUS", "FUL")])
async def test_a_malformed_sqlite_setting_is_one_line_and_exit_2(tmp_path: Path, name: str, value: str) -> None:
    """Unchecked, the busy timeout was a ValueError traceback (exit 1), and a synchronous typo silently NORMAL."""
    code, _, err = await threadflow(tmp_path, "run", "greet-user", "--input", '{"name": "Ada"}', **{name: value},
                                    THREADFLOW_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert "Traceback" not in err, err[-600:]
    assert code == 2 and err.startswith(f"error: {name} must be") and err.count("\n") == 1, (code, err)


@pytest.mark.parametrize("level", ["warn", "WARNING", "fatal", "debug"])
def test_log_levels_logging_itself_knows_are_accepted(level: str) -> None:
    """``WARN`` and ``FATAL`` are Python logging's own names too: a deployment that set one kept starting."""
    assert Settings(log_level=level).logging_problems() == []


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("THREADFLOW_LOG_LEVEL", "verbose", "'verbose' is not a log level; use DEBUG, INFO, WARNING or ERROR."),
    ("THREADFLOW_LOG_FORMAT", "yaml", "'yaml' is not a log format; use text (the default) or json."),
])
async def test_a_misspelt_log_setting_stops_worker_with_one_line_and_exit_2(tmp_path: Path, name: str, value: str,
                                                                            reason: str) -> None:
    """README: THREADFLOW_LOG_LEVEL is DEBUG, INFO, WARNING or ERROR. A misspelt one crashed ``serve`` and
    ``worker`` at start with a ValueError traceback; an unknown format was silently text."""
    database = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADFLOW_", "SLACK_", "OPENAI_"))}
    env |= {name: value, "THREADFLOW_DATABASE_URL": database, "PYTHONPATH": str(ROOT)}
    code, _, err = await run_cli(tmp_path, ("worker",), env, timeout=20)
    assert "Traceback" not in err, err[-600:]
    assert (code, err) == (2, f"error: Setting {name} is invalid: {reason}\n")
    # Only the commands that set up logging read them: the others still work (and doctor names them).
    assert (await threadflow(tmp_path, "runs", **{name: value}, THREADFLOW_DATABASE_URL=database))[0] == 0


PASSWORD = "Sup3rSecretPw"


@pytest.mark.parametrize("command", ["runs", "doctor"])
@pytest.mark.parametrize(("url", "reason"), [
    # One slash missing (an easy typo): SQLAlchemy cannot parse it at all.
    (f"postgresql:/threadflow:{PASSWORD}@db.internal/threadflow", "it must start with a scheme and ://"),
    # A port that is not a number: SQLAlchemy's parser raised a ValueError, a traceback from every command.
    (f"postgresql://threadflow:{PASSWORD}@db.internal:54x32/threadflow", "its port is not a number"),
])
async def test_a_malformed_database_url_is_refused_without_its_password(tmp_path: Path, command: str, url: str,
                                                                        reason: str) -> None:
    """Refused with the reason and the URL as typed, the password as ``***`` (terminals, CI logs, doctor reports
    pasted into issues), as every other database error shows it; never as a traceback."""
    code, out, err = await threadflow(tmp_path, command, THREADFLOW_DATABASE_URL=url)
    assert code != 0
    assert "Traceback" not in err, err[-600:]
    assert "is not a valid SQLAlchemy URL" in out + err and reason in out + err
    assert "threadflow:***@db.internal" in out + err  # the URL, to find the typo in...
    assert PASSWORD not in out + err  # ...but never the password


def test_secrets_in_dotenv_stay_out_of_the_environment_steps_see(tmp_path: Path) -> None:
    """Step and tool code (and every process a step starts) sees the environment: .env's Slack and bot secrets are
    read by the settings only; the model's settings, which agents read from the environment, are exported."""
    (tmp_path / ".env").write_text("SLACK_BOT_TOKEN=xoxb-dotenv-secret\nSLACK_SIGNING_SECRET=s3cret\n"
                                   "THREADFLOW_ENCRYPTION_KEY=k3y\nOPENAI_API_KEY=sk-model\nOTHER_APP_SETTING=x\n")
    script = ("import json, os; from bot.settings import load_settings; s = load_settings(); "
              "print(json.dumps([s.slack_bot_token.get_secret_value(), {k: os.environ.get(k) for k in "
              "('SLACK_BOT_TOKEN', 'SLACK_SIGNING_SECRET', 'THREADFLOW_ENCRYPTION_KEY', 'OPENAI_API_KEY', "
              "'OTHER_APP_SETTING')}]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "THREADFLOW_", "OPENAI_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    token, seen = json.loads(done.stdout)
    assert token == "xoxb-dotenv-secret"  # the settings read it
    assert seen == {"SLACK_BOT_TOKEN": None, "SLACK_SIGNING_SECRET": None, "THREADFLOW_ENCRYPTION_KEY": None,
                    "OPENAI_API_KEY": "sk-model", "OTHER_APP_SETTING": None}
