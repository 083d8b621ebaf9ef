"""Settings from the environment or a ``.env`` file (pydantic-settings). Secrets stay ``SecretStr``.

:func:`load_settings` also copies the ``.env`` file into ``os.environ`` (a variable already set wins): the
parts of threadflow that run without a :class:`Settings` object (an agent's model, deploy-app's workspace,
the SQLite tuning) read the environment, and a setting must mean the same wherever it is put.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from storage.urls import DEFAULT_DATABASE_URL

SLACK_API_URL = "https://slack.com/api/"
ENV_FILE = ".env"
#: THREADFLOW_LOG_LEVEL (any case; the README names the first four) and THREADFLOW_LOG_FORMAT.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "WARN", "FATAL", "NOTSET")  # (logging's own names)
LOG_FORMATS = ("text", "json")


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it in one line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore", populate_by_name=True)

    slack_bot_token: SecretStr | None = Field(None, validation_alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(None, validation_alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(None, validation_alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field(SLACK_API_URL, validation_alias="SLACK_API_URL")
    command: str = Field("/flow", validation_alias="THREADFLOW_COMMAND")
    host: str = Field("0.0.0.0", validation_alias="THREADFLOW_HOST")
    port: int = Field(3000, validation_alias="THREADFLOW_PORT", ge=0, le=65535)
    public_url: str | None = Field(None, validation_alias="THREADFLOW_PUBLIC_URL")
    database_url: str = Field(DEFAULT_DATABASE_URL, validation_alias="THREADFLOW_DATABASE_URL")
    approvers: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias="THREADFLOW_APPROVERS")
    workflows: str = Field("", validation_alias="THREADFLOW_WORKFLOWS")
    model: str | None = Field(None, validation_alias="THREADFLOW_MODEL")
    embedder: str | None = Field(None, validation_alias="THREADFLOW_EMBEDDER")
    model_profile: str | None = Field(None, validation_alias="THREADFLOW_MODEL_PROFILE")
    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(None, validation_alias="OPENAI_BASE_URL")
    workspace_dir: str = Field("threadflow-workspace", validation_alias="THREADFLOW_WORKSPACE")
    log_level: str = Field("INFO", validation_alias="THREADFLOW_LOG_LEVEL")
    log_format: str = Field("text", validation_alias="THREADFLOW_LOG_FORMAT")
    progress_interval: float = Field(1.0, validation_alias="THREADFLOW_PROGRESS_INTERVAL", ge=0)
    slack_timeout: float = Field(10.0, validation_alias="THREADFLOW_SLACK_TIMEOUT", gt=0)
    slack_pacing: bool = Field(True, validation_alias="THREADFLOW_SLACK_PACING")
    # Agents' answers streamed into threads (chat.startStream/appendStream/stopStream); false: posted whole.
    slack_streaming: bool = Field(True, validation_alias="THREADFLOW_SLACK_STREAMING")
    slack_stream_interval: float = Field(0.4, validation_alias="THREADFLOW_SLACK_STREAM_INTERVAL", ge=0)
    max_connections: int = Field(512, validation_alias="THREADFLOW_MAX_CONNECTIONS", gt=0)
    http_timeout: float = Field(15.0, validation_alias="THREADFLOW_HTTP_TIMEOUT", gt=0)
    lease_seconds: float = Field(30.0, validation_alias="THREADFLOW_LEASE_SECONDS", gt=0)
    poll_interval: float = Field(1.0, validation_alias="THREADFLOW_POLL_INTERVAL", gt=0)
    timezone: str = Field("UTC", validation_alias="THREADFLOW_TIMEZONE")
    retention_days: float = Field(30.0, validation_alias="THREADFLOW_RETENTION_DAYS", gt=0)
    schedule_interval: float = Field(15.0, validation_alias="THREADFLOW_SCHEDULE_INTERVAL", gt=0)
    # The run inspector (``threadflow ui``; ``serve`` too with THREADFLOW_UI=true); see bot/inspector.
    ui: bool = Field(False, validation_alias="THREADFLOW_UI")
    ui_host: str = Field("127.0.0.1", validation_alias="THREADFLOW_UI_HOST")
    ui_port: int = Field(8090, validation_alias="THREADFLOW_UI_PORT", ge=0, le=65535)
    ui_token: SecretStr | None = Field(None, validation_alias="THREADFLOW_UI_TOKEN")
    ui_url: str | None = Field(None, validation_alias="THREADFLOW_UI_URL")
    ui_secret: SecretStr | None = Field(None, validation_alias="THREADFLOW_UI_SECRET")
    slack_client_id: str | None = Field(None, validation_alias="SLACK_CLIENT_ID")
    slack_client_secret: SecretStr | None = Field(None, validation_alias="SLACK_CLIENT_SECRET")
    # Installs through OAuth (many workspaces): with the client id and secret above, a secret that signs the
    # OAuth state, and the key(s) that encrypt the stored tokens (Fernet; comma-separated: the first encrypts).
    slack_state_secret: SecretStr | None = Field(None, validation_alias="SLACK_STATE_SECRET")
    encryption_key: SecretStr | None = Field(None, validation_alias="THREADFLOW_ENCRYPTION_KEY")
    # Turn on when the app has token rotation enabled (the manifest says so; installs get refresh tokens).
    slack_token_rotation: bool = Field(False, validation_alias="SLACK_TOKEN_ROTATION")
    max_recoveries: int = Field(3, validation_alias="THREADFLOW_MAX_RECOVERIES", ge=1)
    step_timeout: float | None = Field(None, validation_alias="THREADFLOW_STEP_TIMEOUT", gt=0)

    @field_validator("step_timeout", mode="before")
    @classmethod
    def _no_timeout(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("approvers", mode="before")
    @classmethod
    def _split_approvers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.replace(" ", ",").split(",") if v.strip()]
        return value

    @field_validator("command")
    @classmethod
    def _command_has_slash(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith("/") or " " in value:
            raise ValueError("must be a slash command like /flow")
        return value

    @field_validator("model_profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        from workflows.model_capabilities import PROFILE_NAMES

        if value is None or not value.strip():
            return None
        value = value.strip().lower()
        if value not in PROFILE_NAMES:
            raise ValueError(f"must be one of {', '.join(PROFILE_NAMES)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        value = value.strip()
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a known time zone; use an IANA name like UTC or Europe/Oslo") from None
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _api_url_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @property
    def model_name(self) -> str:
        """The model agents use: THREADFLOW_MODEL, else OpenAI when a key is set, else the offline model."""
        if self.model:
            return self.model
        return "openai:gpt-4o-mini" if self.openai_api_key else "offline"

    @property
    def oauth_enabled(self) -> bool:
        """Installs through OAuth (``/slack/install``): the client id, client secret and state secret are set."""
        return bool(self.slack_client_id and _set(self.slack_client_secret) and _set(self.slack_state_secret))

    @property
    def slack_oauth_url(self) -> str:
        """Slack's authorize page, beside the Web API (the emulator serves both on one host)."""
        base = self.slack_api_url.rstrip("/")
        base = base[: -len("/api")] if base.endswith("/api") else base
        return base + "/oauth/v2/authorize"

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None and bool(self.slack_app_token.get_secret_value().strip())

    def logging_problems(self) -> list[tuple[str, str]]:
        """What is malformed in THREADFLOW_LOG_LEVEL and THREADFLOW_LOG_FORMAT, as (setting, message) pairs.

        Checked where logging is set up (``serve``, ``worker``, ``dev``, ``ui``: see ``require_logging``) and by
        ``doctor``, not when settings load: the other commands log warnings as plain text whatever these say,
        and a misspelt log level should not stop ``threadflow runs`` or ``migrate``."""
        problems: list[tuple[str, str]] = []
        if self.log_level.strip().upper() not in LOG_LEVELS:
            problems.append(("THREADFLOW_LOG_LEVEL", f"{self.log_level!r} is not a log level; use DEBUG, INFO, "
                             "WARNING or ERROR"))
        if self.log_format.strip().lower() not in LOG_FORMATS:
            problems.append(("THREADFLOW_LOG_FORMAT", f"{self.log_format!r} is not a log format; use text "
                             "(the default) or json"))
        return problems

    def require_logging(self) -> None:
        """Stop start-up with one line naming the first malformed logging setting."""
        problems = self.logging_problems()
        if problems:
            env, problem = problems[0]
            raise SettingsError(f"Setting {env} is invalid: {problem}.")

    def require_slack(self) -> None:
        """Stop start-up with one clear line naming the first missing Slack setting.

        Socket Mode (``SLACK_APP_TOKEN``) needs no signing secret: Slack's requests arrive over a connection
        the app token authenticates, not as signed HTTP requests."""
        if self.oauth_enabled:
            # Many workspaces: each one's token comes from its install; there is no single bot token.
            required: list[tuple[str, SecretStr | None]] = [("SLACK_SIGNING_SECRET", self.slack_signing_secret),
                                                            ("THREADFLOW_ENCRYPTION_KEY", self.encryption_key)]
            for env, value in required:
                if not _set(value):
                    raise SettingsError(f"{env} is not set, and installs through OAuth (SLACK_CLIENT_ID, "
                                        "SLACK_CLIENT_SECRET, SLACK_STATE_SECRET) need it. See the README, "
                                        "\"Distributing the app\".")
            from .installs import EncryptionKeyError, TokenCipher

            assert self.encryption_key is not None
            try:
                TokenCipher(self.encryption_key.get_secret_value())
            except EncryptionKeyError as exc:
                raise SettingsError(str(exc)) from None
            return
        required = [("SLACK_BOT_TOKEN", self.slack_bot_token)]
        if not self.socket_mode:
            required.append(("SLACK_SIGNING_SECRET", self.slack_signing_secret))
        for env, value in required:
            if value is None or not value.get_secret_value().strip():
                raise SettingsError(
                    f"{env} is not set. Set it in the environment or in .env "
                    "(see `threadflow manifest` and the README), or try `threadflow dev` for a local sandbox."
                )


def _set(value: SecretStr | None) -> bool:
    return value is not None and bool(value.get_secret_value().strip())


def export_env_file(path: str = ENV_FILE) -> None:
    """Copy the settings of the ``.env`` file into ``os.environ`` (see ``exported``), unless the environment already
    has them.

    Why: :class:`Settings` reads ``.env`` by itself, but agents' models (``THREADFLOW_MODEL``,
    ``OPENAI_API_KEY``, ``THREADFLOW_MODEL_TIMEOUT``, ...), deploy-app (``THREADFLOW_WORKSPACE``) and the
    SQLite tuning (``THREADFLOW_SQLITE_*``) read the environment; without this they would ignore ``.env``.
    The environment wins, as it does for :class:`Settings`. A missing file exports nothing.
    """
    for name, value in dotenv_values(path, encoding="utf8").items():
        if value is not None and exported(name):
            os.environ.setdefault(name, value)


#: Settings of ``.env`` that stay out of the environment: the Slack app's and the bot's own secrets, which only
#: :class:`Settings` reads. In the environment, step and tool code (and every process a step starts) could read them.
NOT_EXPORTED = frozenset({
    "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "SLACK_CLIENT_SECRET", "SLACK_STATE_SECRET",
    "THREADFLOW_UI_TOKEN", "THREADFLOW_UI_SECRET", "THREADFLOW_ENCRYPTION_KEY",
})


def exported(name: str) -> bool:
    """Whether ``export_env_file`` copies the ``.env`` line ``name``: threadflow's and the model's settings
    (``THREADFLOW_*``, ``OPENAI_*``: agents read the key from the environment), not the secrets of NOT_EXPORTED,
    and nothing else (a ``.env`` may hold other programs' variables)."""
    return name.startswith(("THREADFLOW_", "OPENAI_")) and name not in NOT_EXPORTED


def load_settings(**overrides: Any) -> Settings:
    """Read settings, turning validation errors into one line that names the setting.

    The ``.env`` file is exported to the environment first (see :func:`export_env_file`)."""
    export_env_file()
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else "a setting"
        raise SettingsError(f"Setting {name} is invalid: {first['msg']}.") from None
