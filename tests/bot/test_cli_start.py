"""``threadflow --help`` starts without the engine: packages export lazily, commands import when they run."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pydantic", "pydantic_settings", "sqlalchemy", "asyncio", "alembic", "numpy", "aiohttp", "workflows.engine")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout.strip()


def test_help_imports_none_of_the_heavy_modules() -> None:
    out = _run(
        "import sys\n"
        "from bot.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert "serve" in out and "runs" in out and "ui" in out  # every command is still listed
    assert out.splitlines()[-1] == "LOADED []"


def test_a_command_help_is_as_light() -> None:
    out = _run(
        "import sys\n"
        "from bot.cli import main\n"
        "try:\n"
        "    main(['schedule', 'add', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert "--tz" in out
    assert out.splitlines()[-1] == "LOADED []"


def test_lazy_packages_export_the_same_names() -> None:
    import bot
    import storage
    import workflows

    for package in (workflows, storage, bot):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
        assert set(package.__all__) <= set(dir(package))


def test_step_and_agent_step_stay_the_decorators_after_their_modules_are_imported() -> None:
    out = _run(
        "import workflows.step, workflows.agent_step\n"
        "import workflows\n"
        "from workflows import step, agent_step\n"
        "print(callable(step) and not hasattr(step, '__path__') and type(step).__name__,"
        " type(agent_step).__name__, type(workflows.step).__name__)\n"
    )
    assert out == "function function function"
