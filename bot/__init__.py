"""The Slack adapter: slash commands, approval buttons, thread chat, progress rendering, and the CLI.

Names are imported on first use (see :mod:`storage.lazy`): ``threadflow --help`` imports no settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage.lazy import lazy_exports

if TYPE_CHECKING:
    from .settings import Settings, SettingsError, load_settings

__getattr__, __dir__ = lazy_exports(globals(), {
    "Settings": ".settings", "SettingsError": ".settings", "load_settings": ".settings",
})

__all__ = ["Settings", "SettingsError", "load_settings"]
