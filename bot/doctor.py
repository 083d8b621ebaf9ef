"""``threadflow doctor``: check the configuration and say, in plain words, what is wrong and what to do.

Checks, in order: the settings (present and well-formed), the database (reachable, migrated to this
version's head), the Slack token (``auth.test``) and its scopes against what ``threadflow manifest`` asks
for, what the bot learnt of the Slack features its agents use (a workspace refusing streamed answers,
assistant threads seen), and, when an OpenAI key is set, the model server: one probe per capability the registered agents use
(plain chat, structured output, tools, streaming), saying what works and what will fall back. Secrets are never printed: a token shows as
``xoxb-…abcd``. The exit status is 1 when anything failed, 0 otherwise ("could not check" is not a failure).

Doctor only looks: it does not create or migrate the database (that is ``threadflow migrate``).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from .settings import Settings

Status = Literal["ok", "fail", "warn"]
_LABELS = {"ok": "[ ok ]", "fail": "[FAIL]", "warn": "[warn]"}
TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def line(self) -> str:
        return f"{_LABELS[self.status]} {self.name}: {self.detail}"


def mask(secret: str | None) -> str:
    """``xoxb-…abcd``: the kind of token and its last four characters, never more."""
    if not secret:
        return "(empty)"
    prefix = secret.split("-", 1)[0] + "-" if "-" in secret[:6] else ""
    return f"{prefix}…{secret[-4:]}" if len(secret) >= 12 else f"{prefix}…"


def _secret(value: Any) -> str | None:
    text = value.get_secret_value().strip() if value is not None else ""
    return text or None


# -- settings -----------------------------------------------------------------------------------------


def check_settings(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    token = _secret(settings.slack_bot_token)
    if settings.oauth_enabled:
        checks.extend(_check_oauth(settings))
    elif token is None:
        checks.append(Check("SLACK_BOT_TOKEN", "fail", "not set. Copy the Bot User OAuth Token (xoxb-…) from your "
                            "Slack app's OAuth & Permissions page into the environment or .env."))
    elif not token.startswith("xoxb-"):
        checks.append(Check("SLACK_BOT_TOKEN", "fail", f"{mask(token)} is not a bot token; it should start with "
                            "xoxb- (the Bot User OAuth Token, not a user or app-level token)."))
    else:
        checks.append(Check("SLACK_BOT_TOKEN", "ok", f"set ({mask(token)})."))
    if _secret(settings.slack_signing_secret) is None and settings.socket_mode:
        checks.append(Check("SLACK_SIGNING_SECRET", "ok", "not needed: Socket Mode (SLACK_APP_TOKEN) receives "
                            "Slack's requests over its own connection."))
    elif _secret(settings.slack_signing_secret) is None:
        checks.append(Check("SLACK_SIGNING_SECRET", "fail", "not set. Copy the Signing Secret from your Slack "
                            "app's Basic Information page."))
    else:
        checks.append(Check("SLACK_SIGNING_SECRET", "ok", "set."))
    app_token = _secret(settings.slack_app_token)
    if app_token is not None and not app_token.startswith("xapp-"):
        checks.append(Check("SLACK_APP_TOKEN", "fail", f"{mask(app_token)} is not an app-level token; Socket Mode "
                            "needs one starting with xapp- (Basic Information > App-Level Tokens, scope "
                            "connections:write). Unset it to receive Slack requests over HTTP instead."))
    if not settings.slack_api_url.startswith(("http://", "https://")):
        checks.append(Check("SLACK_API_URL", "fail", f"{settings.slack_api_url!r} is not an http(s) URL; leave it "
                            "unset for Slack itself (https://slack.com/api/)."))
    if settings.public_url and not settings.public_url.startswith(("http://", "https://")):
        checks.append(Check("THREADFLOW_PUBLIC_URL", "fail", f"{settings.public_url!r} is not an http(s) URL, "
                            "e.g. https://bot.example.com."))
    elif not settings.public_url and app_token is None:
        checks.append(Check("THREADFLOW_PUBLIC_URL", "warn", "not set: Slack must reach this bot at "
                            "https://YOUR-HOST/slack/events; set it so `threadflow manifest` fills in the URLs."))
    for env, problem in settings.logging_problems():  # (serve, worker, dev and ui refuse to start over these)
        checks.append(Check(env, "fail", f"{problem}."))
    checks.append(_check_workflows(settings))
    checks.extend(_check_models(settings))
    checks.extend(_check_tuning())
    checks.append(Check("THREADFLOW_TIMEZONE", "ok", f"schedules default to {settings.timezone}."))
    return checks


def _check_oauth(settings: Settings) -> list[Check]:
    """Installs through OAuth: no single bot token; the key that encrypts the stored tokens must be valid."""
    from .installs import EncryptionKeyError, TokenCipher

    checks = [Check("SLACK_BOT_TOKEN", "ok", "not needed: workspaces install the app through OAuth "
                    "(SLACK_CLIENT_ID, SLACK_CLIENT_SECRET, SLACK_STATE_SECRET) at /slack/install.")]
    key = _secret(settings.encryption_key)
    try:
        TokenCipher(key or "")
    except EncryptionKeyError as exc:
        checks.append(Check("THREADFLOW_ENCRYPTION_KEY", "fail", str(exc).removeprefix("THREADFLOW_ENCRYPTION_KEY ")))
    else:
        count = len([k for k in (key or "").split(",") if k.strip()])
        checks.append(Check("THREADFLOW_ENCRYPTION_KEY", "ok", f"set ({count} key{'s' if count > 1 else ''}); "
                            "stored Slack tokens are encrypted with the first."))
    return checks


async def check_installs(settings: Settings, database: Check) -> list[Check]:
    """Installs through OAuth: how many workspaces, and whether every stored token can be decrypted."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from storage.tables import slack_bots, slack_installations
    from storage.urls import normalize_url

    from .installs import SECRET_COLUMNS, EncryptionKeyError, TokenCipher, UndecryptableToken

    if not settings.oauth_enabled or database.status != "ok":
        return []
    try:
        cipher = TokenCipher(_secret(settings.encryption_key) or "")
    except EncryptionKeyError:
        return []  # the settings check said so
    engine = create_async_engine(normalize_url(settings.database_url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            bots = (await asyncio.wait_for(conn.execute(select(slack_bots)), TIMEOUT)).mappings().all()
            installs = (await asyncio.wait_for(conn.execute(select(slack_installations)), TIMEOUT)).mappings().all()
    except Exception as exc:
        return [Check("Installs", "warn", f"could not be read: {type(exc).__name__}: {_first_line(exc)}")]
    finally:
        await engine.dispose()
    bad: list[str] = []
    for table, rows in (("slack_bots", bots), ("slack_installations", installs)):
        for row in rows:
            try:
                for column in SECRET_COLUMNS:
                    if column in row:
                        cipher.decrypt(row[column])
            except UndecryptableToken:
                bad.append(f"{table} row {row['id']} (workspace {row['team_id'] or row['enterprise_id']})")
    workspaces = {(r["enterprise_id"], r["team_id"]) for r in bots}
    if bad:
        return [Check("Installs", "fail", f"{len(bad)} stored token(s) cannot be decrypted with "
                      f"THREADFLOW_ENCRYPTION_KEY: {', '.join(bad[:5])}. Put the old key after the new one "
                      "(comma-separated), or have those workspaces install the app again.")]
    return [Check("Installs", "ok", f"{len(workspaces)} workspace(s) installed; every stored token decrypts.")]


def _check_workflows(settings: Settings) -> Check:
    from workflows.errors import ThreadflowError
    from workflows.loading import load_workflows

    try:
        found = load_workflows(settings.workflows)
    except ThreadflowError as exc:
        return Check("THREADFLOW_WORKFLOWS", "fail", str(exc))
    return Check("THREADFLOW_WORKFLOWS", "ok", f"{len(found)} workflows: {', '.join(sorted(w.id for w in found))}.")


def _check_models(settings: Settings) -> list[Check]:
    from workflows.errors import ThreadflowError
    from workflows.models import resolve_embedder, resolve_model

    checks: list[Check] = []
    try:
        resolve_model(settings.model_name, _model_settings(settings))
        profile = f" (THREADFLOW_MODEL_PROFILE={settings.model_profile})" if settings.model_profile else ""
        checks.append(Check("THREADFLOW_MODEL", "ok", f"agents use {settings.model_name}{profile}."))
    except ThreadflowError as exc:
        checks.append(Check("THREADFLOW_MODEL", "fail", str(exc)))
    if settings.embedder:
        try:
            resolve_embedder(settings.embedder, _model_settings(settings))
            checks.append(Check("THREADFLOW_EMBEDDER", "ok", f"memory recall uses {settings.embedder}."))
        except ThreadflowError as exc:
            checks.append(Check("THREADFLOW_EMBEDDER", "fail", str(exc)))
    return checks


def _check_tuning() -> list[Check]:
    """The numeric settings read from the environment where they are used (not by :class:`Settings`): one
    failed line for each malformed one, nothing when they are fine or unset."""
    from storage.backends import busy_timeout_ms, sqlite_synchronous
    from storage.errors import DatabaseSettingError
    from workflows.errors import UsageError
    from workflows.models import model_max_attempts, model_timeout

    checks: list[Check] = []
    readers: list[tuple[str, Callable[[], object]]] = [
        ("THREADFLOW_MODEL_TIMEOUT", model_timeout), ("THREADFLOW_MODEL_MAX_ATTEMPTS", model_max_attempts),
        ("THREADFLOW_SQLITE_BUSY_TIMEOUT_MS", busy_timeout_ms), ("THREADFLOW_SQLITE_SYNCHRONOUS", sqlite_synchronous)]
    for name, read in readers:
        try:
            read()
        except (UsageError, DatabaseSettingError) as exc:
            checks.append(Check(name, "fail", str(exc).removeprefix(f"{name} ")))
    return checks


def _model_settings(settings: Settings) -> Any:
    """The model settings with one attempt and a short timeout: doctor should answer in seconds."""
    return SimpleNamespace(model=settings.model, embedder=settings.embedder, openai_api_key=settings.openai_api_key,
                           openai_base_url=settings.openai_base_url, model_timeout=TIMEOUT, model_max_attempts=1,
                           model_profile=settings.model_profile)


# -- database -----------------------------------------------------------------------------------------


async def check_database(settings: Settings) -> Check:
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from storage.errors import StorageError
    from storage.migrations import current_revision_sync, head_revision
    from storage.urls import normalize_url

    try:
        url = normalize_url(settings.database_url)
    except StorageError as exc:
        return Check("Database", "fail", f"THREADFLOW_DATABASE_URL: {exc}")
    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            return Check("Database", "warn", "in memory: every process gets its own empty database; use a file.")
        if not _file_exists(path):
            return Check("Database", "fail", f"{shown}: the file {path} does not exist yet. Run `threadflow migrate` "
                         "(or start the bot) to create it, or fix THREADFLOW_DATABASE_URL.")
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async def revision() -> str | None:
            async with engine.connect() as conn:
                return await conn.run_sync(current_revision_sync)

        current = await asyncio.wait_for(revision(), TIMEOUT)
    except Exception as exc:  # any driver error: say what it was, never the URL's password
        return Check("Database", "fail", f"cannot connect to {shown}: {type(exc).__name__}: "
                     f"{_first_line(exc)}. Check THREADFLOW_DATABASE_URL and that the server is running.")
    finally:
        await engine.dispose()
    head = head_revision()
    if current == head:
        return Check("Database", "ok", f"{shown} is reachable and migrated (revision {head}).")
    if current is None:
        return Check("Database", "fail", f"{shown} has no threadflow schema yet. Run `threadflow migrate`.")
    return Check("Database", "fail", f"{shown} is at schema revision {current}, this version needs {head}. "
                 "Run `threadflow migrate` (if the database is newer, upgrade threadflow instead).")


def _file_exists(path: str) -> bool:
    return Path(path).expanduser().exists()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "no details"


async def check_stranded_runs(settings: Settings, database: Check) -> Check | None:
    """Unfinished runs whose workflow version neither a live process nor these settings' modules have."""
    import time

    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from storage.urls import normalize_url
    from storage.versions import Serving, find_stranded
    from workflows import describe_version
    from workflows.errors import ThreadflowError
    from workflows.loading import load_workflows
    from workflows.versions import legacy_fingerprint

    if database.status != "ok":
        return None  # nothing to read (the database check said why)
    try:
        found = load_workflows(settings.workflows)
    except ThreadflowError:
        return None  # THREADFLOW_WORKFLOWS failed above
    # Every fingerprint the engine's registry runs these definitions for: a run recorded before nested models were named
    # by place carries the one its definition had then (``legacy_fingerprint``), and this process runs it too.
    fingerprints = {fp for wf in found for fp in (wf.fingerprint, legacy_fingerprint(wf))}
    mine = Serving(tuple(fingerprints), tuple({wf.id for wf in found}))
    engine = create_async_engine(normalize_url(settings.database_url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            stranded = await asyncio.wait_for(find_stranded(conn, mine, time.time(), limit=21), TIMEOUT)
    except Exception as exc:  # any driver error: said, not raised
        return Check("Stranded runs", "warn", f"could not be checked: {type(exc).__name__}: {_first_line(exc)}")
    finally:
        await engine.dispose()
    if not stranded:
        return Check("Stranded runs", "ok", "every unfinished run's workflow version is registered.")
    listed = "; ".join(
        f"{r.id} ({r.workflow_id} version {describe_version(r.workflow_version, r.workflow_fingerprint)}, {r.status})"
        for r in stranded[:20]
    ) + ("; and more (threadflow runs --status stranded)" if len(stranded) > 20 else "")
    return Check("Stranded runs", "fail", f"{len(stranded) if len(stranded) <= 20 else 'over 20'} unfinished run(s) are "
                 f"on workflow versions no running process nor THREADFLOW_WORKFLOWS has: {listed}. Register the old "
                 "version again, move a run with `threadflow rerun RUN --from STEP`, or `threadflow cancel RUN`.")


# -- Slack --------------------------------------------------------------------------------------------


async def check_slack(settings: Settings) -> list[Check]:
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.async_client import AsyncWebClient

    from .commands_server import manifest

    token = _secret(settings.slack_bot_token)
    if token is None and settings.oauth_enabled:
        return []  # each workspace's token is checked by "Installs"
    if token is None:
        return [Check("Slack", "warn", "not checked: SLACK_BOT_TOKEN is not set.")]
    client = AsyncWebClient(token=token, base_url=settings.slack_api_url, timeout=int(TIMEOUT))
    try:
        response = await client.auth_test()
    except SlackApiError as exc:
        error = exc.response.get("error") if exc.response is not None else "unknown_error"
        hint = ("Copy the Bot User OAuth Token again from OAuth & Permissions; reinstall the app if it was revoked."
                if error in ("invalid_auth", "not_authed", "token_revoked", "account_inactive", "token_expired")
                else "See https://api.slack.com/methods/auth.test for what it means.")
        return [Check("Slack token", "fail", f"Slack rejected SLACK_BOT_TOKEN ({mask(token)}): {error}. {hint}")]
    except Exception as exc:
        return [Check("Slack token", "fail", f"could not reach Slack at {settings.slack_api_url}: "
                      f"{type(exc).__name__}. Check SLACK_API_URL and the network.")]
    who = f"bot @{response.get('user')} in {response.get('team')} ({response.get('team_id')})"
    checks = [Check("Slack token", "ok", f"{mask(token)} works: {who}.")]
    wanted = manifest(settings, None)["oauth_config"]["scopes"]["bot"]
    granted_header = next((v for k, v in (response.headers or {}).items() if k.lower() == "x-oauth-scopes"), None)
    if isinstance(granted_header, list):
        granted_header = ",".join(granted_header)
    if granted_header is None:
        checks.append(Check("Slack scopes", "warn", "could not be checked: Slack sent no x-oauth-scopes header. "
                            f"The app needs: {', '.join(wanted)}."))
        return checks
    granted = {s.strip() for s in str(granted_header).split(",") if s.strip()}
    missing = [s for s in wanted if s not in granted]
    if missing:
        checks.append(Check("Slack scopes", "fail", f"the token lacks {', '.join(missing)}. Add them under OAuth & "
                            "Permissions > Bot Token Scopes (or paste `threadflow manifest`), then reinstall the app."))
    else:
        checks.append(Check("Slack scopes", "ok", f"all {len(wanted)} scopes the manifest asks for are granted."))
    return checks


async def check_slack_features(settings: Settings, database: Check) -> list[Check]:
    """What the bot saw of the Slack features its agents use: Slack's API has no way to ask whether an app's
    Agents & AI Apps feature is on, so doctor reports what the running bot learnt (``slack_features``):
    a workspace that refused streaming (answers are posted whole there), assistant threads seen."""
    import time

    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from storage.slack_store import SlackFeature
    from storage.tables import slack_features
    from storage.urls import normalize_url

    if database.status != "ok":
        return []  # nothing to read (the database check said why); doctor never migrates
    engine = create_async_engine(normalize_url(settings.database_url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            rows = (await asyncio.wait_for(conn.execute(select(slack_features)), TIMEOUT)).mappings().all()
        features = [SlackFeature.model_validate(dict(r)) for r in rows]
    except Exception as exc:  # any driver error: said, not raised
        return [Check("Slack features", "warn", f"could not be read: {type(exc).__name__}: {_first_line(exc)}")]
    finally:
        await engine.dispose()
    checks: list[Check] = []
    refused = [f for f in features if f.feature == "streaming" and f.state == "refused"]
    for f in refused:
        ago = _ago(time.time() - f.updated_at)
        checks.append(Check("Streamed answers", "warn", f"Slack refused to stream in workspace {f.team_id or '(default)'} "
                            f"{ago} ({f.detail}): agents' answers are posted whole there. Enable Agents & AI Apps in "
                            "the app's settings (see the README); the bot tries streaming again every hour."))
    if not refused:
        checks.append(Check("Streamed answers", "ok", "no workspace refused streaming (chat:write is all it needs)."))
    seen = [f for f in features if f.feature == "assistant" and f.state == "seen"]
    if seen:
        last = max(f.updated_at for f in seen)
        checks.append(Check("Assistant view", "ok", f"assistant threads seen in {len(seen)} workspace(s), the last "
                            f"started {_ago(time.time() - last)}."))
    else:
        checks.append(Check("Assistant view", "ok", "no assistant thread seen yet. For Slack's assistant container, "
                            "turn on Agents & AI Apps in the app's settings (the manifest's assistant_view, "
                            "assistant:write and the assistant_thread_* events); threads, mentions and DMs work "
                            "without it."))
    return checks


def _ago(seconds: float) -> str:
    if seconds < 120:
        return "just now"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} hours ago"
    return f"{seconds / 86400:.0f} days ago"


# -- model --------------------------------------------------------------------------------------------


async def check_model(settings: Settings) -> list[Check]:
    """With a key: one probe per capability the registered agents use (see :mod:`bot.model_probes`)."""
    from workflows.errors import ThreadflowError
    from workflows.loading import load_workflows
    from workflows.models import OpenAIChatModel, resolve_model

    from .model_probes import capabilities_used, probe

    if _secret(settings.openai_api_key) is None:
        return [Check("Model", "ok", "no OPENAI_API_KEY: agents use the offline model (nothing to reach).")]
    if settings.model_name == "offline":
        return [Check("Model", "ok", "THREADFLOW_MODEL=offline: agents use the offline model (nothing to reach).")]
    try:
        model = resolve_model(settings.model_name, _model_settings(settings))
    except ThreadflowError:
        return [Check("Model", "warn", "not checked: the model setting is invalid (see above).")]
    if not isinstance(model, OpenAIChatModel):
        return [Check("Model", "ok", f"{settings.model_name} needs no server.")]
    try:
        used = capabilities_used(load_workflows(settings.workflows))
    except ThreadflowError:  # reported by the THREADFLOW_WORKFLOWS check; probe what the bot itself uses
        used = capabilities_used([])
    checks: list[Check] = []
    try:
        for capability in used:
            result = await probe(model, capability)
            if capability == "chat":
                if result.status == "fail":
                    return [Check("Model", "fail", f"{settings.model_name} is not reachable: {result.detail}")]
                where = f" at {settings.openai_base_url}" if settings.openai_base_url else ""
                result_detail = f"{settings.model_name}{where} answered (profile {model.profile.name}): {result.detail}"
                checks.append(Check(result.name, result.status, result_detail))
            else:
                checks.append(Check(result.name, result.status, result.detail))
    finally:
        await model.aclose()
    return checks


# -- all of it ----------------------------------------------------------------------------------------


async def diagnose(settings: Settings) -> list[Check]:
    checks = check_settings(settings)
    database = await check_database(settings)
    checks.append(database)
    stranded = await check_stranded_runs(settings, database)
    if stranded is not None:
        checks.append(stranded)
    checks.extend(await check_slack(settings))
    checks.extend(await check_installs(settings, database))
    checks.extend(await check_slack_features(settings, database))
    checks.extend(await check_model(settings))
    return checks


def report(checks: list[Check]) -> tuple[str, int]:
    """The printed report and the exit status."""
    failed = [c for c in checks if c.failed]
    lines = ["threadflow doctor", *(c.line() for c in checks), ""]
    if failed:
        lines.append(f"{len(failed)} problem{'s' if len(failed) > 1 else ''} found.")
    else:
        lines.append("No problems found.")
    return "\n".join(lines), 1 if failed else 0


def run_doctor(settings: Settings, args: argparse.Namespace) -> int:
    text, code = report(asyncio.run(diagnose(settings)))
    print(text, flush=True)
    return code


__all__ = ["Check", "diagnose", "mask", "report", "run_doctor"]
