"""The schema, as SQLAlchemy Core tables (the hot path uses Core, not the ORM).

Times are seconds since the epoch as floats: dialect-neutral, cheap to compare, exact enough for leases.
Migrations in ``storage/migrations`` create exactly these tables; a test checks they agree.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# -- runs ---------------------------------------------------------------------------------------------

runs = Table(
    "runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("workflow_id", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("input", JSON, nullable=True),
    Column("output", JSON, nullable=True),
    Column("error", JSON, nullable=True),
    Column("thread_id", String(300), nullable=True),
    Column("resource_id", String(300), nullable=True),
    Column("started_by", String(200), nullable=True),
    Column("rerun_of", String(40), nullable=True),
    Column("rerun_from", String(500), nullable=True),
    Column("owner", String(200), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("ready_at", Float, nullable=True),
    Column("waiting_for", String(200), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("workflow_version", String(100), nullable=True),
    Column("workflow_fingerprint", String(64), nullable=True),
    Column("stranded_at", Float, nullable=True),
    #: Times the run was taken over from a process that died holding it, since it last made progress.
    Column("recoveries", Integer, nullable=False, server_default="0"),
    Index("ix_runs_status_ready", "status", "ready_at"),
    Index("ix_runs_owner", "owner"),
    Index("ix_runs_workflow", "workflow_id", "created_at"),
    # The inspector lists runs newest first, with keyset pagination on (created_at, id).
    Index("ix_runs_created", "created_at", "id"),
    Index("ix_runs_status_created", "status", "created_at", "id"),
)

#: The workflow versions each live process executes, refreshed with its heartbeat until ``expires_at``.
#: A run whose version no live row has is stranded.
served_versions = Table(
    "served_versions",
    metadata,
    Column("owner", String(200), primary_key=True),
    Column("fingerprint", String(64), primary_key=True),
    Column("workflow_id", String(200), nullable=False),
    Column("version", String(100), nullable=True),
    Column("expires_at", Float, nullable=False),
    Index("ix_served_versions_fingerprint", "fingerprint", "expires_at"),
)

#: One row per finished step instance, keyed by its path; inserted once, never updated.
step_results = Table(
    "step_results",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("path", String(500), primary_key=True),
    Column("step_id", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("output", JSON, nullable=True),
    Column("attempts", Integer, nullable=False, default=1),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=False),
)

#: Open and resolved suspensions (human input and awaited events); resume is a compare-and-set here.
suspensions = Table(
    "suspensions",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("path", String(500), primary_key=True),
    Column("step_id", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("event_name", String(200), nullable=True),
    Column("payload", JSON, nullable=True),
    Column("status", String(20), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("resolved_by", String(200), nullable=True),
    Column("resolved_at", Float, nullable=True),
    Column("resume_data", JSON, nullable=True),
    Index("ix_suspensions_open", "status", "expires_at"),
)

#: Events sent to a run before it waited for them (like Temporal's buffered signals).
signals = Table(
    "signals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    Column("name", String(200), nullable=False),
    Column("data", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("consumed_path", String(500), nullable=True),
    Index("ix_signals_run", "run_id", "name"),
)

#: The outbox: every event commits with the state change it describes. ``id`` is the replay offset.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    Column("type", String(40), nullable=False),
    Column("path", String(500), nullable=True),
    Column("data", JSON, nullable=True),
    Column("at", Float, nullable=False),
    Index("ix_events_run", "run_id", "id"),
)

# -- memory -------------------------------------------------------------------------------------------

threads = Table(
    "threads",
    metadata,
    Column("id", String(300), primary_key=True),
    Column("resource_id", String(300), nullable=True),
    Column("title", String(500), nullable=True),
    Column("metadata", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_threads_resource", "resource_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("thread_id", String(300), nullable=False),
    Column("resource_id", String(300), nullable=True),
    Column("role", String(20), nullable=False),
    Column("kind", String(20), nullable=False, default="message"),
    Column("author", String(200), nullable=True),
    Column("content", Text, nullable=False, default=""),
    Column("tool_calls", JSON, nullable=True),
    Column("tool_call_id", String(200), nullable=True),
    Column("run_id", String(40), nullable=True),
    Column("path", String(500), nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ix_messages_thread", "thread_id", "id"),
    Index("ix_messages_resource", "resource_id", "id"),
)

message_vectors = Table(
    "message_vectors",
    metadata,
    Column("message_id", Integer, primary_key=True),
    Column("thread_id", String(300), nullable=False),
    Column("resource_id", String(300), nullable=True),
    Column("model", String(200), nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Index("ix_message_vectors_resource", "resource_id"),
)

working_memory = Table(
    "working_memory",
    metadata,
    Column("scope", String(20), primary_key=True),
    Column("key", String(300), primary_key=True),
    Column("content", Text, nullable=False, default=""),
    Column("updated_at", Float, nullable=False),
)

#: What each agent call was given and what it answered ("what did each agent know").
agent_contexts = Table(
    "agent_contexts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=True),
    Column("path", String(500), nullable=True),
    Column("agent", String(200), nullable=False),
    Column("thread_id", String(300), nullable=True),
    Column("context", JSON, nullable=False),
    Column("answer", JSON, nullable=True),
    Column("usage", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ix_agent_contexts_run", "run_id", "id"),
)

#: What an agent step is doing right now (its answer so far, its tool calls), written by the process that
#: executes it and read by the one that shows the run in Slack. Transient: deleted when the run's rendering
#: ends (retention takes what a crash left).
agent_progress = Table(
    "agent_progress",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    Column("path", String(500), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("data", JSON, nullable=True),
    Column("at", Float, nullable=False),
    Index("ix_agent_progress_run", "run_id", "id"),
)

# -- slack mapping ------------------------------------------------------------------------------------

slack_runs = Table(
    "slack_runs",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("team_id", String(40), nullable=False),
    Column("channel_id", String(40), nullable=False),
    Column("root_ts", String(40), nullable=True),
    Column("thread_id", String(300), nullable=False),
    Column("started_by", String(40), nullable=True),
    Column("last_event_id", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("renderer", String(200), nullable=True),
    Column("renderer_expires_at", Float, nullable=True),
    #: Where the run's replies go when that is not the root message's own thread (a run started in an
    #: assistant thread posts its root, progress and approval cards as replies in that thread).
    Column("thread_ts", String(40), nullable=True),
    #: The Enterprise Grid org the run's workspace belongs to (None outside Grid): with ``team_id``, the
    #: workspace a run belongs to; nobody outside it sees or acts on the run.
    Column("enterprise_id", String(40), nullable=True),
    Index("ix_slack_runs_thread", "thread_id"),
    Index("ix_slack_runs_channel", "channel_id", "run_id"),
    Index("ix_slack_runs_team", "team_id", "created_at"),
)

#: The Slack outbox: what each message the bot shows for a run should say, and what Slack has taken.
#: One row per message: the run's root, one approval card per suspension, and one per thread post. A row is
#: "delivered up to" ``sent_version``; ``version`` is the content wanted now (latest wins, so edits coalesce).
slack_messages = Table(
    "slack_messages",
    metadata,
    Column("key", String(600), primary_key=True),
    Column("run_id", String(40), nullable=True),
    Column("team_id", String(40), nullable=False),
    Column("channel_id", String(40), nullable=False),
    Column("thread_ts", String(40), nullable=True),
    Column("kind", String(20), nullable=False),
    Column("seq", Integer, nullable=False, default=0),
    Column("content", JSON, nullable=True),
    Column("version", Integer, nullable=False, default=1),
    Column("sent_version", Integer, nullable=False, default=0),
    Column("ts", String(40), nullable=True),
    Column("state", String(20), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("attempt_started_at", Float, nullable=True),
    Column("last_sent_at", Float, nullable=True),
    Column("last_error", String(500), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_slack_messages_run", "run_id", "seq"),
    Index("ix_slack_messages_state", "state", "next_attempt_at"),
    Index("ix_slack_messages_ts", "channel_id", "ts"),
)

#: Slack's rate limits as reservations shared by every replica: the earliest time the next call in a scope
#: (a channel's posts, a workspace's method tier) may go out (GCRA's "theoretical arrival time").
slack_pacing = Table(
    "slack_pacing",
    metadata,
    Column("scope", String(300), primary_key=True),
    Column("tat", Float, nullable=False),
)

slack_seen_events = Table(
    "slack_seen_events",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("seen_at", Float, nullable=False),
)

#: What the bot learnt about a workspace's Slack features: streaming refused (answers are posted whole),
#: the assistant view in use. Shared by every replica; ``threadflow doctor`` reports it.
slack_features = Table(
    "slack_features",
    metadata,
    Column("team_id", String(40), primary_key=True),
    Column("feature", String(40), primary_key=True),
    Column("state", String(20), nullable=False),
    Column("detail", String(500), nullable=True),
    Column("updated_at", Float, nullable=False),
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("workflow_id", String(200), nullable=False),
    Column("cron", String(200), nullable=False),
    Column("timezone", String(100), nullable=False, default="UTC"),
    Column("input", JSON, nullable=True),
    Column("team_id", String(40), nullable=True),
    Column("channel_id", String(40), nullable=True),
    Column("created_by", String(200), nullable=True),
    Column("enterprise_id", String(40), nullable=True),
    Column("next_at", Float, nullable=False),
    Column("last_fired_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
)


# -- installs through OAuth (many workspaces) ----------------------------------------------------------
#
# The shape of slack_sdk's SQLAlchemy installation store (``slack_installations``, ``slack_bots``), so its
# entities map one to one; the token columns are wider because they hold ciphertext: the bot layer encrypts
# every token before it reaches these tables (``bot.installs``), storage never sees a token in the clear.

slack_installations = Table(
    "slack_installations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", String(32), nullable=False),
    Column("app_id", String(32), nullable=False),
    Column("enterprise_id", String(32)),
    Column("enterprise_name", String(200)),
    Column("enterprise_url", String(200)),
    Column("team_id", String(32)),
    Column("team_name", String(200)),
    Column("bot_token", String(1000)),
    Column("bot_id", String(32)),
    Column("bot_user_id", String(32)),
    Column("bot_scopes", String(1000)),
    Column("bot_refresh_token", String(1000)),
    Column("bot_token_expires_at", Float),
    Column("user_id", String(32), nullable=False),
    Column("user_token", String(1000)),
    Column("user_scopes", String(1000)),
    Column("user_refresh_token", String(1000)),
    Column("user_token_expires_at", Float),
    Column("incoming_webhook_url", String(1000)),
    Column("incoming_webhook_channel", String(200)),
    Column("incoming_webhook_channel_id", String(200)),
    Column("incoming_webhook_configuration_url", String(200)),
    Column("is_enterprise_install", Boolean, nullable=False, default=False),
    Column("token_type", String(32)),
    Column("installed_at", Float, nullable=False),
    Index("slack_installations_idx", "client_id", "enterprise_id", "team_id", "user_id", "installed_at"),
)

slack_bots = Table(
    "slack_bots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", String(32), nullable=False),
    Column("app_id", String(32), nullable=False),
    Column("enterprise_id", String(32)),
    Column("enterprise_name", String(200)),
    Column("team_id", String(32)),
    Column("team_name", String(200)),
    Column("bot_token", String(1000)),
    Column("bot_id", String(32)),
    Column("bot_user_id", String(32)),
    Column("bot_scopes", String(1000)),
    Column("bot_refresh_token", String(1000)),
    Column("bot_token_expires_at", Float),
    Column("is_enterprise_install", Boolean, nullable=False, default=False),
    Column("installed_at", Float, nullable=False),
    Index("slack_bots_idx", "client_id", "enterprise_id", "team_id", "installed_at"),
)

#: OAuth ``state`` values issued by ``/slack/install`` and not used yet (each is accepted once, before it expires).
slack_oauth_states = Table(
    "slack_oauth_states",
    metadata,
    Column("state", String(200), primary_key=True),
    Column("expire_at", Float, nullable=False),
)
