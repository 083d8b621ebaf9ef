"""The Slack adapter: slash commands, approval buttons, thread chat, progress rendering, and the CLI."""

from .settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
